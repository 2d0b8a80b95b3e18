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
    assert "is not a run directory (it is not there)" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["status", "--run", str(tmp_path / "file")]) == 2
    assert "is not a run directory (it is a file)" in capsys.readouterr().err
    assert main(["status", "--run", str(tmp_path), "--check"]) == 0
    assert "no stage has run here yet" in capsys.readouterr().out


def test_a_cache_of_another_sae_is_made_again_from_that_sae(run: Path, tmp_path: Path) -> None:
    """latents records its SAE by the weights' hash: the command names the folder again,
    and eval's does not fix the held-out fraction it took from the SAE."""
    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    shutil.copytree(rd / "sae", rd / "sae-alt")
    r = ["--run", str(rd)]
    assert main(["latents", *r, "--sae", "sae-alt", "--plots", "false", "--overwrite"]) == 0
    (rd / "latents" / "manifest.json").unlink()
    (rd / "sae" / "metrics.json").unlink()
    by = {o.output: o for o in status(rd).outputs}
    assert by["latents/manifest.json"].state == NO_OUTPUT
    assert "--sae sae-alt" in by["latents/manifest.json"].command
    assert by["sae/metrics.json"].command == f"saescope eval --run {rd}"
    _remake(rd, "latents/manifest.json")
    manifest = json.loads((rd / "latents" / "manifest.json").read_text())
    assert manifest["source"]["sae_dir"] == "sae-alt"
    _remake(rd, "sae/metrics.json")
    assert _states(rd)["sae/metrics.json"] == CURRENT


def test_damaged_records_missing_saes_and_names_made_later(run: Path, tmp_path: Path) -> None:
    from saescope.families.stage import run as families
    from saescope.options.families import FamiliesConfig

    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    rp = RunPaths(rd)
    # families made before the keywords: re-running them would read the names
    shutil.move(rp.interp, tmp_path / "interp")
    families(FamiliesConfig(run=str(rd), progress=False))
    shutil.move(tmp_path / "interp", rp.interp)
    fam = [o for o in status(rd).outputs if o.stage == "families"][0]
    assert fam.state == OUT_OF_DATE
    assert "input keywords (interp/keywords.parquet) is there now, and was not read" in fam.reasons
    _remake(rd, "families/families.parquet")
    assert _states(rd)["families/families.parquet"] == CURRENT
    # a damaged record says nothing about its output, which is not current then
    rp.keywords_record.write_text("garbage")
    by = {o.output: o for o in status(rd).outputs}
    assert by["interp/keywords.parquet"].state == "no record"
    assert "the keywords output interp/keywords.parquet has no record" in (
        by["families/families.parquet"].reasons
    )
    # a deleted SAE is gone, not unchecked
    shutil.rmtree(rp.sae)
    by = {o.output: o for o in status(rd).outputs}
    assert "input sae (sae/sae.safetensors) is gone" in by["latents/manifest.json"].reasons
    assert not status(rd).ok


def test_imported_vectors_and_converted_saes(run: Path, tmp_path: Path) -> None:
    import numpy as np

    from saescope.store import ActivationStore

    rd = tmp_path / "run"
    vectors = tmp_path / "v.npy"
    np.save(vectors, ActivationStore(run / "acts").rows(np.arange(200)))
    assert main(["embed", "--run", str(rd), "--vectors", str(vectors)]) == 0
    assert main(["convert", "--src", str(run / "sae"), "--out", str(rd / "sae")]) == 0
    by = {o.output: o for o in status(rd).outputs}
    assert by["acts/manifest.json"].state == by["sae"].state == CURRENT
    assert by["sae"].stage == "convert"
    # the source changed: the conversion is out of date, and made again as it was made
    shutil.copytree(run / "sae", tmp_path / "src")
    saved = json.loads((rd / "sae" / "convert.json").read_text())
    saved["config"]["src"] = str(tmp_path / "src")
    (rd / "sae" / "convert.json").write_text(json.dumps(saved))
    rewritten = tmp_path / "src" / "config.json"
    rewritten.write_text(rewritten.read_text().replace("}", ', "note": "x"}', 1))
    conv = {o.output: o for o in status(rd).outputs}["sae"]
    assert conv.state == OUT_OF_DATE and "input config.json" in conv.reasons[0]
    assert conv.command.startswith(f"saescope convert --src {tmp_path / 'src'} --out ")
    # a store filled by imports has no one command that makes it again
    (rd / "acts" / "manifest.json").unlink()
    acts = {o.output: o for o in status(rd).outputs}["acts/manifest.json"]
    assert acts.state == NO_OUTPUT and acts.command is None
    assert "run each `embed --vectors` again" in acts.reasons[-1]


def test_a_lock_held_by_another_stage_is_not_this_one_being_made(run: Path, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    rp = RunPaths(rd)
    saved = provenance.read_record(rp.latents_record)
    rp.latents_record.write_text(json.dumps(saved | {"status": "running"}))
    with provenance.run_lock(rd, "report"):
        assert _states(rd)["latents/manifest.json"] == UNFINISHED
