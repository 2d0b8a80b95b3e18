"""saescope.examples: the one place that picks a feature's rows, and the document split."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from saescope.examples import (
    Activations,
    ExampleOptions,
    Examples,
    csc_from_triples,
    from_features_row,
    make_split,
)
from saescope.examples.select import is_in
from saescope.examples.table import sample_table_examples
from saescope.store import split_mask

N_ROWS, D_SAE, ROWS_PER_DOC = 6000, 48, 12


def synthetic(seed: int = 0) -> tuple[np.ndarray, list]:
    """(dense codes (N_ROWS, D_SAE) with Zipf-like densities, triples in chunks of rows)."""
    rng = np.random.default_rng(seed)
    density = 0.3 / np.arange(1, D_SAE + 1) ** 0.8
    on = rng.random((N_ROWS, D_SAE)) < density
    dense = np.where(on, rng.lognormal(size=(N_ROWS, D_SAE)), 0).astype(np.float32)
    dense[:, -1] = 0  # one dead feature
    rows, feats = np.nonzero(dense)
    chunks = []
    for lo in range(0, N_ROWS, 700):
        m = (rows >= lo) & (rows < lo + 700)
        chunks.append((rows[m], feats[m].astype(np.int32), dense[rows[m], feats[m]]))
    return dense, chunks


@pytest.fixture(scope="module")
def data():
    dense, chunks = synthetic()
    acts = Activations(csc_from_triples(lambda: iter(chunks), N_ROWS, D_SAE), "test")
    docs = [f"doc-{i // ROWS_PER_DOC}" for i in range(N_ROWS)]
    return dense, chunks, acts, make_split(docs, N_ROWS, seed=1)


def test_csc_is_built_in_one_copy_and_equals_the_codes(data):
    dense, chunks, acts, _ = data
    np.testing.assert_array_equal(acts.codes.toarray(), dense)
    assert acts.codes.indices.dtype == np.int32 and acts.codes.data.dtype == np.float32
    for f in (0, 7, D_SAE - 1):
        rows, vals = acts.column(f)
        np.testing.assert_array_equal(rows, np.flatnonzero(dense[:, f]))
        np.testing.assert_array_equal(vals, dense[rows, f])
    assert acts.alive().tolist() == list(range(D_SAE - 1))


def test_document_split_keeps_documents_whole(data):
    *_, split = data
    assert split.kind == "doc"
    per_doc = split.scoring.reshape(-1, ROWS_PER_DOC)
    assert (per_doc.all(1) | ~per_doc.any(1)).all()  # every document in one half
    assert 0.4 < split.scoring.mean() < 0.6
    assert len(split.rows("naming")) + len(split.rows("scoring")) == N_ROWS
    # by row: the old split; rows without a document fall back to it
    by_row = split_mask(np.arange(N_ROWS), 0.5, 1)
    np.testing.assert_array_equal(make_split(None, N_ROWS, 1).scoring, by_row)
    docs: list[str | None] = [f"d{i // 5}" for i in range(N_ROWS)]
    docs[:100] = [None] * 100
    mixed = make_split(docs, N_ROWS, 1)
    np.testing.assert_array_equal(mixed.scoring[:100], by_row[:100])
    assert make_split([None] * N_ROWS, N_ROWS, 1).kind == "row"
    # another seed, another split
    assert (make_split([f"d{i}" for i in range(N_ROWS)], N_ROWS, 2).scoring != split.scoring).any()


def test_document_split_is_the_same_in_another_process():
    code = (
        "from saescope.examples import make_split;"
        "s = make_split(['a', 'b', 'c', 'news-17', 'x y'] * 3, 15, 1);"
        "print(''.join('1' if x else '0' for x in s.scoring))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    here = make_split(["a", "b", "c", "news-17", "x y"] * 3, 15, 1).scoring
    assert out == "".join("1" if x else "0" for x in here)


@pytest.mark.parametrize("half", ["naming", "scoring"])
def test_examples_of_a_half(data, half):
    dense, _, acts, split = data
    ex = Examples(acts, split)
    opts = ExampleOptions(n_top=15, n_quantiles=4, per_quantile=3, n_random=25, n_hard=10, seed=5)
    mine = split.scoring if half == "scoring" else ~split.scoring
    for f in range(D_SAE - 1):
        fe = ex.of(f, half, opts)
        col = dense[:, f]
        active = np.flatnonzero((col > 0) & mine)
        assert fe.n_active == len(active) and fe.half == half
        # top: the half's highest activations, ties to the smaller row
        want = active[np.lexsort((active, -col[active]))][:15]
        np.testing.assert_array_equal(fe.top_rows, want)
        np.testing.assert_array_equal(fe.top_acts, col[want])
        # quantiles: in the half, in their rank bins, at most per_quantile per bin
        assert mine[fe.quantile_rows].all()
        rank = {int(r): i for i, r in enumerate(active[np.lexsort((active, col[active]))])}
        assert [rank[int(r)] * 4 // len(active) for r in fe.quantile_rows] == list(fe.quantile_bins)
        assert np.bincount(fe.quantile_bins, minlength=4).max() <= 3
        # random and hard rows: in the half, inactive, distinct
        for rows in (fe.random_rows, fe.hard_rows):
            assert mine[rows].all() and (col[rows] == 0).all()
            assert len(set(rows.tolist())) == len(rows)
        assert len(fe.random_rows) == 25
        # hard rows are active on one of the feature's co-occurring features
        nb = ex.neighbours(opts.n_neighbours)[f]
        nb = nb[nb >= 0]
        assert len(fe.hard_rows) == 10 and (dense[np.ix_(fe.hard_rows, nb)] > 0).any(1).all()
    dead = ex.of(D_SAE - 1, half, opts)
    assert dead.n_active == 0 and not len(dead.top_rows) and not len(dead.random_rows)


def test_neighbours_follow_cooccurrence(data):
    dense, _, acts, split = data
    on = (dense > 0).astype(np.float64)
    co = on.T @ on
    cos = co / np.sqrt(np.outer(co.diagonal(), co.diagonal()).clip(1))
    np.fill_diagonal(cos, -1)
    nb = Examples(acts, split).neighbours(3)
    for f in range(D_SAE - 1):
        best = cos[f, nb[f]]
        assert (best >= np.sort(cos[f])[::-1][2] - 1e-9).all()


@pytest.mark.parametrize("max_nnz", [10**9, 500])
def test_table_sampler_equals_examples_of_all(data, tmp_path, max_nnz):
    """The streamed features.parquet columns are exactly what Examples.of picks (half "all"),
    whether the triples fit in memory or are spilled to disk in many feature blocks."""
    _, chunks, acts, split = data
    reads = []

    def source():
        reads.append(1)
        return iter(chunks)

    opts = ExampleOptions(n_top=12, n_quantiles=5, per_quantile=3, n_random=20, seed=7)
    t = sample_table_examples(
        source, acts.counts(), N_ROWS, opts, max_nnz=max_nnz, spill_dir=tmp_path
    )
    assert len(reads) == 1  # one read of the shards, however many blocks
    assert not list(tmp_path.iterdir())  # the spill folder is gone
    ex = Examples(acts, split)
    for f in range(D_SAE):
        fe = ex.of(f, "all", opts)
        np.testing.assert_array_equal(fe.top_rows, t.picked[f].top_rows)
        np.testing.assert_array_equal(fe.top_acts, t.picked[f].top_acts)
        np.testing.assert_array_equal(fe.quantile_rows, t.picked[f].quantile_rows)
        np.testing.assert_array_equal(fe.quantile_acts, t.picked[f].quantile_acts)
        np.testing.assert_array_equal(fe.quantile_bins, t.picked[f].quantile_bins)
        np.testing.assert_array_equal(fe.random_rows, t.picked[f].random_rows)


def test_features_row_and_limit():
    row = {
        "feature": 3,
        "count": 9,
        "top_rows": [5, 1, 7],
        "top_acts": [3.0, 2.0, 1.0],
        "quantile_rows": [10, 11, 12, 13, 14],
        "quantile_acts": [0.1, 0.2, 1.0, 1.1, 1.2],
        "quantile_bins": [0, 0, 1, 1, 1],
        "random_rows": [40, 41],
    }
    fe = from_features_row(row).limit(n_top=2, per_quantile=2)
    assert fe.half == "all" and fe.top_rows.tolist() == [5, 1]
    assert fe.quantile_rows.tolist() == [10, 11, 12, 13]
    assert fe.quantile_bins.tolist() == [0, 0, 1, 1]
    assert fe.random_rows.tolist() == [40, 41] and len(fe.hard_rows) == 0


def test_is_in():
    assert is_in(np.array([2, 5, 9]), np.array([0, 2, 3, 9, 10])).tolist() == [
        False,
        True,
        False,
        True,
        False,
    ]
    assert not is_in(np.array([], np.int64), np.array([1])).any()


def test_top_indices_break_ties_by_row():
    from saescope.examples.select import top_indices

    vals = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.5], np.float32)
    assert top_indices(vals, 2).tolist() == [1, 2]
    assert top_indices(vals, 4).tolist() == [1, 2, 4, 3]
    assert top_indices(vals, 10).tolist() == [1, 2, 4, 3, 0, 5]
    assert top_indices(vals, 0).tolist() == []
