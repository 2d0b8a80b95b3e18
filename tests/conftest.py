"""Shared fixtures: small real corpora and stores, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

# Tests never reach a hub: the packaged models and data are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def run_cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m saescope ARGS` as a user would; return the finished process."""
    proc = subprocess.run(
        [sys.executable, "-m", "saescope", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"saescope {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread: tiny matrices are faster so, and immune to a
    busy machine's oversubscription."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def news_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with 600 shuffled news texts embedded by the packaged MiniLM."""
    from saescope import CorpusConfig, EmbedConfig, embed_corpus, make_corpus

    run = tmp_path_factory.mktemp("news") / "run"
    make_corpus(CorpusConfig(run=str(run), source="news", shuffle=True, limit=600))
    embed_corpus(EmbedConfig(run=str(run), shard_rows=128))
    return run


def random_sae_weights(
    g: torch.Generator, arch: str, d_in: int, d_sae: int, w_scale: float, threshold: float
) -> dict[str, torch.Tensor]:
    """Random native-layout SAE tensors (jumprelu: random per-feature thresholds)."""
    import torch

    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) * w_scale,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) * w_scale,
        "b_dec": torch.randn(d_in, generator=g) * 0.2,
        "threshold": torch.rand(d_sae, generator=g) * 0.3
        if arch == "jumprelu"
        else torch.full((d_sae,), threshold),
    }


def record_hand_made_names(run: Path, scorers: tuple[str, ...] = ()) -> None:
    """The provenance records the keywords, explain and score stages write, for names,
    explanations (and scores) a test wrote by hand: they describe the run's current
    latent cache."""
    from saescope import provenance
    from saescope.latents import LatentCache
    from saescope.paths import RunPaths

    rp = RunPaths(run)
    made_from = {
        "acts": provenance.artifact_id(rp.acts_manifest),
        "sae": LatentCache(run).sae_sha256,
    }
    provenance.Record.make(rp.keywords_record, "keywords", {}, made_from).finish()
    if rp.explanations.exists():
        provenance.Record.make(rp.explanations_record, "explain", {}, made_from).finish()
    for scorer in scorers:
        scored = {"keywords": provenance.artifact_id(rp.keywords)}
        provenance.Record.make(rp.score_record(scorer), "score", {}, scored).finish()


# --- language-model runs -----------------------------------------------------------

TINY_LM_LAYERS = 3


def make_tiny_lm(folder: Path, layers: int = TINY_LM_LAYERS, seed: int = 0) -> Path:
    """A randomly initialised Llama causal LM (d_model 64) with the packaged SmolLM2's
    tokenizer, saved as a Hugging Face folder: fast enough for unit tests of hooks,
    tokenisation, the store and the LM metrics."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from saescope.defaults import smollm2_gguf

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny random Llama (see `make_tiny_lm`)."""
    return make_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture(scope="session")
def tiny_lm_run(tmp_path_factory: pytest.TempPathFactory, tiny_lm_dir: Path) -> Path:
    """A token run: 150 news texts, the tiny Llama's resid_post.1 over 64-token packed
    contexts (acts/ with tokens.safetensors and index.parquet). No SAE yet."""
    from saescope import CorpusConfig, make_corpus
    from saescope.lm.acts import run as acts
    from saescope.options.acts import ActsConfig

    run = tmp_path_factory.mktemp("tiny-lm-run") / "run"
    make_corpus(CorpusConfig(run=str(run), source="news", shuffle=True, limit=150))
    acts(
        ActsConfig(
            run=str(run),
            model=str(tiny_lm_dir),
            hookpoint="resid_post.1",
            ctx_len=64,
            shard_rows=512,
        )
    )
    return run


def token_run_with_latents(src: Path, dest: Path) -> Path:
    """A copy of a token run with a small trained TopK SAE (96 latents, k 8) and a finished
    latent cache."""
    import shutil

    from saescope.latents import LatentsConfig
    from saescope.latents import run as latents
    from saescope.train import stage as train
    from saescope.train.config import TrainConfig

    shutil.copytree(src, dest)
    train.run(TrainConfig(run=str(dest), d_sae=[96], k=[8], batch_size=512, epochs=1.0))
    latents(LatentsConfig(run=str(dest), shard_rows=2048, top_n=8, n_quantiles=4))
    return dest
