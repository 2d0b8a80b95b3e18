"""Every feature's activation histogram, from one pass over the latent cache.

In: a `LatentCache` and each feature's largest activation (`max_act` of
`latents/features.parquet`). Out: `Histograms`: per feature the counts of its
non-zero activations in `N_BINS` equal bins of [0, max_act].

One pass over the sparse shards fills a (d_sae, N_BINS) table with a single
`bincount` per shard (no per-feature loop). A small cache is counted before the
server answers; a large one in a background thread, and until it is done a feature
page says its histogram is being counted. The table is 4 bytes x N_BINS a feature
(1.2 MB at 12,288 features).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from saescope.latents import LatentCache

N_BINS = 24
SYNC_MAX_NNZ = 4_000_000  # caches up to this many non-zeros are counted at start-up


def count_histograms(cache: LatentCache, max_act: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """(d_sae, n_bins) int32 counts of each feature's activations in bins of [0, max_act]."""
    d_sae = cache.d_sae
    scale = np.where(max_act > 0, n_bins / np.maximum(max_act, 1e-30), 0.0).astype(np.float32)
    total = np.zeros(d_sae * n_bins, np.int64)
    for rows, feats, vals in cache.triples():
        del rows
        f = feats.astype(np.int64)
        b = np.minimum((vals * scale[f]).astype(np.int64), n_bins - 1)
        total += np.bincount(f * n_bins + b, minlength=d_sae * n_bins)
    return total.reshape(d_sae, n_bins).astype(np.int32)


class Histograms:
    """The histograms of a run, counted now or in the background (see the module docstring)."""

    def __init__(self, cache: LatentCache, max_act: np.ndarray, n_bins: int = N_BINS) -> None:
        self.max_act = np.asarray(max_act, dtype=np.float64)
        self.n_bins = n_bins
        self.table: np.ndarray | None = None
        self.error: str | None = None
        self.seconds: float | None = None
        self._cache = cache
        if cache.nnz <= SYNC_MAX_NNZ:
            self._count()
        else:
            threading.Thread(target=self._count, name="saescope-histograms", daemon=True).start()

    def _count(self) -> None:
        t0 = time.perf_counter()
        try:
            self.table = count_histograms(self._cache, self.max_act.astype(np.float32), self.n_bins)
        except Exception as exc:  # a shard gone bad: pages say so instead of failing
            self.error = f"{type(exc).__name__}: {exc}"
        self.seconds = time.perf_counter() - t0

    @property
    def status(self) -> str:
        if self.table is not None:
            return "ready"
        return "failed" if self.error else "counting"

    def of(self, feature: int) -> dict[str, object] | None:
        """{edges, counts} of one feature (None while counting, or for a dead feature)."""
        if self.table is None or not self.max_act[feature] > 0:
            return None
        edges = np.linspace(0.0, float(self.max_act[feature]), self.n_bins + 1)
        return {
            "edges": edges.tolist(),
            "counts": self.table[feature].tolist(),
        }
