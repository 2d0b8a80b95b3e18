"""Random access to a latent cache by store row, for pages that show a few rows at a time.

In: a finished `LatentCache`. Out: `LatentRows.values(feature, rows)`, one feature's
activation at any store rows (0 where it is inactive; rows -1 are "not a row").

The latents stage writes each shard as safetensors arrays `rows` (int64, sorted),
`features` and `values`, and the manifest gives each shard's row range. The arrays
are memory-mapped here (the safetensors header says where each one starts), so a
lookup is two binary searches on the mapped `rows` of one shard and a read of the
few triples between them: no shard is loaded, nothing is scanned per request, and
memory does not grow with the cache.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from saescope.errors import SaescopeError
from saescope.examples.tokens import values_at

if TYPE_CHECKING:
    from saescope.latents import LatentCache

# safetensors dtype names -> numpy (the latent cache uses the first three)
_DTYPES = {"I64": np.int64, "I32": np.int32, "F32": np.float32, "F16": np.float16, "I16": np.int16}


def map_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only numpy memmap."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise SaescopeError(f"{path}: tensor {name!r} has dtype {info['dtype']}, not readable")
        lo, hi = info["data_offsets"]
        count = (hi - lo) // np.dtype(dtype).itemsize
        if count == 0:
            out[name] = np.empty(info["shape"], dtype)
            continue
        out[name] = np.memmap(path, dtype, mode="r", offset=base + lo, shape=(count,))
    return out


class LatentRows:
    """One feature's activations at given store rows, read from the mapped shards."""

    def __init__(self, cache: LatentCache) -> None:
        self.dir = cache.dir
        self.shards = cache.shards
        self.stops = np.array([s["stop"] for s in cache.shards], dtype=np.int64)
        self.n_rows = cache.n_rows
        self._maps: dict[int, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def _shard(self, i: int) -> dict[str, np.ndarray]:
        with self._lock:
            if i not in self._maps:
                self._maps[i] = map_safetensors(self.dir / self.shards[i]["file"])
            return self._maps[i]

    def column(self, feature: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64 ascending, values float32) where `feature` is active in rows [lo, hi]."""
        out_r, out_v = [], []
        first = int(np.searchsorted(self.stops, lo, side="right"))
        for i in range(first, len(self.shards)):
            if self.shards[i]["start"] > hi:
                break
            m = self._shard(i)
            rows = m["rows"]
            a = int(np.searchsorted(rows, lo, side="left"))
            b = int(np.searchsorted(rows, hi, side="right"))
            hit = np.asarray(m["features"][a:b]) == feature
            out_r.append(np.asarray(rows[a:b])[hit].astype(np.int64))
            out_v.append(np.asarray(m["values"][a:b])[hit].astype(np.float32))
        if not out_r:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        return np.concatenate(out_r), np.concatenate(out_v)

    def values(self, feature: int, rows: list[int] | np.ndarray) -> np.ndarray:
        """(len(rows),) float32: `feature`'s activation at each row (0: inactive, or row -1)."""
        arr = np.asarray(rows, dtype=np.int64)
        valid = arr[(arr >= 0) & (arr < self.n_rows)]
        if not len(valid):
            return np.zeros(len(arr), np.float32)
        column = self.column(feature, int(valid.min()), int(valid.max()))
        return values_at(column, cast(Sequence[int], arr))
