"""`saescope status` on a real run: current outputs, then what a change upstream, an
interruption, a deleted output and a running stage make of them, and the re-make
commands it prints, run as printed."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from saescope import provenance
from saescope.cli import main
from saescope.paths import RunPaths
from saescope.status import BEING_MADE, CURRENT, NO_OUTPUT, OUT_OF_DATE, UNFINISHED, status

TRAIN = ["--d-sae", "64", "--k", "4", "--batch-size", "128", "--max-steps", "20"]
QUIET = ["--progress", "false"]


def _states(run: Path) -> dict[str, str]:
    return {o.output: o.state for o in status(run).outputs}


def _remake(run: Path, output: str) -> None:
    """Run the command status prints for `output`, as a user would paste it."""
    (out,) = [o for o in status(run).outputs if o.output == output]
    assert out.command is not None, out
    words = shlex.split(out.command)
    assert words[:2] == ["saescope", out.stage]
    assert main(words[1:]) == 0


@pytest.fixture(scope="module")
def run(news_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rd = tmp_path_factory.mktemp("status") / "run"
    rd.mkdir()
    shutil.copy(news_run / "corpus.parquet", rd / "corpus.parquet")
    shutil.copy(news_run / "corpus.provenance.json", rd / "corpus.provenance.json")
    shutil.copytree(news_run / "acts", rd / "acts")
    r = ["--run", str(rd)]
    assert main(["train", *r, *TRAIN, *QUIET, "--seed", "1"]) == 0
    assert main(["eval", *r, "--progress", "false"]) == 0
    assert main(["latents", *r, "--plots", "false", "--shard-rows", "128"]) == 0
    assert main(["keywords", *r, *QUIET, "--n-keywords", "3"]) == 0
    return rd


def test_a_finished_run_is_current_and_check_passes(run: Path, capsys) -> None:
    states = _states(run)
    assert states == {
        "corpus.parquet": CURRENT,
        "acts/manifest.json": CURRENT,
        "sae/sae.safetensors": CURRENT,
        "sae/metrics.json": CURRENT,
        "latents/manifest.json": CURRENT,
        "interp/keywords.parquet": CURRENT,
    }
    capsys.readouterr()
    assert main(["status", "--run", str(run), "--check"]) == 0
    assert "6 outputs, all current" in capsys.readouterr().out
    assert main(["status", "--run", str(run), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and len(doc["outputs"]) == 6
    # the keywords' recorded inputs are all files of the run: none left unchecked
    (kw,) = [o for o in doc["outputs"] if o["stage"] == "keywords"]
    assert kw["unchecked"] == [] and kw["command"] is None


def test_a_retrained_sae_puts_what_was_made_from_it_out_of_date(
    run: Path, tmp_path: Path, capsys
) -> None:
    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    r = ["--run", str(rd)]
    assert main(["train", *r, *TRAIN, *QUIET, "--seed", "2", "--overwrite"]) == 0
    st = status(rd)
    by = {o.output: o for o in st.outputs}
    # train measures its SAE itself, so the metrics are current again
    assert by["sae/sae.safetensors"].state == by["sae/metrics.json"].state == CURRENT
    for out in ("latents/manifest.json", "interp/keywords.parquet"):
        assert by[out].state == OUT_OF_DATE, by[out]
        assert "input sae (sae/sae.safetensors) changed since" in by[out].reasons
    assert not st.ok
    capsys.readouterr()
    assert main(["status", *r, "--check"]) == 1
    text = capsys.readouterr().out
    assert "2 not current" in text and "re-make: saescope latents" in text

    # the printed commands bring each output back, in pipeline order; the keywords
    # follow the new latent cache, not the SAE alone
    _remake(rd, "latents/manifest.json")
    kw = [o for o in status(rd).outputs if o.stage == "keywords"][0]
    assert kw.state == OUT_OF_DATE
    assert any("input latents (latents/manifest.json) changed" in w for w in kw.reasons)
    _remake(rd, "interp/keywords.parquet")
    assert status(rd).ok


def test_an_earlier_output_out_of_date_is_passed_on(run: Path, tmp_path: Path) -> None:
    """An input unchanged since, made from what changed since, is not current either."""
    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    rp = RunPaths(rd)
    saved = json.loads(rp.acts_record.read_text())
    saved["upstream"]["corpus"] = "0" * 64  # the store was made from another corpus
    rp.acts_record.write_text(json.dumps(saved))
    by = {o.output: o for o in status(rd).outputs}
    assert by["acts/manifest.json"].state == OUT_OF_DATE
    assert by["acts/manifest.json"].command.endswith("--overwrite")
    assert (
        "the embed output acts/manifest.json is out of date" in by["latents/manifest.json"].reasons
    )


def test_interrupted_missing_and_running_outputs(run: Path, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    rp = RunPaths(rd)
    # an interruption leaves the record a stage writes before its first output file
    saved = provenance.read_record(rp.latents_record)
    assert saved is not None
    rp.latents_record.write_text(json.dumps(saved | {"status": "running"}))
    rp.keywords.unlink()
    by = {o.output: o for o in status(rd).outputs}
    lat = by["latents/manifest.json"]
    assert lat.state == UNFINISHED
    assert lat.command is not None and "--overwrite" not in lat.command  # resume, not redo
    assert by["interp/keywords.parquet"].state == NO_OUTPUT
    with provenance.run_lock(rd, "latents"):  # as the stage holds it while it runs
        lat = [o for o in status(rd).outputs if o.output == "latents/manifest.json"][0]
        assert lat.state == BEING_MADE
        assert "saescope latents (pid" in lat.reasons[0]
    # resuming: the same command finishes the cache
    _remake(rd, "latents/manifest.json")
    assert _states(rd)["latents/manifest.json"] == CURRENT


def test_no_run_and_an_empty_run(tmp_path: Path, capsys) -> None:
    assert main(["status", "--run", str(tmp_path / "nowhere")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert main(["status", "--run", str(tmp_path), "--check"]) == 0
    assert "no stage has run here yet" in capsys.readouterr().out
