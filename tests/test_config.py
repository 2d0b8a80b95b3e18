"""Config files (`--config FILE.yaml`): values are read as their option's type, and a value
that is not of it is refused naming the option (YAML reads `1e-3` as a string and
`"false"` stays a string; both used to reach the stages as strings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from test_train_stage import make_store

from saescope.config import build_config, load_config_file
from saescope.errors import SaescopeError
from saescope.options.corpus import CorpusConfig
from saescope.options.evaluate import EvalConfig
from saescope.options.keywords import KeywordsConfig
from saescope.paths import RunPaths
from saescope.train import TrainConfig


def _load(tmp_path: Path, cls: type, text: str):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return build_config(cls, load_config_file(f))


def test_values_take_their_option_types(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        TrainConfig,
        'lr: 1e-3\nd_sae: 256\nk: "16"\nunit_norm_decoder: "false"\nmax_steps: 3.0\n'
        "adam_betas: [0.9, 0.99]\n",
    )
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.d_sae == [256] and cfg.k == [16]  # one value where the flag takes several
    assert cfg.unit_norm_decoder is False
    assert cfg.max_steps == 3 and isinstance(cfg.max_steps, int)
    assert cfg.adam_betas == [0.9, 0.99]
    corpus = _load(tmp_path, CorpusConfig, 'limit: "100"\nshuffle: "no"\nmin_chars: 1e1\n')
    assert corpus.limit == 100 and corpus.shuffle is False and corpus.min_chars == 10
    # YAML reads off / on as booleans: a choice that has them takes them back; 0 / 1 are bools
    from saescope.options.evaluate import EvalConfig

    assert _load(tmp_path, EvalConfig, "retrieval: off\n").retrieval == "off"
    assert _load(tmp_path, EvalConfig, "retrieval: on\n").retrieval == "on"
    assert _load(tmp_path, TrainConfig, "progress: 0\n").progress is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_steps: 3.7", "option max_steps: expected a whole number, got 3.7"),
        ("max_steps: three", "option max_steps: expected a whole number, got 'three'"),
        ("lr: fast", "option lr: expected a number, got 'fast'"),
        ("lr: true", "option lr: expected a number, got True"),
        ("unit_norm_decoder: maybe", "option unit_norm_decoder: expected true or false"),
        ("d_sae: [256, big]", "option d_sae: expected a whole number, got 'big'"),
        ("lr: null", "option lr: a value is needed"),
        ("architecture: [topk]", "option architecture: expected a string"),
        ("architecture: yes", "option architecture: expected a string, got True"),
        ("progress: 2", "option progress: expected true or false, got 2"),
    ],
)
def test_values_of_the_wrong_type_are_refused_by_name(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(SaescopeError, match=message.replace("[", r"\[")):
        _load(tmp_path, TrainConfig, text + "\n")


def test_train_reads_a_yaml_learning_rate_as_a_number(tmp_path: Path) -> None:
    """Through the command line: `lr: 1e-3` trains at 0.001 (it used to end in a
    TypeError traceback), and a bad value exits 2 with one line naming the option."""
    run = make_store(tmp_path / "run", n_rows=600)
    good = tmp_path / "good.yaml"
    good.write_text("lr: 1e-3\nd_sae: 64\nk: 4\nbatch_size: 200\nmax_steps: 2\n")
    run_cli(
        "train", "--run", str(run), "--config", str(good), "--progress", "false",
        "--eval-at-end", "false", "--checkpoint-every", "0",
    )  # fmt: skip
    saved = json.loads(RunPaths(run).sae_config.read_text())["training"]
    assert saved["lr"] == 0.001 and saved["d_sae"] == [64] and saved["max_steps"] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: three\n")
    proc = run_cli("train", "--run", str(run), "--config", str(bad), check=False)
    assert proc.returncode == 2
    assert "option max_steps: expected a whole number, got 'three'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": -0.1}, "lr must be a finite number >= 0"),
        ({"lr": float("nan")}, "lr must be a finite number >= 0"),
        ({"max_steps": -3}, "max_steps must be >= 0"),
        ({"warmup_steps": -5}, "warmup_steps must be >= 0, or -1"),
        ({"grad_clip": -1.0}, "grad_clip must be a finite number >= 0"),
        ({"threads": -4}, "threads must be >= 0"),
        ({"epochs": -1.0, "max_steps": 5}, "epochs must be a finite number >= 0"),
        ({"adam_betas": [1.5, 2.0]}, r"adam_betas must lie in \[0, 1\)"),
        ({"lr_end_fraction": 2.0}, "lr_end_fraction must be between 0 and 1"),
        ({"dead_after_samples": 0}, "dead_after_samples must be >= 1, or -1"),
        ({"architecture": "relu", "l1_coefficient": -1.0}, "l1_coefficient must be >= 0"),
    ],
)
def test_train_options_out_of_range_are_refused(options: dict, message: str) -> None:
    """They used to train on a fallback (a negative or NaN lr took the automatic rate) or
    fail later blaming the data (betas above 1 gave a non-finite loss)."""
    with pytest.raises(SaescopeError, match=message):
        TrainConfig(**options)


def test_embed_batch_size_and_shards_must_be_positive() -> None:
    from saescope.options.embed import EmbedConfig

    for bad in ({"batch_size": 0}, {"batch_size": -4}, {"shard_rows": 0}, {"max_seq_length": 0}):
        with pytest.raises(SaescopeError, match="must be >= 1"):
            EmbedConfig(**bad)


def test_score_counts_a_scorer_needs_are_checked() -> None:
    """--max-pos 0 or --n-neg -5 scored no feature and replaced the scores there were."""
    from saescope.options.score import ScoreConfig

    for bad, message in (
        ({"max_pos": 0}, "max_pos must be >= 1"),
        ({"n_neg": -5}, "n_neg must be >= 1"),
        ({"group_size": 1}, "group_size must be >= 2"),
    ):
        with pytest.raises(SaescopeError, match=message):
            ScoreConfig(**bad)


def test_latents_counts_are_checked_when_the_config_is_made() -> None:
    """Its ranges were checked inside run(), so a config made in Python was taken and
    only the stage refused it; now they are refused where every other stage's are."""
    from saescope.options.latents import LatentsConfig

    for bad, message in (
        ({"top_n": 0}, "top_n must be >= 1, got 0"),
        ({"max_chunk_nnz": 0}, "max_chunk_nnz must be >= 1"),
        ({"n_random": -2}, "n_random must be >= 0, got -2"),
    ):
        with pytest.raises(SaescopeError, match=message):
            LatentsConfig(**bad)
    assert LatentsConfig(n_random=0, examples_per_quantile=0).n_random == 0


