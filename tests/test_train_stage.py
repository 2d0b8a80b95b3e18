"""The `saescope train` stage on a tiny synthetic store: files, skip, resume, sweeps, errors, loggers."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescope.cli import main as cli_main
from saescope.errors import SaescopeError
from saescope.io import read_json
from saescope.paths import RunPaths
from saescope.sae import SAE
from saescope.store import StoreWriter
from saescope.train import TrainConfig, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_store(run_dir: Path, n_rows: int = 2400, d_in: int = 32, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(96, d_in, generator=g)
    z = torch.relu(torch.randn(n_rows, 96, generator=g) - 1.2)
    rows = z @ basis + 0.5
    w = StoreWriter(RunPaths(run_dir).acts, d_in, shard_rows=500, meta={"source": "vectors"})
    w.append(rows)
    w.close()
    return run_dir


@pytest.fixture(scope="module")
def store_run(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("trainstore") / "run")


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(RunPaths(src).acts, RunPaths(dst).acts)
    return dst


def small(run_dir: Path, **kw) -> TrainConfig:
    base = dict(
        run=str(run_dir),
        d_sae=[64],
        k=[4],
        batch_size=200,
        epochs=2.0,
        lr=3e-3,
        dead_after_samples=400,
        checkpoint_every=5,
        progress=False,
        log_every=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_every_sae_and_skips_a_rerun(store_run, tmp_path):
    run_dir = _copy_run(store_run, tmp_path / "r")
    cfg = small(run_dir, k=[4, 8])
    out = run(cfg)
    rp = RunPaths(run_dir)
    assert out == rp.sae
    for folder, k in ((rp.sae, 4), (rp.sae_variant(64, 8), 8)):
        sae = SAE.load(folder)
        assert sae.cfg.k == k and sae.cfg.d_sae == 64
        # input_norm "auto" on a store whose rows are not all of one norm
        assert sae.cfg.input_norm == "row_standardize"
        conf = read_json(folder / "config.json")
        assert conf["training"]["k"] == [4, 8] and conf["trained"]["steps"] == 22
        metrics = read_json(folder / "metrics.json")
        assert metrics["split"] == "eval" and 0 < metrics["n_rows"] < 400
        assert metrics["l0"] <= k + 1e-9 and 0 < metrics["fve"] < 1
        assert 0 <= metrics["recall_at_k"] <= 1
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        assert len(lines) >= 7 and '"nmse"' in lines[-1]
    assert list((rp.sae / "checkpoints").glob("step-*.pt"))
    stamp = rp.sae_weights.stat().st_mtime_ns
    run(cfg)
    assert rp.sae_weights.stat().st_mtime_ns == stamp
    with pytest.raises(SaescopeError, match="other inputs or options: option lr"):
        run(small(run_dir, k=[4, 8], lr=1e-3))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_resume_ends_with_exactly_the_weights_of_an_uninterrupted_run(
    store_run, tmp_path, arch, capsys
):
    kw = dict(architecture=arch, eval_at_end=False, epochs=1.5)
    a = _copy_run(store_run, tmp_path / "a")
    run(small(a, **kw))
    b = _copy_run(store_run, tmp_path / "b")
    run(small(b, stop_after_steps=7, **kw))  # mid-epoch, between checkpoints
    assert not RunPaths(b).sae_weights.exists()
    assert "resuming" not in capsys.readouterr().err
    run(small(b, stop_after_steps=13, **kw))  # into the second epoch
    assert "train: resuming from step 7 of " in capsys.readouterr().err
    run(small(b, **kw))
    wa = load_file(str(RunPaths(a).sae_weights))
    wb = load_file(str(RunPaths(b).sae_weights))
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name

    def logged(run_dir):  # metrics at the regular log steps, without the timing
        rows = [json.loads(x) for x in RunPaths(run_dir).train_log.read_text().splitlines()]
        return [{**r, "samples_per_s": 0} for r in rows if r["step"] % 3 == 0]

    assert logged(a) == logged(b)


def test_bad_inputs_raise_clear_errors(tmp_path, store_run):
    with pytest.raises(SaescopeError, match="no activation store"):
        run(small(tmp_path / "empty"))
    with pytest.raises(SaescopeError, match="k must not exceed d_sae"):
        small(store_run, d_sae=[8], k=[16])
    with pytest.raises(SaescopeError, match="unknown architecture"):
        small(store_run, architecture="gated")
    with pytest.raises(SaescopeError, match="fewer than one batch"):
        run(small(_copy_run(store_run, tmp_path / "c"), batch_size=100_000))
    assert cli_main(["train", "--run", str(tmp_path / "nothing")]) == 2
    with pytest.raises(SystemExit):  # argparse rejects the choice
        cli_main(["train", "--run", str(store_run), "--architecture", "gated"])
    assert cli_main(["train", "--run", str(store_run), "--d-sae", "8", "--k", "16"]) == 2


def test_wandb_offline_and_tensorboard_loggers(store_run, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = _copy_run(store_run, tmp_path / "w")
    run(small(run_dir, loggers=["wandb", "tensorboard"], max_steps=6, eval_at_end=False))
    offline = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert offline, "wandb wrote no offline run"
    assert list((offline[0]).rglob("*.wandb"))
    assert list((RunPaths(run_dir).sae / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_lists_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--run" in out and ("--dead-after-samples" in out or command == "eval")


def test_mlflow_logger_writes_a_local_sqlite_store(store_run, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = _copy_run(store_run, tmp_path / "m")
    run(small(run_dir, loggers=["mlflow"], max_steps=6, eval_at_end=False))
    db = next(RunPaths(run_dir).sae.rglob("mlflow.db"))
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (found,) = client.search_runs([client.get_experiment_by_name("saescope").experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.params["d_sae"] == "[64]"
    logged = [
        json.loads(line) for line in next(RunPaths(run_dir).sae.rglob("metrics.jsonl")).open()
    ]
    assert len(logged) >= 2
    key = next(k for k in found.data.metrics if k.endswith("/nmse"))
    history = client.get_metric_history(found.info.run_id, key)
    assert [m.step for m in history] == [row["step"] for row in logged]
    assert [m.value for m in history] == pytest.approx([row["nmse"] for row in logged])
