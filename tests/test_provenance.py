"""The provenance record every stage keeps: skip, resume, refuse with what changed, one writer."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from saescope import provenance
from saescope.errors import SaescopeError
from saescope.evaluate import EvalConfig
from saescope.evaluate import run as evaluate
from saescope.io import read_json, sha256_file
from saescope.latents import LatentsConfig
from saescope.latents import run as latents
from saescope.paths import RunPaths
from saescope.store import StoreWriter
from saescope.train import TrainConfig
from saescope.train import run as train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_store(run_dir: Path, seed: int, n_rows: int = 1200, d_in: int = 16) -> None:
    """A small store of `d_in`-d rows; another seed gives another store of the same width."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.relu(torch.randn(n_rows, 48, generator=g) - 1.0) @ torch.randn(
        48, d_in, generator=g
    )
    acts = RunPaths(run_dir).acts
    if acts.exists():
        shutil.rmtree(acts)
    w = StoreWriter(acts, d_in, shard_rows=400, meta={"source": "vectors"})
    w.append(rows)
    w.close()


def small_train(run_dir: Path, **kw) -> TrainConfig:
    base = dict(
        run=str(run_dir), d_sae=[32], k=[4], batch_size=200, epochs=1.0, lr=3e-3,
        checkpoint_every=2, progress=False, log_every=2,
    )  # fmt: skip
    return TrainConfig(**(base | kw))


def test_record_changes_name_what_differs(tmp_path: Path, capsys) -> None:
    up = {"acts": "a" * 64}
    path, out = tmp_path / "p.json", tmp_path / "out"
    ignore = ("run", "device")
    rec = provenance.Record.make(path, "x", {"k": 4, "run": "r", "device": "cpu"}, up, ignore)
    D = provenance.Decision
    assert rec.decide(False, out) is D.FRESH  # nothing there
    rec.start()
    out.write_text("partial")
    assert rec.decide(False, out) is D.RESUME
    rec.finish({"seconds": 1.0})
    assert read_json(path)["result"] == {"seconds": 1.0}
    capsys.readouterr()
    for overwrite in (False, True):  # --overwrite replaces other output, not the same
        assert rec.decide(overwrite, out) is D.SKIP
        assert f"x: {out} is up to date" in capsys.readouterr().err  # said, not silent
    assert rec.decide(False, out, exists=False) is D.FRESH  # output removed by hand: redo
    # execution-only options change nothing
    same = provenance.Record.make(path, "x", {"k": 4, "run": "q", "device": "cuda"}, up, ignore)
    assert same.decide(False, out) is D.SKIP
    other = provenance.Record.make(path, "x", {"k": 8}, {"acts": "b" * 64})
    with pytest.raises(SaescopeError, match=r"option k: 4 -> 8; input acts changed since"):
        other.decide(False, out)
    assert other.decide(True, out) is D.FRESH
    # output without a record (an older saescope, or made by hand) is never silently replaced
    orphan = provenance.Record.make(tmp_path / "none.json", "x", {"k": 4}, up)
    with pytest.raises(SaescopeError, match="no provenance record"):
        orphan.decide(False, out)
    assert orphan.decide(True, out) is D.FRESH


def test_a_rebuilt_store_makes_train_and_eval_redo(tmp_path: Path) -> None:
    rd = tmp_path / "run"
    rp = RunPaths(rd)
    write_store(rd, seed=0)
    train(small_train(rd))
    metrics = read_json(rp.sae_metrics)
    weights = sha256_file(rp.sae_weights)
    train(small_train(rd))  # same store, same options: skipped
    assert sha256_file(rp.sae_weights) == weights

    write_store(rd, seed=1)  # same width, other rows
    with pytest.raises(SaescopeError, match="input acts changed since"):
        train(small_train(rd))
    assert sha256_file(rp.sae_weights) == weights  # the refused run left the SAE alone
    # eval of the old SAE on the new store: its metrics are redone, not reused
    evaluate(EvalConfig(run=str(rd)))
    assert read_json(rp.sae_metrics)["nmse"] != metrics["nmse"]
    assert read_json(rp.sae.joinpath("metrics.provenance.json"))["upstream"]["acts"] == sha256_file(
        rp.acts_manifest
    )
    train(small_train(rd, overwrite=True))
    assert sha256_file(rp.sae_weights) != weights


