import numpy as np
import pytest
import torch

from saescope import ActivationStore, SaescopeError, StoreWriter
from saescope.store import split_mask


def make_store(path, n=1000, d=8, shard_rows=96, dtype="float32", seed=0):
    data = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    w = StoreWriter(path, d, dtype, shard_rows, meta={"model": "test"})
    for lo in range(0, n, 37):  # append in pieces that do not line up with shards
        w.append(data[lo : lo + 37])
    w.close()
    return data


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_in_each_storage_dtype(tmp_path, dtype):
    data = make_store(tmp_path / "s", dtype=dtype)
    store = ActivationStore(tmp_path / "s")
    assert (len(store), store.d_in, store.dtype) == (1000, 8, dtype)
    assert [s.stop - s.start for s in store.shards] == [96] * 10 + [40]
    back = torch.cat(list(store.iter_batches(100, shuffle=False)))
    tol = {"float32": 0, "float16": 1e-3, "bfloat16": 1e-2}[dtype]
    torch.testing.assert_close(back, data, atol=tol * 4, rtol=tol * 2)
    assert back.dtype == torch.float32


def test_shuffled_stream_visits_every_row_once_and_is_seeded(tmp_path):
    data = make_store(tmp_path / "s", n=1000)
    store = ActivationStore(tmp_path / "s")

    def ids(seed):
        return torch.cat(
            [i for _, i in store.iter_batches(64, buffer_rows=200, seed=seed, with_ids=True)]
        )

    a, b, c = ids(1), ids(1), ids(2)
    assert sorted(a.tolist()) == list(range(1000))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, torch.arange(1000))
    # rows travel with their ids
    for x, i in store.iter_batches(64, buffer_rows=200, seed=1, with_ids=True):
        assert torch.equal(x, data[i])
    sizes = [len(x) for x in store.iter_batches(64, buffer_rows=200, seed=1, drop_last=True)]
    assert set(sizes) == {64}


def test_train_and_eval_splits_are_disjoint_and_fixed_by_row_id(tmp_path):
    make_store(tmp_path / "s", n=1000)
    store = ActivationStore(tmp_path / "s")
    tr = torch.cat(
        [i for _, i in store.iter_batches(50, split="train", eval_fraction=0.2, with_ids=True)]
    )
    ev = torch.cat(
        [
            i
            for _, i in store.iter_batches(
                77, split="eval", eval_fraction=0.2, seed=5, with_ids=True
            )
        ]
    )
    assert set(tr.tolist()).isdisjoint(ev.tolist()) and len(tr) + len(ev) == 1000
    assert 150 < len(ev) < 250
    assert set(ev.tolist()) == set(np.nonzero(split_mask(np.arange(1000), 0.2))[0].tolist())


def test_random_access_reads_rows_by_id(tmp_path):
    data = make_store(tmp_path / "s")
    store = ActivationStore(tmp_path / "s")
    ids = [999, 0, 95, 96, 500, 500]
    assert torch.equal(store.rows(ids), data[ids])
    assert torch.equal(store.rows(range(100, 300)), data[100:300])
    with pytest.raises(SaescopeError, match="row ids"):
        store.rows([1000])


def test_truncated_or_corrupt_shard_is_named_never_skipped(tmp_path):
    make_store(tmp_path / "s")
    shard = tmp_path / "s" / "shard-00003.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-100])
    with pytest.raises(SaescopeError, match="shard-00003.*truncated"):
        list(ActivationStore(tmp_path / "s").iter_batches(100))
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(SaescopeError, match="shard-00003.*checksum"):
        ActivationStore(tmp_path / "s").verify()
    with pytest.raises(SaescopeError, match="shard-00003.*checksum"):
        ActivationStore(tmp_path / "s").rows([300])


