"""The example columns of `latents/features.parquet`, from the sparse shards in bounded memory.

In: a source of the cache's (row, feature, value) triples in row order, each
feature's count, the sampling options. Out: `ExampleSets`, per feature the quantile
examples and random non-activating rows that `Examples.of(f, "all", opts)` would
pick (the same rules: `quantile_pick`, `random_inactive`), plus activation
histograms of a few features for the plots.

Features are cut into blocks of at most `max_nnz` non-zeros. The shards are read
once: each shard's triples are sent to their block, and blocks are written to
temporary files (under `spill_dir`) whenever more than `max_nnz` triples wait in
memory. Then each block is read back, sorted and sampled. So the shards are read
once and the triples written and read once more, whatever the number of rows, and
memory holds at most about two blocks' worth of triples (16 bytes each). With a
single block nothing is written to disk.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saescope.examples.activations import TripleSource
from saescope.examples.select import quantile_pick, random_inactive


@dataclass(frozen=True)
class ExampleSets:
    """Per-feature example lists (index = feature id); dead features have empty arrays."""

    quantile_rows: list[np.ndarray]  # int64, grouped by bin ascending, activation ascending
    quantile_acts: list[np.ndarray]  # float32
    quantile_bins: list[np.ndarray]  # int16, 0 = lowest activations
    random_rows: list[np.ndarray]  # int64, rows where the feature is 0
    hists: dict[int, tuple[np.ndarray, np.ndarray]]  # feature -> (counts, bin edges)


def feature_blocks(counts: np.ndarray, max_nnz: int) -> list[tuple[int, int]]:
    """Split [0, d_sae) into feature ranges holding at most max_nnz non-zeros (one feature at least)."""
    blocks, lo, acc = [], 0, 0
    for f, c in enumerate(counts.tolist()):
        if acc and acc + c > max_nnz:
            blocks.append((lo, f))
            lo, acc = f, 0
        acc += c
    blocks.append((lo, len(counts)))
    return blocks


Triples = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows int64, features int32, values float32
_DTYPES = (np.int64, np.int32, np.float32)


def _concat(parts: list[Triples]) -> Triples:
    if not parts:
        return tuple(np.empty(0, t) for t in _DTYPES)  # type: ignore[return-value]
    return tuple(np.concatenate([p[i] for p in parts]).astype(_DTYPES[i]) for i in range(3))  # type: ignore[return-value]


def block_triples(
    source: TripleSource, blocks: list[tuple[int, int]], max_nnz: int, spill_dir: Path | None
) -> Iterator[Triples]:
    """The triples of each block of features in turn (row order within a block), one read of `source`."""
    block_of = np.repeat(np.arange(len(blocks)), [hi - lo for lo, hi in blocks])  # (d_sae,)
    block_of = block_of.astype(np.int16 if len(blocks) < 2**15 else np.int64)
    pending: list[list[Triples]] = [[] for _ in blocks]
    if len(blocks) == 1:
        pending[0] = [(r, f, v) for r, f, v in source()]
        yield _concat(pending[0])
        return
    with tempfile.TemporaryDirectory(dir=spill_dir, prefix=".examples-") as tmp:
        files = [[Path(tmp) / f"{b}.{i}" for i in range(3)] for b in range(len(blocks))]

        def flush() -> None:
            for b, parts in enumerate(pending):
                if parts:
                    for arr, path in zip(_concat(parts), files[b], strict=True):
                        with open(path, "ab") as fh:
                            arr.tofile(fh)
                    pending[b] = []

        waiting = 0
        for rows, feats, vals in source():
            if not len(rows):
                continue
            blk = block_of[feats]  # (nnz,) block of each triple
            order = np.argsort(blk, kind="stable")  # by block, row order kept
            bounds = np.searchsorted(blk[order], np.arange(len(blocks) + 1))
            for i in np.flatnonzero(np.diff(bounds)).tolist():
                sel = order[bounds[i] : bounds[i + 1]]
                pending[i].append((rows[sel], feats[sel], vals[sel]))
            waiting += len(rows)
            if waiting >= max_nnz:
                flush()
                waiting = 0
        flush()
        for b in range(len(blocks)):
            if files[b][0].exists():
                yield tuple(np.fromfile(p, dtype=t) for p, t in zip(files[b], _DTYPES, strict=True))  # type: ignore[misc]
            else:
                yield _concat([])


def sample_table_examples(
    source: TripleSource,
    counts: np.ndarray,
    n_rows: int,
    *,
    n_quantiles: int,
    per_quantile: int,
    n_random: int,
    seed: int,
    max_nnz: int,
    hist_features: Iterable[int] = (),
    hist_bins: int = 40,
    spill_dir: Path | None = None,
) -> ExampleSets:
    """Quantile-binned examples and random non-activating rows for every feature (half "all").

    Each feature draws from its own generator seeded by (seed, feature), so results do
    not depend on how features are grouped into blocks.
    """
    d_sae = len(counts)
    empty_i, empty_f = np.empty(0, np.int64), np.empty(0, np.float32)
    q_rows, q_acts = [empty_i] * d_sae, [empty_f] * d_sae
    q_bins, rand = [np.empty(0, np.int16)] * d_sae, [empty_i] * d_sae
    hist_set = set(int(f) for f in hist_features)
    hists: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if d_sae == 0 or counts.sum() == 0:
        return ExampleSets(q_rows, q_acts, q_bins, rand, hists)
    blocks = feature_blocks(counts, max_nnz)
    for (lo, hi), (rows, feats, vals) in zip(
        blocks, block_triples(source, blocks, max_nnz, spill_dir), strict=True
    ):
        if len(rows) == 0:
            continue
        order = np.lexsort((rows, vals, feats))  # feature, then value asc, then row asc
        rows, feats, vals = rows[order], feats[order], vals[order]
        bounds = np.searchsorted(feats, np.arange(lo, hi + 1))
        for f in range(lo, hi):
            s, e = bounds[f - lo], bounds[f - lo + 1]
            if s == e:
                continue
            rng = np.random.default_rng([seed, f])
            r, v = rows[s:e], vals[s:e]
            pick, bins = quantile_pick(len(r), n_quantiles, per_quantile, rng)
            q_rows[f], q_acts[f], q_bins[f] = r[pick], v[pick], bins
            rand[f] = random_inactive(np.sort(r), n_rows, n_random, rng)
            if f in hist_set:
                hists[f] = np.histogram(v, bins=hist_bins, range=(0.0, float(v[-1])))
    return ExampleSets(q_rows, q_acts, q_bins, rand, hists)
