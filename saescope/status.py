"""`saescope status`: what a run directory holds, and whether each output is current.

    saescope status --run runs/demo           one line per stage output, and what to re-run
    saescope status --run runs/demo --json    the same as JSON, for scripts
    saescope status --run runs/demo --check   exit 1 when an output is not current

In: the provenance record every stage writes beside its output (saescope/provenance.py).
Each output is one of:

    current      finished, and every input it recorded is as it was then
    out of date  finished, but an input changed or is gone since, an input it did not
                 read is there now, or an input was itself made from something that
                 changed (re-run the stage: the command is shown)
    unfinished   interrupted: re-running the same command resumes it
    being made   its stage holds the run's lock now
    no output    the record is there but the output was deleted
    no record    the output is there without a readable record (made by an older
                 saescope or by hand, or the record is damaged): nothing says what it
                 was made from
    damaged      a file of the output is missing, cut short or not readable (a store
                 or latent shard not at its recorded size, a Parquet file without its
                 footer): remove the output and re-run its stage

An input is checked when it is a file of the run, or a file an option names (a corpus
file, steering prompts, search queries: found from where `status` runs). What is not
(a built-in corpus, the report's page template, vector files imported into the store,
an SAE named on the hub) is listed as unchecked in --json. The re-make command holds
the options the record kept; execution-only ones (device, batch size, an LLM's API key
variable) are not recorded and not shown. A stage decides on its own output when it
runs; this command only reads.
Out: text or JSON on stdout; nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shlex
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saescope import provenance
from saescope.config import field_default
from saescope.errors import SaescopeError
from saescope.io import read_json
from saescope.paths import (
    CONVERT_RECORD,
    HUB_PREFIX,
    MANIFEST,
    NATIVE_SAE_WEIGHTS,
    PROVENANCE,
    RunPaths,
    SAEPaths,
)

CURRENT = "current"
OUT_OF_DATE = "out of date"
UNFINISHED = "unfinished"
BEING_MADE = "being made"
NO_OUTPUT = "no output"
NO_RECORD = "no record"
DAMAGED = "damaged"
# how a later output names an earlier one that is not current
_SAID = {
    OUT_OF_DATE: "is out of date",
    UNFINISHED: "is unfinished",
    BEING_MADE: "is being made",
    NO_OUTPUT: "was deleted",
    NO_RECORD: "has no record",
    DAMAGED: "is damaged",
}


@dataclass(frozen=True)
class Output:
    """One stage output of a run and what its record says about it."""

    stage: str
    output: str  # relative to the run
    state: str  # one of the states above
    reasons: list[str] = field(default_factory=list)  # why it is not current
    unchecked: list[str] = field(default_factory=list)  # recorded inputs status cannot check
    made: str | None = None  # when the record was last written (local time)
    command: str | None = None  # what re-makes it, when it is not current and one can


@dataclass(frozen=True)
class RunStatus:
    run: str
    outputs: list[Output]

    @property
    def ok(self) -> bool:
        return all(o.state == CURRENT for o in self.outputs)


@dataclass(frozen=True)
class _Found:
    """Where a stage keeps its record, the output the stage decides on, and the paths
    that output owns (what later stages read of it)."""

    stage: str
    record: Path
    output: Path
    owns: tuple[Path, ...]


def _found(rp: RunPaths) -> Iterator[_Found]:
    """Every place a stage output may be, in pipeline order."""
    yield _Found("corpus", rp.corpus_record, rp.corpus, (rp.corpus,))
    acts_stage = "acts" if rp.acts_tokens.exists() else "embed"
    yield _Found(acts_stage, rp.acts_record, rp.acts_manifest, (rp.acts,))
    folders = [rp.sae, *sorted(p for p in rp.root.glob("sae-*") if p.is_dir())]
    for f in map(SAEPaths, folders):
        converted = f.dir / CONVERT_RECORD
        if converted.exists():  # an SAE brought in by `saescope convert --out`
            yield _Found("convert", converted, f.dir, (f.dir,))
        else:
            yield _Found("train", f.train_record, f.weights, (f.weights, f.config))
    for f in map(SAEPaths, folders):
        yield _Found("eval", f.eval_record, f.metrics, (f.metrics,))
    yield _Found("latents", rp.latents_record, rp.latents_manifest, (rp.latents,))
    yield _Found("keywords", rp.keywords_record, rp.keywords, (rp.keywords,))
    yield _Found("explain", rp.explanations_record, rp.explanations, (rp.explanations,))
    for record in sorted(rp.scores.glob(f"*.{PROVENANCE}")):
        key = record.name.removesuffix(f".{PROVENANCE}")
        owns = (rp.score(key), rp.score_summary(key), rp.score_plot(key), rp.score_results(key))
        yield _Found("score", record, rp.score(key), owns)
    yield _Found("families", rp.families_record, rp.families_table, (rp.families,))
    for kind in ("exact", "ivf"):
        index = rp.index_dir(kind)
        yield _Found("index", rp.index_record(kind), rp.index_manifest(kind), (index,))
    searched = (rp.search_eval, rp.search_eval_summary, rp.search_eval_plot)
    yield _Found("search-eval", rp.search_eval_record, rp.search_eval, searched)
    yield _Found("steer", rp.steer_record, rp.steer_summary, (rp.steer,))
    yield _Found("report", rp.report_record, rp.report_index, (rp.report,))


def _cache_sae(rp: RunPaths) -> Path:
    """The SAE folder the latent cache was encoded with (the run's sae/ without a cache)."""
    try:
        return rp.root / read_json(rp.latents_manifest)["source"]["sae_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return rp.sae


def _sae_weights(folder: Path) -> Path:
    """The weights file of the SAE in `folder` (a path that does not exist when the
    folder holds no SAE any more)."""
    from saescope.sae.formats import detect_format

    try:
        return detect_format(folder).weights
    except SaescopeError:
        return folder / NATIVE_SAE_WEIGHTS


def _option_path(value: Any) -> Path | None:
    """A file or folder an option named, from where status runs (the stage may have run
    elsewhere: a path that does not exist from here is not checked)."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value.removeprefix("hf:"))
    return path if path.exists() else None


def _input_path(rp: RunPaths, stage: str, found: _Found, cfg: Mapping, name: str) -> Path | None:
    """The path a recorded input name stands for now, or None when it cannot be checked."""
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
    if stage == "report":  # the report names its inputs by their path in the run
        if name == "page template":
            return None
        return Path(name) if Path(name).is_absolute() else rp.root / name
    if name in fixed:
        return fixed[name]
    if name == "sae":
        if stage in ("train", "eval"):
            return _sae_weights(found.record.parent)  # the SAE of their own folder
        if cfg.get("sae"):
            if str(cfg["sae"]).startswith(HUB_PREFIX):  # status reads; it fetches nothing
                return None
            return _sae_weights(rp.sae_folder(cfg["sae"]))
        return _sae_weights(rp.sae if cfg.get("activations") == "store" else _cache_sae(rp))
    if name == "index" and isinstance(cfg.get("index"), str):
        return rp.index_manifest(cfg["index"])
    if name.startswith("split_sae:"):
        return rp.sae_folder(name.removeprefix("split_sae:"))
    if name in ("source", "prompts", "queries"):
        return _option_path(cfg.get(name))
    if stage == "convert":  # the source's files, by name
        src = _option_path(cfg.get("src"))
        if src is None or str(cfg.get("src")).startswith(HUB_PREFIX):
            return None
        folder = src / cfg["hookpoint"] if cfg.get("hookpoint") else src
        return folder if folder.is_file() else folder / name
    return None


def _identity(name: str, path: Path) -> str:
    if name.startswith("split_sae:"):
        from saescope.families.splits import weights_id

        return weights_id(path)
    if path.is_dir() and not (path / MANIFEST).exists():
        return provenance.listing_id(path)  # a corpus read from a dataset folder
    return provenance.artifact_id(path)


def _not_read(rp: RunPaths, stage: str, upstream: Mapping[str, str]) -> list[str]:
    """Inputs a stage reads when they are there, which are there now but were not read
    when it ran (names made after the families, scores made after the report...)."""
    if stage == "families":
        there = {"keywords": rp.keywords, "explanations": rp.explanations}
        return [
            f"input {name} ({_relative(rp, p)}) is there now, and was not read"
            for name, p in there.items()
            if p.exists() and name not in upstream
        ]
    if stage == "report" and rp.latents_manifest.exists():
        from saescope.report.stage import page_inputs

        now = page_inputs(rp, _cache_sae(rp))
        new = sorted(set(now) - set(upstream))
        return [f"input {name} is there now, and was not read" for name in new]
    return []


def _lock_holder(rp: RunPaths) -> str | None:
    """What holds the run's writer lock now ("saescope latents (pid ...)"), or None."""
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


def _holds(holder: str | None, stage: str) -> bool:
    """Whether the lock's holder is making `stage` (itself, or the demo's whole chain)."""
    return holder is not None and holder.startswith((f"saescope {stage} ", "saescope demo "))


def _extra_options(rp: RunPaths, stage: str, found: _Found, cfg: Mapping) -> dict[str, Any]:
    """Options the record leaves out, or holds as the value they gave, that the command
    needs to make the same output."""
    if stage == "latents":  # the SAE is recorded by its weights; the cache's config names it
        try:
            given = read_json(rp.latents_config).get("sae")
        except (OSError, ValueError, AttributeError):
            given = None
        sae = given or _relative(rp, _cache_sae(rp))
        return {"sae": None if sae == "sae" else sae}  # the run's sae/ is the default
    if stage == "eval":  # the fraction used; the default takes the SAE's own again
        try:
            trained = read_json(SAEPaths(found.record.parent).config)["training"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        if trained.get("eval_fraction") == cfg.get("eval_fraction"):
            return {"eval_fraction": None}
    return {}


def _command(rp: RunPaths, run: str, stage: str, found: _Found, saved: Mapping) -> str | None:
    """The command that makes an output again: the stage with the options it recorded that
    differ from today's defaults; None for a store filled by imported vector files."""
    from saescope.cli import STAGES

    cfg = saved.get("config") or {}
    upstream = saved.get("upstream") or {}
    if any(str(name).startswith("vectors ") for name in upstream) or cfg.get("vectors"):
        return None  # one `embed --vectors FILE` per import, as they were appended
    words = ["saescope", stage] if stage == "convert" else ["saescope", stage, "--run", run]
    spec = STAGES.get(stage)
    if spec is None:
        return shlex.join(words)
    cls = getattr(importlib.import_module(spec.options), spec.config)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = dict(cfg) | _extra_options(rp, stage, found, cfg)
    for key, value in values.items():
        f = fields.get(key)
        # what a flag cannot say (no value, an empty list, a mapping) is left to the default
        if f is None or key == "run" or value is None or value == [] or isinstance(value, dict):
            continue
        if value == json.loads(json.dumps(field_default(f), default=str)):
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
    """The earlier output that `path` is (part of), if any: the one that owns it most
    narrowly (sae/metrics.json is eval's, though a converted sae/ folder holds it)."""
    path = path.resolve()
    hits = [root for root in owned if path == root or root in path.parents]
    return owned[max(hits, key=lambda root: len(root.parts))] if hits else None


def _input_reasons(
    rp: RunPaths, found: _Found, saved: Mapping, owned: dict[Path, Output]
) -> tuple[list[str], list[str]]:
    """(why a finished output is out of date, the inputs that could not be checked)."""
    stage = found.stage
    cfg = saved.get("config") or {}
    upstream = saved.get("upstream") or {}
    reasons: list[str] = []
    unchecked: list[str] = []
    for name, recorded in sorted(upstream.items()):
        path = _input_path(rp, stage, found, cfg, name)
        if path is None:
            unchecked.append(name)
            continue
        shown = _relative(rp, path)
        said = f"input {name}" + (f" ({shown})" if shown != name else "")
        if not path.exists():
            reasons.append(f"{said} is gone")
        elif _identity(name, path) != recorded:
            reasons.append(f"{said} changed since")
        else:
            earlier = _owner(owned, path)
            if earlier is not None and earlier.state != CURRENT:
                why = f"the {earlier.stage} output {earlier.output} {_SAID[earlier.state]}"
                if why not in reasons:  # once, however many of its files were read
                    reasons.append(why)
    return reasons + _not_read(rp, stage, upstream), unchecked


def _damage(rp: RunPaths, found: _Found) -> str | None:
    """What is wrong with a finished output's own files, or None (sizes and footers
    only: cheap, no checksums)."""
    from saescope.io import damaged

    try:
        if found.stage in ("embed", "acts"):
            from saescope.store import store_damage

            bad = store_damage(rp.acts)
            if bad is not None:
                return bad
        elif found.stage == "latents":
            from saescope.latents import cache_damage

            bad = cache_damage(rp)
            if bad is not None:
                return bad
        tables = [
            p for own in found.owns for p in ([own] if own.is_file() else own.rglob("*.parquet"))
        ]
        return damaged([p for p in tables if p.suffix == ".parquet"])
    except SaescopeError as exc:
        return str(exc)
    except (KeyError, TypeError) as exc:
        return f"{_relative(rp, found.output)} does not list its files ({exc!r})"


def _made(path: Path) -> str | None:
    if not path.exists():
        return None
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))


def _one(
    rp: RunPaths, run: str, found: _Found, holder: str | None, owned: dict[Path, Output]
) -> Output | None:
    """The state of one place a stage output may be (None: the stage has not run)."""
    saved = provenance.read_record(found.record)
    if saved is not None and not isinstance(saved.get("upstream") or {}, dict):
        saved = None  # a damaged record says nothing it can be held to
    stage = str(saved.get("stage", found.stage)) if saved else found.stage
    output = _relative(rp, found.output)
    if saved is None:
        if not found.output.exists():
            return None  # the stage has not run
        why = (
            f"{output} is there without a readable record ({_relative(rp, found.record)}): "
            "made by an older saescope or by hand, or the record is damaged"
        )
        again = shlex.join(["saescope", stage, "--run", run, "--overwrite"])
        if stage == "report":  # a view: re-made without --overwrite
            again = again.removesuffix(" --overwrite")
        return Output(stage, output, NO_RECORD, [why], [], _made(found.output), again)
    made = _made(found.record)
    if saved.get("status") != "complete":
        if _holds(holder, stage):
            return Output(stage, output, BEING_MADE, [f"{holder} holds the run"], [], made)
        same = _command(rp, run, stage, found, saved)
        resume = same.removesuffix(" --overwrite") if same else None
        why = "interrupted; the same command resumes it"
        return Output(stage, output, UNFINISHED, [why], [], made, resume)
    damage = _damage(rp, found) if found.output.exists() else None
    unchecked: list[str] = []
    if damage is not None:
        state, reasons = DAMAGED, [damage]
    elif found.output.exists():
        reasons, unchecked = _input_reasons(rp, found, saved, owned)
        state = OUT_OF_DATE if reasons else CURRENT
    else:
        state, reasons = NO_OUTPUT, [f"{output} was deleted"]
    if state == CURRENT:
        return Output(stage, output, CURRENT, [], unchecked, made)
    command = _command(rp, run, stage, found, saved)
    if command is None:
        reasons.append("the store was filled by imports: run each `embed --vectors` again")
    return Output(stage, output, state, reasons, unchecked, made, command)


def status(run: str | Path) -> RunStatus:
    """The state of every stage output of `run` (see the module docstring)."""
    rp = RunPaths(run)
    if not rp.root.is_dir():
        what = "a file" if rp.root.exists() else "not there"
        raise SaescopeError(f"{rp.root} is not a run directory (it is {what})")
    holder = _lock_holder(rp)
    outputs: list[Output] = []
    owned: dict[Path, Output] = {}  # path -> the earlier output it belongs to
    for found in _found(rp):
        out = _one(rp, str(run), found, holder, owned)
        if out is None:
            continue
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