def test_writer_refuses_other_dimension_and_other_run(tmp_path):
    make_store(tmp_path / "s")
    with pytest.raises(SaescopeError, match="dimension 8, not 16"):
        StoreWriter(tmp_path / "s", 16, meta={"model": "test"}, append=True)
    with pytest.raises(SaescopeError, match="different run.*model"):
        StoreWriter(tmp_path / "s", 8, meta={"model": "other"})
    with pytest.raises(SaescopeError, match="cannot append rows of shape"):
        StoreWriter(tmp_path / "t", 8).append(torch.zeros(3, 9))


def test_incomplete_store_cannot_be_read_and_writer_resumes_it(tmp_path):
    data = torch.randn(500, 4)
    w = StoreWriter(tmp_path / "s", 4, shard_rows=100, meta={"m": 1})
    w.append(data[:250])  # two full shards written, 50 rows pending, then a "crash"
    del w
    with pytest.raises(SaescopeError, match="incomplete"):
        ActivationStore(tmp_path / "s")
    w2 = StoreWriter(tmp_path / "s", 4, shard_rows=100, meta={"m": 1})
    assert w2.rows_done == 200
    w2.append(data[200:])
    w2.close()
    assert torch.equal(
        torch.cat(list(ActivationStore(tmp_path / "s").iter_batches(64, shuffle=False))), data
    )


def test_missing_store_message_says_what_to_run(tmp_path):
    with pytest.raises(SaescopeError, match="saescope embed"):
        ActivationStore(tmp_path / "nothing")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_writer_refuses_non_finite_rows_naming_them_before_writing(tmp_path, bad):
    w = StoreWriter(tmp_path / "s", 3, shard_rows=4, meta={"m": 1})
    w.append(torch.ones(6, 3))  # shard 0 written, 2 rows pending
    block = torch.ones(8, 3)
    block[[2, 5], 1] = bad  # store rows 8 and 11, both in shard 2
    with pytest.raises(SaescopeError, match=r"shard-00002.*row\(s\) 8, 11 hold NaN or inf"):
        w.append(block)
    assert sorted(p.name for p in (tmp_path / "s").glob("shard-*")) == ["shard-00000.safetensors"]
    w.close()  # the good rows are kept; the bad block is not
    assert len(ActivationStore(tmp_path / "s")) == 6


def test_float16_store_refuses_values_beyond_its_range(tmp_path):
    rows = torch.zeros(10, 2)
    rows[3, 0] = 65504.0  # the largest float16: fine
    StoreWriter(tmp_path / "ok", 2, "float16").append(rows)
    rows[[4, 9], 1] = torch.tensor([7e4, -1e6])
    with pytest.raises(SaescopeError, match=r"row\(s\) 4, 9 hold values beyond float16.*bfloat16"):
        StoreWriter(tmp_path / "f16", 2, "float16").append(rows)
    for dtype in ("bfloat16", "float32"):
        StoreWriter(tmp_path / dtype, 2, dtype).append(rows)


def test_row_ids_of_the_wrong_kind_and_an_empty_eval_split_are_refused(tmp_path):
    """A boolean mask read as ids 0 and 1, fractions were cut to whole ids, and the eval
    split of fraction 0 was an empty stream: all silently wrong."""
    data = make_store(tmp_path / "s", n=200)
    store = ActivationStore(tmp_path / "s")
    with pytest.raises(SaescopeError, match="boolean mask.*flatnonzero"):
        store.rows(np.arange(200) < 3)
    with pytest.raises(SaescopeError, match="whole numbers, got float64"):
        store.rows([1.7])
    with pytest.raises(SaescopeError, match=r"shape \(2, 2\)"):
        store.rows([[1, 2], [3, 4]])
    assert torch.equal(store.rows(torch.tensor([3, 1])), data[[3, 1]])
    assert store.rows([]).shape == (0, 8)
    with pytest.raises(SaescopeError, match="eval_fraction 0 holds no rows"):
        next(store.iter_batches(10, split="eval"))
    for bad in (1.5, -0.5):
        with pytest.raises(SaescopeError, match=r"eval_fraction must lie in \[0, 1\)"):
            next(store.iter_batches(10, split="train", eval_fraction=bad))
