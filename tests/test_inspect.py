"""`saescope inspect` and `saescope latents` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import record_hand_made_names, run_cli
from test_latents import new_run

from saescope.cli import main as cli
from saescope.paths import RunPaths
from saescope.sae import SAE
from saescope.store import ActivationStore


@pytest.fixture(scope="module")
def run_dir(news_run: Path, tmp_path_factory) -> Path:
    rd = new_run(news_run, tmp_path_factory.mktemp("inspect") / "run", "topk")
    proc = run_cli("latents", "--run", str(rd), "--shard-rows", "256", "--top-n", "8")
    assert proc.stdout.strip() == str(rd / "latents")
    return rd


def test_feature_table_and_json(run_dir: Path) -> None:
    rp = RunPaths(run_dir)
    feats = pd.read_parquet(rp.features)
    corpus = pd.read_parquet(rp.corpus)
    f = int(feats["count"].idxmax())
    rp.interp.mkdir(exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "feature": pa.array([f], pa.int32()),
                "keywords": [["alpha", "beta"]],
                "status": ["ok"],
            }
        ),
        rp.keywords,
    )
    record_hand_made_names(run_dir)
    out = run_cli("inspect", str(f), "--run", str(run_dir), "-n", "5", "--width", "100").stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"feature {f}")
    assert f"active in {int(feats.at[f, 'count']):,} rows" in out
    assert "keywords: alpha, beta" in out
    table = lines[lines.index("top examples") + 2 :]
    assert len(table) == 5 and all(len(line) <= 100 for line in lines)
    top_rows = feats.at[f, "top_rows"]
    for line, row, act in zip(table, top_rows, feats.at[f, "top_acts"], strict=False):
        rank, shown_act, shown_row, text = line.split(maxsplit=3)
        assert int(shown_row) == row and abs(float(shown_act) - act) < 1e-3 * max(act, 1)
        assert " ".join(corpus["text"][row].split()).startswith(text.rstrip("…"))

    js = json.loads(run_cli("inspect", str(f), "--run", str(run_dir), "--json").stdout)
    assert js["feature"] == f and js["keywords"] == ["alpha", "beta"]
    assert [e["row"] for e in js["top"]] == list(top_rows[:8])
    assert js["top"][0]["text"] == corpus["text"][top_rows[0]]
    assert len(js["quantiles"]) == len(feats.at[f, "quantile_rows"])
    rp.keywords.unlink()


def test_text_lists_the_features_it_activates(run_dir: Path) -> None:
    corpus = pd.read_parquet(RunPaths(run_dir).corpus)
    row = 7
    hits = json.loads(
        run_cli("inspect", "--run", str(run_dir), "--text", corpus["text"][row], "--json").stdout
    )
    # the same text re-embedded gives (nearly) the stored vector, so the same codes
    sae = SAE.load(run_dir / "sae")
    with torch.inference_mode():
        codes = sae.encode(ActivationStore(run_dir / "acts").rows([row]))[0].numpy()
    order = np.argsort(-codes)[: len(hits)]
    assert len(hits) == min(10, int((codes > 0).sum()))
    assert [h["feature"] for h in hits][:3] == order[:3].tolist()
    np.testing.assert_allclose([h["act"] for h in hits], codes[order], atol=1e-3)
    assert all(a["act"] >= b["act"] for a, b in zip(hits, hits[1:], strict=False))


def test_text_table(run_dir: Path, capsys) -> None:
    assert cli(["inspect", "--run", str(run_dir), "--text", "The striker scored a goal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "features of: The striker scored a goal"
    assert lines[1].split() == ["feature", "act", "density", "top", "text", "(or", "keywords)"]
    assert 1 <= len(lines) - 2 <= 10


def test_user_mistakes_are_one_line_errors(run_dir: Path, tmp_path: Path, capsys) -> None:
    for args, needle in [
        (["inspect", "100000", "--run", str(run_dir)], "out of range"),
        (["inspect", "3", "--run", str(tmp_path)], "saescope latents"),
        (["inspect", "--run", str(run_dir)], "FEATURE"),
        (["latents", "--run", str(tmp_path)], "no activation store"),
        (["report", "--run", str(tmp_path)], "saescope latents"),
    ]:
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_a_corpus_remade_after_embed_is_refused_everywhere_texts_are_read(
    run_dir: Path, tmp_path: Path
) -> None:
    """A new corpus.parquet of the same length (another shuffle) no longer lines up with
    the store's rows: the stages that show, name or report rows by their texts refuse
    and say to re-embed (they used to pair the new texts with the old rows), and a file
    that is not Parquet is one clear line too."""
    import shutil

    from saescope import CorpusConfig, make_corpus

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    make_corpus(
        CorpusConfig(run=str(run), source="news", shuffle=True, seed=7, limit=600, overwrite=True)
    )
    assert len(pd.read_parquet(RunPaths(run).corpus)) == ActivationStore(run / "acts").count
    for args in (["inspect", "3"], ["keywords"], ["report"]):
        proc = run_cli(*args, "--run", str(run), check=False)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert "was made from another corpus" in proc.stderr, args
        assert f"saescope embed --run {run} --overwrite" in proc.stderr
        assert "Traceback" not in proc.stderr
    (run / "corpus.parquet").write_text("not a parquet file")
    proc = run_cli("inspect", "3", "--run", str(run), check=False)
    assert proc.returncode == 2 and "was made from another corpus" in proc.stderr
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "corpus.parquet").write_text("not a parquet file")
    proc = run_cli("embed", "--run", str(fresh), check=False)
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr
    pd.DataFrame({"body": ["a text"]}).to_parquet(fresh / "corpus.parquet")
    proc = run_cli("embed", "--run", str(fresh), check=False)
    assert proc.returncode == 2 and "has no column 'text'" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["3", "--text", "hello"], "not both"),
        (["--text", "   "], "is empty"),
        (["3", "-n", "0"], "-n must be >= 1"),
        (["3", "--width", "5"], "--width must be at least 60"),
    ],
)
def test_inspect_arguments_that_mean_nothing_are_one_line_errors(
    run_dir: Path, args: list[str], message: str
) -> None:
    proc = run_cli("inspect", "--run", str(run_dir), *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
