"""The sparse encode/decode autograd Functions agree with dense autograd."""

import os
import subprocess
import sys

import pytest
import torch

from saescope.sae.kernels import (
    GATHER_BUDGET_BYTES,
    gather_chunk_rows,
    gather_dots,
    scatter_rows,
    sparse_decode,
    sparse_encode,
    sparse_encode_with_pairs,
    topk_indices,
)


def _problem(seed: int = 0, n_rows: int = 5, d_in: int = 4, d_sae: int = 7, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, d_in, generator=g, dtype=torch.float64)
    W_enc = torch.randn(d_in, d_sae, generator=g, dtype=torch.float64)
    b_enc = torch.randn(d_sae, generator=g, dtype=torch.float64)
    W_dec = torch.randn(d_sae, d_in, generator=g, dtype=torch.float64)
    b_dec = torch.randn(d_in, generator=g, dtype=torch.float64)
    idx = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(n_rows)])
    vals = torch.randn(n_rows, k, generator=g, dtype=torch.float64)
    return x, W_enc, b_enc, W_dec, b_dec, idx, vals


def test_sparse_decode_gradcheck():
    _, _, _, W_dec, _, idx, vals = _problem()
    vals.requires_grad_()
    W_dec.requires_grad_()
    assert torch.autograd.gradcheck(lambda v, w: sparse_decode(idx, v, w), (vals, W_dec))


def test_sparse_decode_matches_dense():
    _, _, _, W_dec, _, idx, vals = _problem(1)
    dense = torch.zeros(idx.shape[0], W_dec.shape[0], dtype=torch.float64).scatter(1, idx, vals)
    assert torch.allclose(sparse_decode(idx, vals, W_dec), dense @ W_dec)


@pytest.mark.parametrize("latent_major", [False, True])
def test_sparse_encode_gradcheck(latent_major):
    """Also with W_enc stored latent-major (a transposed view), as the trainer keeps it."""
    x, W_enc, b_enc, _, b_dec, idx, _ = _problem(2)
    if latent_major:
        W_enc = W_enc.t().contiguous().t()
        assert not W_enc.is_contiguous()
    for t in (x, W_enc, b_enc, b_dec):
        t.requires_grad_()

    def f(x, b_dec, W_enc, b_enc):
        return sparse_encode(x, b_dec, W_enc, b_enc, idx)

    assert torch.autograd.gradcheck(f, (x, b_dec, W_enc, b_enc))


@pytest.mark.parametrize("latent_major", [False, True])
def test_sparse_encode_with_extra_pairs_gradcheck(latent_major):
    """The extra (row, latent) pairs (AuxK's, in any order, some on a row's own latents)
    share one backward with the rectangular index; gradients of every input checked."""
    x, W_enc, b_enc, _, b_dec, idx, _ = _problem(4, n_rows=6, d_sae=9, k=3)
    if latent_major:
        W_enc = W_enc.t().contiguous().t()
    rows = torch.tensor([5, 0, 2, 2, 0, 3])
    feats = torch.tensor([1, 8, 4, 0, 8, 2])
    for t in (x, W_enc, b_enc, b_dec):
        t.requires_grad_()

    def f(x, b_dec, W_enc, b_enc):
        with torch.no_grad():
            at = ((x - b_dec) @ W_enc + b_enc)[rows, feats]  # exact, as the caller gives them
        main, extra = sparse_encode_with_pairs(x, b_dec, W_enc, b_enc, idx, None, rows, feats, at)
        return main, extra

    assert torch.autograd.gradcheck(f, (x, b_dec, W_enc, b_enc))