def test_corpus_limit_and_a_mistyped_source_are_refused(tmp_path: Path) -> None:
    """--limit -1 dropped the last text and --limit 0 blamed the filters; a typo of a
    built-in source went to the hub (about 20 s of retries offline) before failing."""
    from saescope.corpus import load_texts

    for bad in (0, -1):
        with pytest.raises(SaescopeError, match="limit must be >= 1"):
            CorpusConfig(limit=bad)
    with pytest.raises(SaescopeError, match="did you mean 'news'"):
        load_texts(CorpusConfig(run=str(tmp_path), source="newz"))
    with pytest.raises(SaescopeError, match="did you mean 'tweets'"):
        load_texts(CorpusConfig(run=str(tmp_path), source="tweet"))


def test_hub_datasets_whose_names_hold_a_built_in_one_go_to_the_hub(monkeypatch) -> None:
    import saescope.corpus as corpus

    asked: list[str] = []

    def hub(name: str, cfg: CorpusConfig) -> None:
        asked.append(name)
        raise SaescopeError("offline")

    monkeypatch.setattr(corpus, "_load_hf", hub)
    for name in ("ag_news", "tweets_hate"):
        with pytest.raises(SaescopeError, match="offline"):
            corpus.load_texts(CorpusConfig(source=name))
    assert asked == ["ag_news", "tweets_hate"]


