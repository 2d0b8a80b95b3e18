"""Sparse encode/decode with gradients that touch only the active latents.

A TopK SAE uses k of its d_sae latents per row, yet plain autograd through
`torch.topk` scatters the gradient into a dense (n_rows, d_sae) tensor and then
pays a full (d_in x n_rows x d_sae) matmul for the encoder gradient, and a dense
decode pays the same again. The two autograd Functions here keep everything in
(n_rows, k) index/value form:

- `sparse_decode(top_idx, top_vals, W_dec)` -> (n_rows, d_in) = sum_j top_vals[:, j] * W_dec[top_idx[:, j]].
  Backward: d top_vals = gathered dot products with the active decoder rows,
  d W_dec = index-add over the active rows only.
- `sparse_encode(x, b_dec, W_enc, b_enc, idx, values)` -> (n_rows, m) pre-activations at
  the chosen latents `idx` (the `values` the caller already gathered from pre-activations
  it computed without grad, when they are exact). Backward: d W_enc only in the chosen
  columns, d b_enc and d b_dec from column sums.

Both cost O(n_rows * k * d_in) in backward instead of O(n_rows * d_sae * d_in).
`topk_indices(h, k)` picks the latents (exactly) faster than `torch.topk` for
rows from 1536 wide on CPU.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd import Function


def _offsets(n_rows: int, k: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, n_rows * k, k, device=device)


# Most bytes the (rows, k, d) gather buffer of `gather_dots_chunked` may take at once.
# Whole, a batch of 4096 rows with AuxK at d_in 4096 (k + k_aux = 32 + 2048 latents) would
# need 4096 * 2080 * 4096 * 4 bytes = 130 GiB.
GATHER_BUDGET_BYTES = 256 << 20
_FUSED_DEVICES = ("cpu", "cuda")


def gather_chunk_rows(k: int, d: int, itemsize: int, budget_bytes: int) -> int:
    """Rows per chunk so a (rows, k, d) buffer of `itemsize` bytes fits in `budget_bytes`."""
    return max(1, budget_bytes // max(1, k * d * itemsize))


def gather_dots(
    dense: torch.Tensor,
    table: torch.Tensor,
    idx: torch.Tensor,
    budget_bytes: int = GATHER_BUDGET_BYTES,
) -> torch.Tensor:
    """(n_rows, k): out[r, j] = <dense[r], table[idx[r, j]]>.

    float32/float64 on CPU and CUDA: one fused kernel (embedding_bag's per-sample-weight
    gradient), no buffer. Other dtypes and devices: `gather_dots_chunked`, whose buffer
    stays within `budget_bytes`. On an H200, at 4096 rows, k 2080, d 4096 (float32), the
    fused kernel took 47 ms and 0.03 GiB, the 256 MiB chunks 118 ms and 0.5 GiB
    (bench/gpu_check.py gather).
    """
    n_rows, k = idx.shape
    fused = dense.dtype in (torch.float32, torch.float64) and table.dtype == dense.dtype
    if not fused or dense.device.type not in _FUSED_DEVICES:
        return gather_dots_chunked(dense, table, idx, budget_bytes)
    out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        dense.contiguous(),
        table.contiguous(),
        idx.reshape(-1),
        _offsets(n_rows, k, idx.device),
        torch.arange(n_rows, device=idx.device).repeat_interleave(k),  # row of each entry
        0,
        -1,
    )
    return out.view(n_rows, k)


def gather_dots_chunked(
    dense: torch.Tensor,
    table: torch.Tensor,
    idx: torch.Tensor,
    budget_bytes: int = GATHER_BUDGET_BYTES,
) -> torch.Tensor:
    """`gather_dots` by gathering table rows into a (rows, k, d) buffer for a batched
    matmul, a chunk of rows at a time so that the buffer never exceeds `budget_bytes`."""
    n_rows, k = idx.shape
    step = gather_chunk_rows(k, table.shape[1], table.element_size(), budget_bytes)
    if step >= n_rows:
        return torch.bmm(table[idx], dense.unsqueeze(2)).squeeze(2)
    out = torch.empty(n_rows, k, dtype=dense.dtype, device=dense.device)
    for start in range(0, n_rows, step):
        stop = min(n_rows, start + step)
        rows = table[idx[start:stop]]  # (step, k, d), at most budget_bytes
        out[start:stop] = torch.bmm(rows, dense[start:stop].unsqueeze(2)).squeeze(2)
    return out


def scatter_rows(
    idx: torch.Tensor, vals: torch.Tensor, dense: torch.Tensor, n_latents: int
) -> torch.Tensor:
    """(n_latents, d): out[f] = sum over (r, j) with idx[r, j] == f of vals[r, j] * dense[r].

    This is S^T @ dense for the sparse (n_rows, n_latents) matrix S with S[r, idx[r, j]] =
    vals[r, j]: `scatter_pairs` for the entries of a rectangular index.
    """
    k = idx.shape[1]
    flat_sorted, order = torch.sort(idx.reshape(-1), stable=True)
    return _bags(flat_sorted, order // k, vals.reshape(-1)[order], dense, n_latents)


def scatter_pairs(
    rows: torch.Tensor,
    feats: torch.Tensor,
    weights: torch.Tensor,
    dense: torch.Tensor,
    n_latents: int,
) -> torch.Tensor:
    """(n_latents, d): out[f] = sum over entries e with feats[e] == f of weights[e] * dense[rows[e]].

    Computed as one `embedding_bag` over `dense`: the entries (in any order) are sorted by
    latent, and latent f's bag holds the rows that chose it, weighted by their values.
    Each output row is written once (no zero-filled accumulator); on CPU this is about 3x
    faster than a COO sparse matmul, whose coalescing sorts the same entries.
    """
    # stable: for int64 keys on CPU torch then takes a radix sort, which on 2 AVX-512 cores
    # sorted the 131,072 entries of a 4096-row, k-32 batch in 2.3 ms against 184 ms for the
    # default (unstable) sort; it also fixes the order of each bag's rows
    sorted_feats, order = torch.sort(feats, stable=True)
    return _bags(sorted_feats, rows[order], weights[order], dense, n_latents)


def _bags(
    sorted_feats: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    dense: torch.Tensor,
    n_latents: int,
) -> torch.Tensor:
    """The per-latent weighted sums of dense rows, entries already sorted by latent."""
    starts = torch.searchsorted(
        sorted_feats, torch.arange(n_latents, device=dense.device, dtype=sorted_feats.dtype)
    )  # (n_latents,) first entry of each latent's bag; empty bags give zero rows
    return F.embedding_bag(
        rows, dense, starts, mode="sum", per_sample_weights=weights.to(dense.dtype)
    )


class SparseDecode(Function):
    """x_hat (n_rows, d_in) from the active latents only; see the module docstring."""

    @staticmethod
    def forward(ctx, top_idx: torch.Tensor, top_vals: torch.Tensor, W_dec: torch.Tensor):  # type: ignore[override]
        ctx.save_for_backward(top_idx, top_vals, W_dec)
        n_rows, k = top_idx.shape
        return F.embedding_bag(
            top_idx.reshape(-1),
            W_dec,
            _offsets(n_rows, k, top_idx.device),
            mode="sum",
            per_sample_weights=top_vals.reshape(-1),
        )

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        top_idx, top_vals, W_dec = ctx.saved_tensors
        grad_vals = grad_W = None
        if ctx.needs_input_grad[1]:
            grad_vals = gather_dots(grad_out, W_dec, top_idx)  # (n_rows, k)
        if ctx.needs_input_grad[2]:
            grad_W = scatter_rows(top_idx, top_vals, grad_out, W_dec.shape[0])  # (d_sae, d_in)
        return None, grad_vals, grad_W


class SparseEncode(Function):
    """Pre-activations (n_rows, m) at latents `idx`, and optionally at extra (row, latent)
    pairs given flat (AuxK's), with one sparse backward for both: a single gradient of
    W_enc, not two full (d_in, d_sae) ones summed."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        b_dec: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        idx: torch.Tensor,
        values: torch.Tensor | None,
        extra_rows: torch.Tensor,
        extra_feats: torch.Tensor,
        extra_values: torch.Tensor,
    ):
        ctx.save_for_backward(x, b_dec, W_enc, idx, extra_rows, extra_feats)
        if values is not None:
            main = values.clone()
        else:
            main = gather_dots(x - b_dec, W_enc.t(), idx) + b_enc[idx]
        return main, extra_values.clone()

    @staticmethod
    def backward(ctx, grad_sel: torch.Tensor, grad_extra: torch.Tensor):  # type: ignore[override]
        x, b_dec, W_enc, idx, extra_rows, extra_feats = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        n_rows, m = idx.shape
        grad_x = grad_b_dec = grad_W = grad_b_enc = None
        feats, grads = idx.reshape(-1), grad_sel.reshape(-1)
        if extra_rows.numel():
            feats = torch.cat([feats, extra_feats])
            grads = torch.cat([grads, grad_extra.to(grads.dtype)])
        col_sum = torch.zeros(d_sae, dtype=grad_sel.dtype, device=grad_sel.device)
        col_sum.index_add_(0, feats, grads)  # (d_sae,)
        if ctx.needs_input_grad[2]:
            x_c = x - b_dec  # (n_rows, d_in)
            if extra_rows.numel():
                main_rows = torch.arange(n_rows, device=idx.device).repeat_interleave(m)
                rows = torch.cat([main_rows, extra_rows])
                grad_W = scatter_pairs(rows, feats, grads, x_c, d_sae).t()  # (d_in, d_sae)
            else:
                grad_W = scatter_rows(idx, grad_sel, x_c, d_sae).t()
        if ctx.needs_input_grad[3]:
            grad_b_enc = col_sum
        if ctx.needs_input_grad[1]:
            grad_b_dec = -(W_enc @ col_sum)  # (d_in,)
        if ctx.needs_input_grad[0]:
            table = W_enc.t().contiguous()  # (d_sae, d_in)
            grad_x = F.embedding_bag(
                idx.reshape(-1),
                table,
                _offsets(n_rows, m, idx.device),
                mode="sum",
                per_sample_weights=grad_sel.reshape(-1),
            )
            if extra_rows.numel():
                grad_x.index_add_(0, extra_rows, table[extra_feats] * grad_extra.unsqueeze(1))
        return grad_x, grad_b_dec, grad_W, grad_b_enc, None, None, None, None, None