def test_a_checkpoint_of_another_store_is_not_resumed(tmp_path: Path) -> None:
    rd = tmp_path / "run"
    rp = RunPaths(rd)
    write_store(rd, seed=0)
    train(small_train(rd, stop_after_steps=3))  # interrupted: checkpoints, no SAE yet
    assert list(rp.checkpoints.glob("step-*.pt")) and not rp.sae_weights.exists()
    write_store(rd, seed=1)
    with pytest.raises(SaescopeError, match="input acts changed since"):
        train(small_train(rd))
    train(small_train(rd, overwrite=True))
    ref = tmp_path / "ref"
    write_store(ref, seed=1)
    train(small_train(ref))  # a run that only ever saw the second store
    assert sha256_file(rp.sae_weights) == sha256_file(RunPaths(ref).sae_weights)


def test_refused_latents_leave_the_finished_cache_intact(tmp_path: Path) -> None:
    rd = tmp_path / "run"
    rp = RunPaths(rd)
    write_store(rd, seed=0)
    train(small_train(rd))
    other = tmp_path / "other"
    shutil.copytree(rp.acts, RunPaths(other).acts)
    train(small_train(other, seed=5))
    latents(LatentsConfig(run=str(rd), plots=False))
    from saescope.latents import LatentCache

    # the cache finds its SAE inside the run, wherever the run directory is now
    moved = shutil.copytree(rd, tmp_path / "moved")
    assert LatentCache(moved).sae_dir() == moved / "sae"
    before = {p.name: sha256_file(p) for p in rp.latents.iterdir() if p.is_file()}
    with pytest.raises(SaescopeError, match="input sae changed since"):
        latents(LatentsConfig(run=str(rd), sae=str(RunPaths(other).sae), plots=False))
    with pytest.raises(SaescopeError, match="option top_n"):
        latents(LatentsConfig(run=str(rd), top_n=3, plots=False))
    after = {p.name: sha256_file(p) for p in rp.latents.iterdir() if p.is_file()}
    assert after == before
    assert LatentCache(rd).n_rows == 1200  # still reads as finished
    latents(LatentsConfig(run=str(rd), sae=str(RunPaths(other).sae), plots=False, overwrite=True))
    assert LatentCache(rd).sae_dir().resolve() == RunPaths(other).sae.resolve()


def test_keywords_use_the_sae_of_the_cache_and_scores_refuse_other_activations(
    news_run: Path, tmp_path: Path
) -> None:
    from saescope.interp.keywords import KeywordsConfig
    from saescope.interp.keywords import run as keywords
    from saescope.scoring.stage import ScoreConfig
    from saescope.scoring.stage import run as score

    rd = tmp_path / "run"
    rd.mkdir()
    shutil.copy(news_run / "corpus.parquet", rd / "corpus.parquet")
    shutil.copytree(news_run / "acts", rd / "acts")
    rp = RunPaths(rd)
    train(small_train(rd, d_sae=[64], k=[8], batch_size=100, epochs=2.0))
    alt = rd / "sae-alt"
    shutil.copytree(rp.sae, alt)
    # perturb the copy: another SAE of the same shape
    from saescope.sae import SAE

    sae = SAE.load(alt)
    with torch.no_grad():
        sae.W_enc.mul_(torch.linspace(0.5, 1.5, sae.cfg.d_sae))
    shutil.rmtree(alt)
    sae.save(alt)
    latents(LatentsConfig(run=str(rd), sae=str(alt), plots=False, cooccurrence=False))
    kw = keywords(KeywordsConfig(run=str(rd), progress=False, max_texts=50))
    rec = read_json(rp.keywords_record)
    assert rec["upstream"]["sae"] == sha256_file(alt / "sae.safetensors")  # not sae/'s
    assert read_json(rp.keywords_config)["sae_dir"] == str(alt.resolve())
    assert len(pd.read_parquet(kw)) > 0
    # scoring with sae/'s codes would score alt's names on other activations
    with pytest.raises(SaescopeError, match="other activations"):
        score(ScoreConfig(run=str(rd), activations="sae", progress=False))
    score(ScoreConfig(run=str(rd), progress=False))
    from saescope.report.data import load_annotations

    ann = load_annotations(rd)
    assert ann.keywords and ann.scores["embedding"] and not ann.stale
    # the cache's SAE changed after the cache was made: refused, never named with the new one
    with torch.no_grad():
        sae.W_enc.mul_(2.0)
    shutil.rmtree(alt)
    sae.save(alt)
    with pytest.raises(SaescopeError, match="missing or has changed since"):
        keywords(KeywordsConfig(run=str(rd), progress=False, max_texts=50, overwrite=True))

    # the cache re-made from another SAE: the old names and scores are no longer shown
    latents(LatentsConfig(run=str(rd), plots=False, cooccurrence=False, overwrite=True))  # sae/
    ann = load_annotations(rd)
    assert not ann.keywords and not ann.scores and len(ann.stale) == 2


