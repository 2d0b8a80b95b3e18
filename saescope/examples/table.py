"""The example columns of `latents/features.parquet`, from the sparse shards in bounded memory.

In: a source of the cache's (row, feature, value) triples in row order, each
feature's count, the `ExampleOptions`. Out: `ExampleSets`, per feature the top,
quantile and random rows that `Examples.of(f, "all", opts)` picks (both call
`select.pick` on the feature's rows; no hard rows here), plus activation histograms
of a few features for the plots.

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
from saescope.examples.select import NOTHING_PICKED, ExampleOptions, Picked, pick


@dataclass(frozen=True)
class ExampleSets:
    """Per-feature examples (index = feature id); dead features have empty arrays."""

    picked: list[Picked]  # (d_sae,) what `pick` chose for each feature
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
    opts: ExampleOptions,
    *,
    max_nnz: int,
    hist_features: Iterable[int] = (),
    hist_bins: int = 40,
    spill_dir: Path | None = None,
) -> ExampleSets:
    """Top, quantile-binned and random non-activating rows of every feature (half "all").

    Each feature draws from its own generator seeded by (seed, feature), so results do
    not depend on how features are grouped into blocks.
    """
    d_sae = len(counts)
    picked = [NOTHING_PICKED] * d_sae
    hist_set = set(int(f) for f in hist_features)
    hists: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if d_sae == 0 or counts.sum() == 0:
        return ExampleSets(picked, hists)
    blocks = feature_blocks(counts, max_nnz)
    for (lo, hi), (rows, feats, vals) in zip(
        blocks, block_triples(source, blocks, max_nnz, spill_dir), strict=True
    ):
        if len(rows) == 0:
            continue
        # by feature, and each feature's rows ascending (as `pick` takes them)
        order = np.lexsort((rows, feats))
        rows, feats, vals = rows[order], feats[order], vals[order]
        bounds = np.searchsorted(feats, np.arange(lo, hi + 1))
        for f in range(lo, hi):
            s, e = bounds[f - lo], bounds[f - lo + 1]
            if s == e:
                continue
            r, v = rows[s:e], vals[s:e]
            picked[f] = pick(r, v, n_rows, opts, f)
            if f in hist_set:
                hists[f] = np.histogram(v, bins=hist_bins, range=(0.0, float(v.max())))
    return ExampleSets(picked, hists)