def quantize_int8(t: torch.Tensor, levels: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 copy of the float matrix t (n, d), each row on its own range (so a
    massive row does not flatten the others): (q (n, d) int8, scale (n, 1)),
    t ~ q * scale, |q| <= levels (at most 127). Products of two such copies accumulate
    exactly in int32 (`torch._int_mm`) up to d = 133,000, where the CPU's int8 product
    is exact (`int8_matmul_levels`).
    """
    scale = t.abs().amax(1, keepdim=True).clamp_min(1e-30) / levels
    return torch.round(t / scale).to(torch.int8), scale


@functools.cache
def int8_matmul_levels() -> int:
    """How far the second operand of `torch._int_mm` may range (|q| <= this) on this CPU
    for its product to be exact: 127, or 64 where it saturates.

    Without VNNI (AVX2 CPUs, AVX-512 before Cascade Lake) oneDNN multiplies int8 pairs
    with vpmaddubsw: the first operand shifted to uint8 (0..254), pairs of products
    summed into int16, which saturates beyond 32,767. With the second operand's entries
    at 127, a product of 64-wide rows came out 25% off on random data (ONEDNN_MAX_CPU_ISA=
    AVX2 on a Xeon, 2026-12-01); within 64, 2 * 254 * 64 = 32,512 fits. Probed once per
    process with worst-case operands; RuntimeError when neither range is exact (auto then
    selects in float32; an explicit select_precision int8 fails with it)."""
    a = torch.full((32, 64), 127, dtype=torch.int8)
    a[1::2] = -127
    for levels in (127, 64):
        b = torch.full((64, 32), levels, dtype=torch.int8)
        b[:, 1::2] = -levels
        if torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long()):
            return levels
    raise RuntimeError("torch._int_mm is not exact on this CPU even within +-64")


def topk_indices(
    h: torch.Tensor, k: int, group: int | None = None, min_width: int | None = None
) -> torch.Tensor:
    """(n_rows, k) column indices of the k largest entries per row of h (unordered).

    bfloat16 is ranked through its int16 bit pattern: the same order for positive
    values, all negatives below them (reversed among themselves, which only matters
    for rows with fewer than k positives, whose extra entries are relu'd to zero).
    Wide rows use a two-stage search that is exact: the columns are cut into
    strided groups of `group`; any top-k entry lies in one of the k groups with the
    largest maxima, so the final topk only scans k * group candidates.

    On CPU (None: groups of 8 below width 8192, else 16, from width 1536) it pays on the
    chunks `saescope.sae.archs.topk.select` hands it (~8 MiB, in cache). 2 AVX-512 cores,
    float32, ms per chunk torch.topk -> grouped (2026-12-01): width 3072 (672 rows) k 32
    3.31 -> 2.35, k 48 4.39 -> 2.68; 1536 (1344 rows) k 32 6.95 -> 3.12; 12288 (160 rows)
    k 48 2.09 -> 1.31 (groups of 16); 768 (2720 rows) k 48 5.64 -> 6.47, hence the
    minimum width; bfloat16 alike (3072, 1344 rows, k 36: 6.07 -> 3.51), and the same
    ratios with AVX2 only. Measured on whole 4096-row matrices, out of cache, the grouped
    search lost at 3072 (104 ms against 62), so off CPU the old rule stays: groups of 16
    from width 4096 for float32, 8192 for other dtypes.
    """
    ranks = h.view(torch.int16) if h.dtype == torch.bfloat16 else h
    n_rows, width = ranks.shape
    cpu = h.device.type == "cpu"
    if min_width is None:
        min_width = 1536 if cpu else (4096 if h.dtype == torch.float32 else 8192)
    if group is None:
        group = 8 if cpu and width < 8192 else 16
    n_groups = width // group
    if width < min_width or width % group or n_groups < k:
        return torch.topk(ranks, k, dim=1, sorted=False).indices
    view = ranks.view(n_rows, group, n_groups)  # column c = member * n_groups + g
    best_groups = torch.topk(view.amax(1), k, dim=1, sorted=False).indices  # (n_rows, k)
    cand = view.gather(2, best_groups[:, None, :].expand(n_rows, group, k))  # (n_rows, group, k)
    pick = torch.topk(cand.reshape(n_rows, group * k), k, dim=1, sorted=False).indices
    return (pick // k) * n_groups + best_groups.gather(1, pick % k)


def sparse_decode(
    top_idx: torch.Tensor, top_vals: torch.Tensor, W_dec: torch.Tensor
) -> torch.Tensor:
    """(n_rows, d_in) = sum_j top_vals[:, j] * W_dec[top_idx[:, j]] (no bias)."""
    return SparseDecode.apply(top_idx, top_vals, W_dec)


def sparse_encode(
    x: torch.Tensor,
    b_dec: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    idx: torch.Tensor,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n_rows, m) = ((x - b_dec) @ W_enc + b_enc) at columns idx (n_rows, m).

    Pass `values` (n_rows, m), those pre-activations already computed exactly without grad
    (e.g. gathered from the matmul that chose idx), to reuse them as the forward; the
    backward is sparse either way.
    """
    none = torch.empty(0, dtype=torch.int64, device=x.device)
    main, _ = SparseEncode.apply(
        x, b_dec, W_enc, b_enc, idx, values, none, none, torch.empty(0, device=x.device)
    )
    return main


def sparse_encode_with_pairs(
    x: torch.Tensor,
    b_dec: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    idx: torch.Tensor,
    values: torch.Tensor | None,
    rows: torch.Tensor,
    feats: torch.Tensor,
    pair_values: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sparse_encode`, plus the pre-activations at the extra pairs (rows[e], feats[e])
    (nnz,), whose exact values `pair_values` (computed without grad) are the forward; one
    backward for both."""
    return SparseEncode.apply(x, b_dec, W_enc, b_enc, idx, values, rows, feats, pair_values)
