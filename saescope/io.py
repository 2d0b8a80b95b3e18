"""Atomic writes and small file helpers shared by every stage.

Every file a stage writes goes through `atomic_path`: the data is written to a
temporary file in the same folder and renamed over the target, so a crash never
leaves a half-written artifact under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saescope.errors import DamagedFile, SaescopeError, describe


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files, and some writers (safetensors) make their own: give
        # the artifact the usual umask-based mode, so a shared run directory stays readable
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def json_safe(data: Any) -> Any:
    """`data` with every NaN or infinite float (in dicts, lists, tuples) replaced by None.

    json.dumps would write them as bare NaN / Infinity, which is not JSON: strict parsers
    (browsers, jq, most languages) reject the whole file.
    """
    if type(data).__module__ == "numpy" and getattr(data, "ndim", None) == 0:
        data = data.item()  # a numpy scalar (float32 NaN included) as its Python value
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically (non-finite floats as null)."""
    text = json.dumps(json_safe(data), indent=2, sort_keys=False, default=str, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


_REMAKE = "remove it (or the output it belongs to) and re-run the stage that made it"


def read_json(path: Path) -> Any:
    """The JSON file at `path`; a file that is not JSON (cut short, altered) is named."""
    data = Path(path).read_bytes()
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedFile(f"{path} is not valid JSON ({exc}); {_REMAKE}") from exc


def read_table(path: Path, columns: list[str] | None = None) -> Any:
    """The Parquet file at `path` as a pyarrow Table; a damaged file is named (pyarrow's
    own error does not say which file). A missing file raises FileNotFoundError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        if Path(path).is_file() and not parquet_whole(path):
            raise DamagedFile(f"cannot read {path} ({describe(exc)}); {_REMAKE}") from exc
        # a whole file that does not hold what is asked (a column of a newer saescope),
        # or one this user may not read: not damage, so nothing to remove
        raise SaescopeError(f"cannot read {path}: {describe(exc)}") from exc


def parquet_whole(path: Path) -> bool:
    """Whether a Parquet file has its magic bytes at both ends (a file cut short loses
    its footer): a check cheap enough for every "up to date"."""
    path = Path(path)
    size = path.stat().st_size
    if size < 12:
        return False
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(size - 4)
        return head == b"PAR1" and f.read(4) == b"PAR1"


def damaged(paths: Iterator[Path] | list[Path] | tuple[Path, ...]) -> str | None:
    """What is wrong with the first of these output files that is missing or, for a
    Parquet file, cut short (no footer); None when all are there and whole."""
    for p in map(Path, paths):
        if not p.exists():
            return f"{p} is missing"
        if p.suffix == ".parquet" and p.is_file() and not parquet_whole(p):
            return f"{p} is cut short or altered (not a whole Parquet file)"
    return None


def read_frame(path: Path, columns: list[str] | None = None) -> Any:
    """The Parquet file at `path` as a pandas DataFrame (see `read_table`)."""
    return read_table(path, columns).to_pandas()


def read_finished_manifest(
    path: Path, fmt: str, what: str, missing: str, finish: str
) -> dict[str, Any]:
    """The JSON manifest at `path` of a finished `what` (e.g. "activation store").

    Raises `SaescopeError` with the message `missing` when there is no such file, and
    when the file has another format or describes unfinished work (`finish` tells the
    user how to finish it).
    """
    if not path.exists():
        raise SaescopeError(missing)
    m = read_json(path)
    if m.get("format") != fmt:
        raise SaescopeError(f"{path} is not a saescope {what} manifest")
    if not m.get("complete"):
        so_far = f" ({m['count']} rows so far)" if "count" in m else ""
        raise SaescopeError(f"the {what} at {path.parent} is incomplete{so_far}; {finish}")
    return m


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