LOCK_HOLDER = """
import sys, time
from saescope.provenance import run_lock
with run_lock(sys.argv[1], "train"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_gets_a_clear_error_and_a_killed_one_leaves_no_lock(tmp_path: Path) -> None:
    rd = tmp_path / "run"
    write_store(rd, seed=0)
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(rd)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(SaescopeError, match=r"is being written by saescope train \(pid"):
            train(small_train(rd))
        assert not RunPaths(rd).sae.exists()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    t0 = time.time()
    train(small_train(rd))  # the kernel dropped the killed holder's lock
    assert RunPaths(rd).sae_weights.exists() and time.time() - t0 < 60
    # one process may nest stages (a stage calling another) without locking itself out
    with provenance.run_lock(rd, "outer"), provenance.run_lock(rd, "inner"):
        evaluate(EvalConfig(run=str(rd)))


def test_appending_vectors_with_other_options_is_refused(tmp_path: Path) -> None:
    import numpy as np

    from saescope.embed import run as embed
    from saescope.options.embed import EmbedConfig

    rd = tmp_path / "run"
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, rng.normal(size=(50, 8)).astype(np.float32))
    np.save(b, rng.normal(size=(30, 8)).astype(np.float32))
    embed(EmbedConfig(run=str(rd), vectors=str(a)))
    manifest = read_json(RunPaths(rd).acts_manifest)
    with pytest.raises(SaescopeError, match="option normalize: False -> True"):
        embed(EmbedConfig(run=str(rd), vectors=str(b), append=True, normalize=True))
    assert read_json(RunPaths(rd).acts_manifest) == manifest
    embed(EmbedConfig(run=str(rd), vectors=str(b), append=True))
    record = read_json(RunPaths(rd).acts_record)
    assert record["status"] == "complete" and len(record["upstream"]) == 2
    assert read_json(RunPaths(rd).acts_manifest)["count"] == 80


def test_a_failed_stage_on_a_mistyped_run_leaves_no_folder(tmp_path: Path) -> None:
    with pytest.raises(SaescopeError):
        train(small_train(tmp_path / "typo"))
    assert not (tmp_path / "typo").exists()


def test_converting_over_a_trained_sae_removes_what_claimed_it_was_trained_here(
    tmp_path: Path,
) -> None:
    from saescope.convert import run as convert
    from saescope.options.convert import ConvertConfig

    rd, other = tmp_path / "run", tmp_path / "other"
    write_store(rd, seed=0)
    train(small_train(rd))
    shutil.copytree(RunPaths(rd).acts, RunPaths(other).acts)
    train(small_train(other, seed=7))
    sae = RunPaths(rd).sae
    with pytest.raises(SaescopeError, match="holds an SAE trained by `saescope train`"):
        convert(ConvertConfig(src=str(RunPaths(other).sae), out=str(sae)))
    convert(ConvertConfig(src=str(RunPaths(other).sae), out=str(sae), overwrite=True))
    assert not RunPaths(rd).checkpoints.exists() and not (sae / "provenance.json").exists()
    # training here again does not take the converted SAE for its own finished work
    with pytest.raises(SaescopeError, match="no provenance record"):
        train(small_train(rd))


def test_an_option_added_since_a_record_was_made_is_unchanged_at_its_default(
    tmp_path: Path,
) -> None:
    """A record from an older saescope lacks options added since: at their default they
    change nothing (re-running such a run, or resuming its training, used to be refused
    as 'option new: None -> 0.0'); set to anything else they are a change."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Old:
        k: int = 4

    @dataclasses.dataclass(frozen=True)
    class New:
        k: int = 4
        target: float = 0.0
        groups: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.5])

    path, out = tmp_path / "p.json", tmp_path / "out"
    old = provenance.Record.make(path, "x", Old(), {})
    old.start()
    out.write_text("done")
    old.finish()
    D = provenance.Decision
    assert provenance.Record.make(path, "x", New(), {}).decide(False, out) is D.SKIP
    moved = provenance.Record.make(path, "x", New(target=32.0), {})
    with pytest.raises(SaescopeError, match=r"option target: None -> 32.0"):
        moved.decide(False, out)
    with pytest.raises(SaescopeError, match=r"option groups: None -> \[0.25"):
        provenance.Record.make(path, "x", New(groups=[0.25, 0.75]), {}).decide(False, out)
    # an option removed since cannot be set any more: the newer record still matches
    newer = provenance.Record.make(path, "x", New(), {})
    newer.finish()
    assert provenance.Record.make(path, "x", Old(), {}).decide(False, out) is D.SKIP