def test_sparse_encode_with_pre_acts_matches_dense_autograd():
    x, W_enc, b_enc, W_dec, b_dec, _, _ = _problem(3, n_rows=6, d_sae=9, k=3)
    params = [t.clone().requires_grad_() for t in (b_dec, W_enc, b_enc, W_dec)]
    upstream = torch.randn(6, 4, dtype=torch.float64)

    def dense_loss(b_dec, W_enc, b_enc, W_dec):
        h = (x - b_dec) @ W_enc + b_enc
        v, i = torch.topk(h, 3, dim=1)
        z = torch.zeros_like(h).scatter(1, i, torch.relu(v))
        return ((z @ W_dec + b_dec) * upstream).sum()

    def sparse_loss(b_dec, W_enc, b_enc, W_dec):
        with torch.no_grad():
            h = (x - b_dec) @ W_enc + b_enc
            _, i = torch.topk(h, 3, dim=1)
        v = sparse_encode(x, b_dec, W_enc, b_enc, i, h.gather(1, i))
        return ((sparse_decode(i, torch.relu(v), W_dec) + b_dec) * upstream).sum()

    g_dense = torch.autograd.grad(dense_loss(*params), params)
    g_sparse = torch.autograd.grad(sparse_loss(*params), params)
    for a, b in zip(g_dense, g_sparse, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_indices_is_exact(dtype):
    g = torch.Generator().manual_seed(4)
    h = (torch.randn(64, 8192, generator=g) + torch.linspace(-1, 1, 8192)).to(dtype)
    for k in (1, 16, 64):
        got = topk_indices(h, k)  # grouped search (8192 wide)
        want = torch.topk(h.float(), k, dim=1).values
        assert torch.equal(h.gather(1, got).float().sort(1).values, want.sort(1).values)
    for width in (4608, 3072, 1536):  # on CPU groups of 8 from 1536 wide
        mid = h[:, :width]
        for k in (1, 32, 48):
            got = topk_indices(mid, k)
            want = torch.topk(mid.float(), k, dim=1).values
            assert torch.equal(mid.gather(1, got).float().sort(1).values, want.sort(1).values)
    # a row of ties at the cut-off: any k of the tied columns is a right answer
    tied = torch.zeros(4, 1536, dtype=dtype)
    tied[:, ::7] = 1.0
    got = topk_indices(tied, 100)
    assert (tied.gather(1, got) == 1.0).all()
    assert all(len(set(row.tolist())) == 100 for row in got)  # 100 distinct columns a row
    narrow = h[:, :300]
    got = topk_indices(narrow, 8)
    want = torch.topk(narrow.float(), 8, dim=1).values
    assert torch.equal(narrow.gather(1, got).float().sort(1).values, want.sort(1).values)


def test_scatter_rows_sums_repeats_and_leaves_unused_latents_zero():
    """A latent picked twice in one row (active and again as AuxK) gets both terms."""
    g = torch.Generator().manual_seed(5)
    idx = torch.tensor([[2, 0, 2], [4, 2, 0]])
    vals = torch.randn(2, 3, generator=g, dtype=torch.float64)
    dense = torch.randn(2, 5, generator=g, dtype=torch.float64)
    want = torch.zeros(6, 5, dtype=torch.float64)
    for r in range(2):
        for j in range(3):
            want[idx[r, j]] += vals[r, j] * dense[r]
    got = scatter_rows(idx, vals, dense, 6)
    assert torch.allclose(got, want)
    assert torch.equal(got[[1, 3, 5]], torch.zeros(3, 5, dtype=torch.float64))


def test_gather_dots_in_chunks_equals_the_whole_gather_at_d_in_4096():
    """bfloat16 takes the gather-and-bmm path (dtypes and devices without the fused kernel)."""
    g = torch.Generator().manual_seed(6)
    n_rows, k, d_in, d_sae = 9, 5, 4096, 64
    table = torch.randn(d_sae, d_in, generator=g).bfloat16()
    dense = torch.randn(n_rows, d_in, generator=g).bfloat16()
    idx = torch.randint(0, d_sae, (n_rows, k), generator=g)
    budget = 2 * k * d_in * 2  # two rows of bfloat16 per chunk: 5 chunks, the last one short
    assert gather_chunk_rows(k, d_in, 2, budget) == 2
    chunked = gather_dots(dense, table, idx, budget_bytes=budget)
    whole = gather_dots(dense, table, idx, budget_bytes=1 << 40)
    want = torch.einsum("rd,rkd->rk", dense.double(), table.double()[idx])
    assert chunked.shape == (n_rows, k) and chunked.dtype == torch.bfloat16
    assert torch.equal(chunked, whole)
    assert torch.allclose(chunked.double(), want, rtol=1e-2, atol=0.5)


_PEAK_SCRIPT = """
import re, sys, torch
from saescope.sae.kernels import gather_dots

def kib(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

g = torch.Generator().manual_seed(0)
n_rows, k, d_in, d_sae = 512, 128, 4096, 1024  # whole gather: 512 MiB of bfloat16
table = torch.randn(d_sae, d_in, generator=g).bfloat16()
dense = torch.randn(n_rows, d_in, generator=g).bfloat16()
idx = torch.randint(0, d_sae, (n_rows, k), generator=g)
gather_dots(dense[:1], table, idx[:1])  # load the kernels before measuring
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak resident size (VmHWM) to the current one
before = kib("VmRSS")
gather_dots(dense, table, idx, budget_bytes=int(sys.argv[1]))
print((kib("VmHWM") - before) * 1024)
"""


def _peak_growth(budget: int) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(budget)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc peak RSS")
def test_gather_dots_peak_memory_stays_within_its_budget():
    """At d_in 4096 the whole (rows, k, d_in) gather would take 512 MiB; in 8 MiB chunks
    the process's peak grows by far less (the allocator keeps a few chunks, so the bound is
    loose). The unchunked run shows that the measure sees the buffer."""
    mib = 1 << 20
    # the default budget at the width that motivated it: 4096 rows, k + k_aux = 32 + 2048
    rows = gather_chunk_rows(32 + 2048, 4096, 4, GATHER_BUDGET_BYTES)
    assert rows >= 1 and rows * (32 + 2048) * 4096 * 4 <= GATHER_BUDGET_BYTES
    assert _peak_growth(8 * mib) < 96 * mib
    assert _peak_growth(1 << 40) > 400 * mib
