"""The per-feature tables a served run answers from, built once at start-up.

In: `latents/features.parquet` (read with pyarrow: the list columns become one flat
array and offsets each, so one feature's examples are two slices, not a pandas row),
the run's names (`load_annotations`) and families. Out: `FeatureTable`, whose
`query()` filters, sorts and pages the feature browser, and whose `row(f)` is a
features.parquet row as a dict for `from_features_row` and `logit_lens`.

Nothing here scans the latent cache: a request costs a few array look-ups (a
feature page) or one pass over `d_sae` precomputed strings and numbers (a query).
Sort orders are computed on first use and kept.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from saescope.errors import SaescopeError
from saescope.io import read_table
from saescope.report.data import Annotations

SORT_KEYS = ("density", "max_act", "count", "mean_active_act", "id")
DEAD_FILTERS = ("alive", "dead", "all")
_ID_TERM = re.compile(r"^#?(\d+)$")


class _Lists:
    """A list column of a parquet table as one flat array and offsets."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        arr = column.combine_chunks()
        self.offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        values = arr.flatten()
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            self.values = np.asarray(values.to_pylist(), dtype=object)
        else:
            self.values = values.to_numpy(zero_copy_only=False)

    def __call__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]


@dataclass(frozen=True)
class Page:
    """One page of the feature browser."""

    total: int  # features that match the query
    offset: int
    ids: list[int]  # the features of this page, in order


class FeatureTable:
    """features.parquet held as arrays (see the module docstring)."""

    SCALARS = ("count", "density", "log10_density", "max_act", "mean_act", "mean_active_act")

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise SaescopeError(f"no feature table at {path}; run `saescope latents` first")
        t = read_table(path)
        feature = t["feature"].to_numpy()
        if not np.array_equal(feature, np.arange(len(feature))):
            raise SaescopeError(f"{path} does not list features 0..n-1 in order; re-run latents")
        self.d_sae = len(feature)
        self.num = {
            name: t[name].to_numpy(zero_copy_only=False).astype(np.float64) for name in self.SCALARS
        }
        self.dead = t["dead"].to_numpy(zero_copy_only=False).astype(bool)
        self.lists = {
            name: _Lists(t[name])
            for name in t.column_names
            if pa.types.is_list(t.schema.field(name).type)
        }
        self.scores: dict[str, np.ndarray] = {}  # scorer -> (d_sae,) score, NaN where none
        self.text = np.full(self.d_sae, "", dtype=object)  # lowercased searchable text
        self.family_members: dict[int, np.ndarray] = {}  # family -> its features
        self._orders: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def row(self, f: int) -> dict[str, Any]:
        """Feature f as a features.parquet row (scalars and list columns)."""
        out: dict[str, Any] = {"feature": f, "dead": bool(self.dead[f])}
        out |= {k: v[f] for k, v in self.num.items()}
        out |= {k: lst(f) for k, lst in self.lists.items()}
        return out

    def set_scores(self, ann: Annotations) -> None:
        for scorer, by_feature in ann.scores.items():
            col = np.full(self.d_sae, np.nan)
            for f, s in by_feature.items():
                if 0 <= f < self.d_sae:
                    col[f] = s["score"]
            self.scores[scorer] = col

    def set_text(self, text: list[str]) -> None:
        self.text = np.asarray([t.lower() for t in text], dtype=object)

    # --- the browser's query --------------------------------------------------------

    def order(self, key: str, descending: bool = True) -> np.ndarray:
        """Feature ids sorted by `key` (features without a value last), ties by id."""
        name = f"{key}|{'desc' if descending else 'asc'}"
        with self._lock:
            if name not in self._orders:
                if key == "id":
                    values = np.arange(self.d_sae, dtype=np.float64)
                elif key.startswith("score:"):
                    values = self.scores[key[6:]]
                else:
                    values = self.num[key]
                signed = -values if descending else values
                filled = np.where(np.isnan(signed), np.inf, signed)
                self._orders[name] = np.lexsort((np.arange(self.d_sae), filled))
            return self._orders[name]

    def check_sort(self, key: str) -> None:
        known = [*SORT_KEYS, *(f"score:{s}" for s in self.scores)]
        if key not in known:
            raise SaescopeError(f"unknown sort key {key!r}; choose one of {', '.join(known)}")

    def match(self, terms: list[str]) -> np.ndarray:
        """(d_sae,) bool: features whose id or searchable text matches every term."""
        keep = np.ones(self.d_sae, dtype=bool)
        for term in terms:
            m = _ID_TERM.match(term)
            by_text = np.fromiter(
                (term in s for s in self.text), dtype=bool, count=self.d_sae
            ) if not term.startswith("#") else np.zeros(self.d_sae, bool)  # fmt: skip
            if m and int(m.group(1)) < self.d_sae:
                by_text[int(m.group(1))] = True
            keep &= by_text
        return keep

    def query(
        self,
        q: str = "",
        sort: str = "density",
        descending: bool = True,
        dead: str = "alive",
        scorer: str | None = None,
        score_min: float | None = None,
        score_max: float | None = None,
        family: int | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> Page:
        """Features matching the filters, sorted, one page of them."""
        self.check_sort(sort)
        if dead not in DEAD_FILTERS:
            raise SaescopeError(f"unknown dead filter {dead!r}; choose {', '.join(DEAD_FILTERS)}")
        keep = self.match(q.lower().split()) if q.strip() else np.ones(self.d_sae, bool)
        if dead == "alive":
            keep &= ~self.dead
        elif dead == "dead":
            keep &= self.dead
        if score_min is not None or score_max is not None or scorer is not None:
            if scorer is None:
                raise SaescopeError("a score range needs a scorer (scorer=...)")
            if scorer not in self.scores:
                have = ", ".join(self.scores) or "none: run `saescope score`"
                raise SaescopeError(f"no scores of {scorer!r} for this run (scorers: {have})")
            s = self.scores[scorer]
            with np.errstate(invalid="ignore"):
                keep &= ~np.isnan(s)
                if score_min is not None:
                    keep &= s >= score_min
                if score_max is not None:
                    keep &= s <= score_max
        if family is not None:
            if family not in self.family_members:
                raise SaescopeError(f"no family {family} in this run")
            in_family = np.zeros(self.d_sae, bool)
            in_family[self.family_members[family]] = True
            keep &= in_family
        order = self.order(sort, descending)
        hits = order[keep[order]]
        return Page(len(hits), offset, hits[offset : offset + limit].tolist())


def finite(x: Any) -> float | None:
    """A float for JSON: None for NaN and infinities."""
    x = float(x)
    return x if math.isfinite(x) else None
