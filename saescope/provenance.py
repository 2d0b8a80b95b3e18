"""One provenance record per stage: what a stage's output was made from.

Every stage calls this module, and no stage decides on its own whether its output
is current. A record holds the stage's name, its config (as saved by
`config_to_dict`), the package version and the identity (sha256) of every
upstream artifact the stage read. It is written beside the output twice: with
status "running" before the first output file changes (`Record.start`), and
"complete" after the last (`Record.finish`). `Record.decide` compares the saved
record with the one a new call would write:

  same config, same upstream, complete        -> SKIP (the output is current)
  same config, same upstream, running         -> RESUME (continue the partial output)
                                                 (both with or without overwrite)
  anything differs, or no record but output   -> refused with a message that says
                                                 what changed, unless overwrite: FRESH
  nothing there                               -> FRESH

A refused call raises before touching anything, so finished output stays intact.

`run_lock` keeps two processes from writing one run directory at once: an
advisory `flock` on `<run>/.lock`, which the kernel drops when the holder exits
or is killed, so a lock is never stuck.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from saescope._version import __version__
from saescope.config import config_to_dict, field_default
from saescope.errors import DamagedFile, SaescopeError, describe
from saescope.io import damaged, read_json, sha256_file, sha256_text, write_json
from saescope.paths import MANIFEST

FORMAT = "saescope.provenance/1"
LOCK_FILE = ".lock"  # in the run directory (paths.py lists it)
F = TypeVar("F", bound=Callable[..., Any])


class Decision(enum.Enum):
    SKIP = "skip"  # the output is current: return it
    RESUME = "resume"  # a partial output made from the same inputs: continue it
    FRESH = "fresh"  # start over (the stage clears any old output first)


def artifact_id(path: Path) -> str:
    """Identity of an upstream artifact: the sha256 of the file (of a folder's manifest)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise SaescopeError(f"{path} is missing; run the stage that makes it first")
    return sha256_file(path)


def listing_id(folder: Path) -> str:
    """Identity of a folder of data files too large to hash: sha256 of its listing
    (relative name, size and modification time of every file below it)."""
    folder = Path(folder)
    lines = [
        f"{p.relative_to(folder)}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}"
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
    return sha256_text("\n".join(lines))


def upstream_ids(artifacts: Mapping[str, Path | None]) -> dict[str, str]:
    """name -> identity of every artifact that is not None (all must exist)."""
    return {name: artifact_id(p) for name, p in artifacts.items() if p is not None}


@dataclass(frozen=True)
class Record:
    """What one stage call reads (its options without execution-only ones, its inputs),
    and the file beside its output where that is recorded."""

    path: Path
    stage: str
    config: dict[str, Any]
    upstream: dict[str, str]
    # the options' default values (a config dataclass's), as saved: an option a record
    # from an older saescope lacks is unchanged when it is at its default now
    defaults: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def make(
        cls,
        path: Path,
        stage: str,
        config: Any,
        upstream: Mapping[str, str],
        ignore: tuple[str, ...] = (),
    ) -> Record:
        """`config`: the stage's config dataclass (or a dict of its fields)."""
        fields = config if isinstance(config, Mapping) else config_to_dict(config)
        skip = set(ignore) | {"saescope_version"}
        # through JSON so tuples, paths and the like compare as they are saved
        cfg = json.loads(
            json.dumps({k: v for k, v in fields.items() if k not in skip}, default=str)
        )
        defaults: dict[str, Any] = {}
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            for f in dataclasses.fields(config):
                default = field_default(f)
                if f.name in cfg and default is not dataclasses.MISSING:
                    defaults[f.name] = default
            defaults = json.loads(json.dumps(defaults, default=str))
        return cls(Path(path), stage, cfg, dict(upstream), defaults)

    def to_json(self, status: str, result: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "stage": self.stage,
            "status": status,
            "saescope_version": __version__,
            "config": self.config,
            "upstream": self.upstream,
            "result": dict(result or {}),
        }

    def changes(self, saved: Mapping[str, Any]) -> list[str]:
        """What differs between a saved record and this one, in words."""
        return self.option_changes(saved) + self.input_changes(saved)

    def option_changes(self, saved: Mapping[str, Any]) -> list[str]:
        """Options whose saved value differs from this call's. An option the saved record
        lacks (added to saescope since) is unchanged at its default, and one this call
        lacks (removed since) cannot be set any more: neither counts."""
        old_cfg = saved.get("config", {})
        missing = object()
        changed = []
        for key in sorted(set(old_cfg) | set(self.config)):
            if key not in self.config:
                continue
            before = old_cfg.get(key, missing)
            if before is missing and self.defaults.get(key, missing) == self.config[key]:
                continue
            if before != self.config[key]:
                shown = None if before is missing else before
                changed.append(f"option {key}: {shown!r} -> {self.config[key]!r}")
        return changed

    def input_changes(self, saved: Mapping[str, Any]) -> list[str]:
        out = []
        old_up = saved.get("upstream", {})
        for key in sorted(set(old_up) | set(self.upstream)):
            if key not in old_up:
                out.append(f"input {key}: not read before, read now")
            elif key not in self.upstream:
                out.append(f"input {key}: read before, not now")
            elif old_up[key] != self.upstream[key]:
                out.append(
                    f"input {key} changed since ({old_up[key][:12]} -> {self.upstream[key][:12]})"
                )
        return out

    def decide(
        self,
        overwrite: bool,
        output: Path,
        exists: bool | None = None,
        quiet: bool = False,
        whole: tuple[Path, ...] = (),
        damage: Callable[[], str | None] | None = None,
    ) -> Decision:
        """SKIP, RESUME or FRESH for this call; raises when it would replace other output.

        `output` names the stage's output in messages; `exists` says whether it is on
        disk now, finished or partial (default: whether `output` exists). A SKIP says so
        on stderr unless `quiet` (callers that may still redo the work say it themselves,
        with `up_to_date`, when they do skip). A finished output that is damaged (`output`
        a Parquet file cut short, a file of `whole` missing or cut short, or what the
        stage's own `damage()` check finds) is never "up to date": --overwrite makes it
        again (FRESH), else it is refused, named.
        """
        exists = Path(output).exists() if exists is None else exists
        saved = read_record(self.path)
        if not exists:  # nothing to protect (a record whose output was deleted included)
            return Decision.FRESH
        if saved is None:
            if not overwrite:
                raise SaescopeError(
                    f"{output} exists but has no provenance record ({self.path.name}): it was "
                    "made by an older saescope or by hand; pass --overwrite to replace it"
                )
            return Decision.FRESH
        changes = self.changes(saved)
        if changes:
            if overwrite:
                return Decision.FRESH
            elsewhere = "--out" if self.stage == "convert" else "--run"  # convert's own flag
            raise SaescopeError(
                f"{output} was made from other inputs or options: {'; '.join(changes)}. "
                f"Pass --overwrite to redo it, or use another {elsewhere}"
            )
        # same inputs and options: --overwrite has nothing different to replace
        if saved.get("status") != "complete":
            return Decision.RESUME
        output = Path(output)
        bad = damaged([output, *whole] if output.suffix == ".parquet" else list(whole))
        if bad is None and damage is not None:
            bad = damage()
        if bad is not None:
            if overwrite:
                return Decision.FRESH
            raise DamagedFile(f"{bad}; pass --overwrite to make {output} again")
        if not quiet:
            self.up_to_date(output)
        return Decision.SKIP

    def up_to_date(self, output: Path) -> None:
        """Say on stderr that the stage keeps `output` (once, from rank 0 under torchrun)."""
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"{self.stage}: {output} is up to date (made from these options and inputs); "
                "kept as it is",
                file=sys.stderr,
            )

    def start(self) -> None:
        """Mark the output as being made from this record (before its first file changes)."""
        write_json(self.path, self.to_json("running"))

    def finish(self, result: Mapping[str, Any] | None = None) -> None:
        """Mark the output complete (after its last file is written); `result`: derived values."""
        write_json(self.path, self.to_json("complete", result))


def read_record(path: Path) -> dict[str, Any] | None:
    """A saved record, or None when there is none (or the file is not one)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = read_json(path)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("format") == FORMAT else None


def saved_upstream(path: Path) -> dict[str, str]:
    """The upstream identities a finished stage recorded ({} when there is no record)."""
    saved = read_record(path)
    return dict(saved.get("upstream", {})) if saved else {}


# --- one writer per run directory -------------------------------------------------

_held: dict[Path, tuple[int, int]] = {}  # run dir -> (fd, depth): re-entrant in one process


@contextlib.contextmanager
def run_lock(run: str | Path, stage: str) -> Iterator[None]:
    """Hold the run directory's writer lock for `stage`; fail at once if another process has it."""
    root = Path(run).resolve()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes files
        yield
        return
    if root in _held:
        fd, depth = _held[root]
        _held[root] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[root]
            _held[root] = (fd, depth - 1)
        return
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock rather than no saescope
        yield
        return
    if root.exists() and not root.is_dir():
        raise SaescopeError(f"--run {run} is a file, not a run directory; give a folder")
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:  # a read-only folder, a file on the way to it
        raise SaescopeError(
            f"cannot write the run directory {root} ({describe(exc)}); give a --run this "
            "user can write"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise SaescopeError(
            f"{root} is being written by {holder}; wait for it to finish (or stop it) "
            "before running another stage on this run directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"saescope {stage} (pid {os.getpid()}, since {time.ctime()})".encode(), 0)
    _held[root] = (fd, 1)
    try:
        yield
    finally:
        del _held[root]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock
        if created and [p.name for p in root.iterdir()] == [LOCK_FILE]:
            # a stage that failed at once (a mistyped --run) leaves no empty run behind
            with contextlib.suppress(OSError):
                (root / LOCK_FILE).unlink()
                root.rmdir()


def locked(stage: str) -> Callable[[F], F]:
    """Decorate a stage's `run(cfg, ...)` so that it holds `cfg.run`'s writer lock."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            with run_lock(cfg.run, stage):
                return fn(cfg, *args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
