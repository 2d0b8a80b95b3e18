"""Damaged and refused runs: a file cut short or altered is named in one line (never a
parser's traceback, never "up to date"), and a refused or failed --overwrite leaves the
finished output as it was."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
from test_status import QUIET, TRAIN, run  # noqa: F401  (the module's run fixture)

from saescope.cli import main
from saescope.errors import DamagedFile, SaescopeError, SaescopeWarning
from saescope.paths import RunPaths
from saescope.status import DAMAGED, status


@pytest.fixture
def rd(run: Path, tmp_path: Path) -> Path:  # noqa: F811
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def _cut(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def test_overwrite_that_cannot_start_keeps_the_finished_sae(rd: Path, capsys) -> None:
    weights = (rd / "sae" / "sae.safetensors").read_bytes()
    r = ["--run", str(rd), *QUIET, "--overwrite"]
    # refused by the store's size: the training split is smaller than one batch
    assert main(["train", *r, "--d-sae", "64", "--k", "2", "--batch-size", "4096"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err
    assert (rd / "sae" / "sae.safetensors").read_bytes() == weights
    # a store shard cut short: named, and the SAE made from the whole store stays
    import numpy as np

    from saescope.store import ActivationStore

    rows = ActivationStore(rd / "acts").rows(np.arange(600))
    shard = sorted((rd / "acts").glob("shard-*.safetensors"))[-1]
    _cut(shard)
    assert main(["train", *r, *TRAIN, "--seed", "5"]) == 2
    assert "is truncated or altered" in capsys.readouterr().err
    assert (rd / "sae" / "sae.safetensors").read_bytes() == weights
    # the latent cache likewise, and embed does not call the store up to date
    cache = sorted(p.name for p in (rd / "latents").iterdir())
    assert main(["latents", "--run", str(rd), "--top-n", "7", "--overwrite"]) == 2
    assert "is truncated or altered" in capsys.readouterr().err
    assert sorted(p.name for p in (rd / "latents").iterdir()) == cache
    assert main(["embed", "--run", str(rd)]) == 2
    err = capsys.readouterr().err
    assert "is truncated or altered" in err and "up to date" not in err
    (by,) = [o for o in status(rd).outputs if o.stage == "embed"]
    assert by.state == DAMAGED and by.command == f"saescope embed --run {rd} --overwrite"
    # --overwrite makes a damaged output again (same options: it used to skip)
    assert main(["embed", "--run", str(rd), "--overwrite"]) == 0
    again = ActivationStore(rd / "acts").rows(np.arange(600))  # the same texts and model
    assert np.allclose(again.numpy(), rows.numpy(), atol=1e-5)


def test_damaged_json_and_parquet_are_named_in_one_line(rd: Path, capsys) -> None:
    rp = RunPaths(rd)
    rp.latents_manifest.write_text('{"format": "saescope.latents/1", "sha')
    assert main(["inspect", "3", "--run", str(rd)]) == 2
    err = capsys.readouterr().err
    assert f"{rp.latents_manifest} is not valid JSON" in err and "Traceback" not in err
    (lat,) = [o for o in status(rd).outputs if o.stage == "latents"]
    assert lat.state == DAMAGED and "is not valid JSON" in lat.reasons[0]
    shutil.rmtree(rp.latents)
    assert main(["latents", "--run", str(rd), "--plots", "false", "--shard-rows", "128"]) == 0
    capsys.readouterr()
    # a names table cut short: its stage does not call it up to date, readers name it
    _cut(rp.keywords)
    assert main(["keywords", "--run", str(rd), *QUIET, "--n-keywords", "3"]) == 2
    err = capsys.readouterr().err
    assert "is cut short or altered (not a whole Parquet file)" in err
    with pytest.raises(DamagedFile, match=f"cannot read {rp.keywords}"):
        from saescope.report.data import load_annotations

        load_annotations(rd)
    (kw,) = [o for o in status(rd).outputs if o.stage == "keywords"]
    assert kw.state == DAMAGED
    assert kw.command == f"saescope keywords --run {rd} --n-keywords 3 --overwrite"
    assert main(["keywords", "--run", str(rd), *QUIET, "--n-keywords", "3", "--overwrite"]) == 0
    # a family table beside the one decided on: cut short, then made again
    assert main(["families", "--run", str(rd), "--progress", "false"]) == 0
    _cut(rp.family_members)
    assert main(["families", "--run", str(rd), "--progress", "false"]) == 2
    assert f"{rp.family_members} is cut short" in capsys.readouterr().err
    (fam,) = [o for o in status(rd).outputs if o.stage == "families"]
    assert fam.state == DAMAGED
    assert main(["families", "--run", str(rd), "--progress", "false", "--overwrite"]) == 0
    assert status(rd).ok


def test_run_directories_that_cannot_be_written(tmp_path: Path) -> None:
    from saescope.provenance import run_lock

    (tmp_path / "file").write_text("x")
    bad = pytest.raises(SaescopeError, match="is a file, not a run directory")
    with bad, run_lock(tmp_path / "file", "corpus"):
        pass
    bad = pytest.raises(SaescopeError, match="cannot write the run directory")
    with bad, run_lock(tmp_path / "file" / "sub", "corpus"):
        pass


def test_resuming_on_another_thread_count_says_so(rd: Path) -> None:
    import torch

    from saescope.train.config import TrainConfig
    from saescope.train.stage import run as train

    base = dict(run=str(rd), d_sae=[64], k=[4], batch_size=128, max_steps=20, seed=9)
    train(TrainConfig(**base, overwrite=True, stop_after_steps=5, progress=False, threads=1))
    old = torch.get_num_threads()
    try:
        with pytest.warns(SaescopeWarning, match="the run started on 1"):
            train(TrainConfig(**base, progress=False, threads=2))
        train(TrainConfig(**base, overwrite=True, stop_after_steps=5, progress=False, threads=2))
        with warnings.catch_warnings():
            warnings.simplefilter("error", SaescopeWarning)
            train(TrainConfig(**base, progress=False, threads=2))  # the same count: silent
    finally:
        torch.set_num_threads(old)


def test_artifacts_get_the_umask_mode_whatever_wrote_them(tmp_path: Path) -> None:
    """A shared run directory stays readable: safetensors files came out 0600."""
    import os

    import torch
    from safetensors.torch import save_file

    from saescope.io import atomic_path

    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "t.safetensors") as tmp:
            save_file({"x": torch.zeros(3)}, str(tmp))
        with atomic_path(tmp_path / "t.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(umask)
    for name in ("t.safetensors", "t.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_an_unfinished_latent_cache_is_refused_by_every_reader(rd: Path, capsys) -> None:
    """Its shards are done before its features and co-occurrence: inspect and keywords
    read it while the report refused it, and families blamed --cooccurrence false."""
    import json

    rp = RunPaths(rd)
    saved = json.loads(rp.latents_record.read_text())
    rp.latents_record.write_text(json.dumps(saved | {"status": "running"}))
    rp.cooccurrence.unlink()  # killed before the co-occurrence table
    for argv in (
        ["inspect", "3", "--run", str(rd)],
        ["keywords", "--run", str(rd), *QUIET, "--overwrite"],
        ["families", "--run", str(rd), "--progress", "false"],
        ["report", "--run", str(rd)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "is unfinished (its `saescope latents` was interrupted" in err, (argv, err)
    assert main(["latents", "--run", str(rd), "--plots", "false", "--shard-rows", "128"]) == 0
    assert main(["inspect", "3", "--run", str(rd)]) == 0
