"""`saescope status`: what a run directory holds, and whether each output is current.

    saescope status --run runs/demo           one line per stage output, and what to re-run
    saescope status --run runs/demo --json    the same as JSON, for scripts
    saescope status --run runs/demo --check   exit 1 when an output is not current

In: the provenance record every stage writes beside its output (saescope/provenance.py).
Each output is one of:

    current      finished, and every input it recorded is as it was then
    out of date  finished, but an input changed or is gone since, or an input is itself
                 out of date or unfinished (re-run the stage: the command is shown)
    unfinished   interrupted: re-running the same command resumes it
    being made   another process holds the run's lock
    no output    the record is there but the output was deleted

An input is checked when it is a file of the run, or a file an option names (a corpus
file, steering prompts, search queries). What is not (a built-in corpus, saescope's own
page template, vector files imported into the store) is listed as unchecked in --json.
A stage decides on its own output when it runs; this command only reads the records.
Out: text or JSON on stdout; nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saescope import provenance
from saescope.config import field_default
from saescope.errors import SaescopeError
from saescope.io import read_json
from saescope.paths import HUB_PREFIX, PROVENANCE, RunPaths, SAEPaths

CURRENT, OUT_OF_DATE, UNFINISHED, BEING_MADE, NO_OUTPUT = (
    "current",
    "out of date",
    "unfinished",
    "being made",
    "no output",
)


@dataclass(frozen=True)
class Output:
    """One stage output of a run and what its record says about it."""

    stage: str
    output: str  # relative to the run
    state: str  # one of the five states above
    reasons: list[str] = field(default_factory=list)  # why it is not current
    unchecked: list[str] = field(default_factory=list)  # recorded inputs status cannot check
    made: str | None = None  # when the record was last written (local time)
    command: str | None = None  # what re-makes it, when it is not current


@dataclass(frozen=True)
class RunStatus:
    run: str
    outputs: list[Output]

    @property
    def ok(self) -> bool:
        return all(o.state == CURRENT for o in self.outputs)


@dataclass(frozen=True)
class _Found:
    """A record on disk, the output it describes and the paths that output owns."""

    record: Path
    output: Path
    owns: tuple[Path, ...]  # the output's files or folders (inputs of later stages)


def _found(rp: RunPaths) -> Iterator[_Found]:
    """Every stage record of the run, in pipeline order."""
    yield _Found(rp.corpus_record, rp.corpus, (rp.corpus,))
    yield _Found(rp.acts_record, rp.acts_manifest, (rp.acts,))
    folders = [rp.sae, *sorted(p for p in rp.root.glob("sae-*") if p.is_dir())]
    for folder in map(SAEPaths, folders):
        yield _Found(folder.train_record, folder.weights, (folder.weights, folder.config))
    for folder in map(SAEPaths, folders):
        yield _Found(folder.eval_record, folder.metrics, (folder.metrics,))
    yield _Found(rp.latents_record, rp.latents_manifest, (rp.latents,))
    yield _Found(rp.keywords_record, rp.keywords, (rp.keywords,))
    yield _Found(rp.explanations_record, rp.explanations, (rp.explanations,))
    for record in sorted(rp.scores.glob(f"*.{PROVENANCE}")):
        key = record.name.removesuffix(f".{PROVENANCE}")
        owns = (rp.score(key), rp.score_summary(key), rp.score_plot(key), rp.score_results(key))
        yield _Found(record, rp.score(key), owns)
    yield _Found(rp.families_record, rp.families_table, (rp.families,))
    for kind in ("exact", "ivf"):
        yield _Found(rp.index_record(kind), rp.index_manifest(kind), (rp.index_dir(kind),))
    yield _Found(
        rp.search_eval_record,
        rp.search_eval_summary,
        (rp.search_eval, rp.search_eval_summary, rp.search_eval_plot),
    )
    yield _Found(rp.steer_record, rp.steer_summary, (rp.steer,))
    yield _Found(rp.report_record, rp.report_index, (rp.report,))


def _cache_sae(rp: RunPaths) -> Path:
    """The SAE folder the latent cache was encoded with (the run's sae/ without a cache)."""
    try:
        return rp.root / read_json(rp.latents_manifest)["source"]["sae_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return rp.sae


def _sae_weights(folder: Path) -> Path | None:
    from saescope.sae.formats import detect_format

    try:
        return detect_format(folder).weights
    except SaescopeError:
        return None


def _option_path(value: Any) -> Path | None:
    """A file or folder an option named (relative to where the stage ran: unknown here,
    so only taken when it exists from here)."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value.removeprefix("hf:"))
    return path if path.exists() else None


def _input_path(rp: RunPaths, found: _Found, saved: dict[str, Any], name: str) -> Path | None:
    """The path a recorded input name stands for now, or None when it cannot be checked."""
    cfg = saved.get("config", {})
    fixed = {
        "corpus": rp.corpus,
        "acts": rp.acts_manifest,
        "tokens": rp.acts_tokens,
        "latents": rp.latents_manifest,
        "features": rp.features,
        "cooccurrence": rp.cooccurrence,
        "keywords": rp.keywords,
        "explanations": rp.explanations,
    }
    if name in fixed:
        return fixed[name]
    if name == "sae":
        if saved.get("stage") in ("train", "eval"):
            return _sae_weights(found.record.parent)  # the SAE of their own folder
        if cfg.get("sae"):
            if str(cfg["sae"]).startswith(HUB_PREFIX):  # status reads; it fetches nothing
                return None
            return _sae_weights(rp.sae_folder(cfg["sae"]))
        return _sae_weights(rp.sae if cfg.get("activations") == "store" else _cache_sae(rp))
    if name == "index" and isinstance(cfg.get("index"), str):
        return rp.index_manifest(cfg["index"])
    if name.startswith("split_sae:"):
        folder = rp.sae_folder(name.removeprefix("split_sae:"))
        return folder if folder.exists() else None
    if name in ("source", "prompts", "queries"):
        return _option_path(cfg.get(name))
    if "/" in name and (rp.root / name).exists():  # the report names its inputs by path
        return rp.root / name
    return None


def _identity(name: str, path: Path) -> str:
    if name.startswith("split_sae:"):
        from saescope.families.splits import weights_id

        return weights_id(path)
    if path.is_dir() and not (path / "manifest.json").exists():
        return provenance.listing_id(path)  # a corpus read from a dataset folder
    return provenance.artifact_id(path)


def _lock_holder(rp: RunPaths) -> str | None:
    """Who holds the run's writer lock now (None: nobody)."""
    lock = rp.root / provenance.LOCK_FILE
    try:
        import fcntl
    except ImportError:
        return None
    if not lock.exists():
        return None
    with open(lock, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read(4096).decode(errors="replace").strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def _command(stage: str, run: str, saved: dict[str, Any]) -> str:
    """The command that re-makes an output: the stage with the options it recorded that
    differ from today's defaults (execution-only options were not recorded)."""
    from saescope.cli import STAGES

    words = ["saescope", stage, "--run", run]
    spec = STAGES.get(stage)
    if spec is None:
        return shlex.join(words)
    cls = getattr(importlib.import_module(spec.options), spec.config)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in saved.get("config", {}).items():
        f = fields.get(key)
        if f is None or key == "run" or value is None:
            continue
        default = json.loads(json.dumps(field_default(f), default=str))
        if value == default:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    if "overwrite" in fields:
        words.append("--overwrite")
    return shlex.join(words)


def _relative(rp: RunPaths, path: Path) -> str:
    try:
        return str(path.relative_to(rp.root))
    except ValueError:
        return str(path)


def _owner(owned: dict[Path, Output], path: Path) -> Output | None:
    """The earlier output that `path` is (part of), if any."""
    path = path.resolve()
    for root, out in owned.items():
        if path == root or root in path.parents:
            return out
    return None


def status(run: str | Path) -> RunStatus:
    """The state of every stage output of `run` (see the module docstring)."""
    rp = RunPaths(run)
    if not rp.root.is_dir():
        raise SaescopeError(f"{rp.root} is not a run directory (it does not exist)")
    holder = _lock_holder(rp)
    outputs: list[Output] = []
    owned: dict[Path, Output] = {}  # path -> the earlier output it belongs to
    for found in _found(rp):
        saved = provenance.read_record(found.record)
        if saved is None:
            continue
        stage = str(saved.get("stage", "?"))
        reasons: list[str] = []
        unchecked: list[str] = []
        if saved.get("status") != "complete":
            state = BEING_MADE if holder else UNFINISHED
            if holder:
                reasons.append(f"{holder} holds the run")
            else:
                reasons.append("interrupted; re-run the same command to resume it")
        elif not found.output.exists():
            state = NO_OUTPUT
            reasons.append(f"{_relative(rp, found.output)} was deleted")
        else:
            for name, recorded in sorted(saved.get("upstream", {}).items()):
                path = _input_path(rp, found, saved, name)
                if path is None:
                    unchecked.append(name)
                    continue
                shown = _relative(rp, path)
                said = f"input {name}" + (f" ({shown})" if shown != name else "")
                if not path.exists():
                    reasons.append(f"{said} is gone")
                    continue
                if _identity(name, path) != recorded:
                    reasons.append(f"{said} changed since")
                    continue
                earlier = _owner(owned, path)
                if earlier is not None and earlier.state != CURRENT:
                    why = f"the {earlier.stage} output {earlier.output} is {earlier.state}"
                    if why not in reasons:  # once, however many of its files were read
                        reasons.append(why)
            state = OUT_OF_DATE if reasons else CURRENT
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime(found.record.stat().st_mtime))
        command = None
        if state in (OUT_OF_DATE, NO_OUTPUT):
            command = _command(stage, str(run), saved)
        elif state == UNFINISHED:
            command = _command(stage, str(run), saved).removesuffix(" --overwrite")
        out = Output(stage, _relative(rp, found.output), state, reasons, unchecked, made, command)
        outputs.append(out)
        for path in (*found.owns, found.record):
            owned[path.resolve()] = out
    return RunStatus(str(run), outputs)


def format_status(st: RunStatus) -> str:
    if not st.outputs:
        return f"{st.run}: no stage has run here yet (start with `saescope corpus --run {st.run}`)"
    width = max(len(o.output) for o in st.outputs)
    stage_w = max(len(o.stage) for o in st.outputs)
    bad = [o for o in st.outputs if o.state != CURRENT]
    head = f"{st.run}: {len(st.outputs)} outputs"
    lines = [head + (", all current" if not bad else f", {len(bad)} not current")]
    for o in st.outputs:
        lines.append(f"  {o.stage:<{stage_w}}  {o.output:<{width}}  {o.made}  {o.state}")
        for why in o.reasons:
            lines.append(f"  {'':<{stage_w}}    {why}")
        if o.command:
            lines.append(f"  {'':<{stage_w}}    re-make: {o.command}")
    return "\n".join(lines)


def main(ns: argparse.Namespace) -> int:
    st = status(ns.run)
    if ns.json:
        print(json.dumps(dataclasses.asdict(st) | {"ok": st.ok}, indent=2))
    else:
        print(format_status(st))
    return 1 if ns.check and not st.ok else 0