def test_configs_made_in_python_are_held_to_what_the_cli_is() -> None:
    """A config built in Python used to skip the CLI's types and choices: one size failed
    with a TypeError, a seed 'abc' was written to the run, an unknown method was first
    blamed on the provenance record."""
    assert TrainConfig(d_sae=64, k=8, batch_size="1024", lr="1e-3").d_sae == [64]  # type: ignore[arg-type]
    assert TrainConfig(batch_size="1024").batch_size == 1024  # type: ignore[arg-type]
    assert CorpusConfig(limit="100").limit == 100  # type: ignore[arg-type]
    with pytest.raises(SaescopeError, match="option seed: expected a whole number, got 'abc'"):
        CorpusConfig(seed="abc")  # type: ignore[arg-type]
    with pytest.raises(SaescopeError, match="unknown method 'bogus'; choose one of contrastive"):
        KeywordsConfig(method="bogus")
    with pytest.raises(SaescopeError, match="retrieval_k must be >= 1"):
        EvalConfig(retrieval_k=-3)
    # what a researcher has at hand in Python: Paths, numpy numbers and arrays, ranges
    import numpy as np

    cfg = TrainConfig(
        run=Path("runs/x"),  # type: ignore[arg-type]
        d_sae=[np.int64(64)],
        k=np.array([4, 8]),  # type: ignore[arg-type]
        lr=np.float32(1e-3),  # type: ignore[arg-type]
        scale_inputs=np.bool_(False),  # type: ignore[arg-type]
    )
    assert (cfg.run, cfg.d_sae, cfg.k, cfg.scale_inputs) == ("runs/x", [64], [4, 8], False)
    assert type(cfg.d_sae[0]) is int and type(cfg.lr) is float
    assert KeywordsConfig(features=range(3)).features == [0, 1, 2]  # type: ignore[arg-type]
    for bad in (True, 64.5, np.bool_(True)):
        with pytest.raises(SaescopeError, match="option batch_size: expected a whole number"):
            TrainConfig(batch_size=bad)  # type: ignore[arg-type]
    for make in (lambda: CorpusConfig(seed=-1), lambda: KeywordsConfig(split_seed=2**32)):
        with pytest.raises(SaescopeError, match=r"seed must lie in \[0, 2\*\*32\)"):
            make()


def test_options_another_scorer_reads_are_refused() -> None:
    from saescope.options.score import ScoreConfig

    for kw, message in (
        ({"llm_pos": 3}, "--llm-pos is not read by --scorer embedding"),
        ({"scorer": "keyword-relevance", "max_pos": 3}, "--max-pos is not read by"),
        ({"scorer": "detection", "n_groups": 3}, "--n-groups is not read by --scorer detection"),
        ({"n_texts": 3}, "--n-texts is not read by --scorer embedding; leave it at its default 10"),
    ):
        with pytest.raises(SaescopeError, match=message):
            ScoreConfig(**kw)
    # the LLM client's options may be shared between scorers (one config file)
    assert ScoreConfig(llm="http://127.0.0.1:1/v1", concurrency=2).scorer == "embedding"


@pytest.mark.parametrize(
    ("arch", "option", "value"),
    [
        ("relu", "aux_coefficient", 0.1),
        ("jumprelu", "k_aux", 5),
        ("relu", "select_precision", "int8"),
        ("topk", "sparsity_warmup_steps", 10),
        ("topk", "sparse_backward", "always"),
        ("batchtopk", "select_precision", "float32"),
    ],
)
def test_a_training_option_the_architecture_does_not_read_is_refused(arch, option, value) -> None:
    flag = "--" + option.replace("_", "-")
    with pytest.raises(SaescopeError, match=f"{flag} is not read by the {arch} architecture"):
        TrainConfig(architecture=arch, **{option: value})
