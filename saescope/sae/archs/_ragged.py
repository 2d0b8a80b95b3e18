"""Encode and decode through a ragged set of active (row, latent) pairs, with sparse backward.

BatchTopK, JumpReLU, Matryoshka and ReLU activate a different number of latents in
each row. Their active pairs are kept as one flat list, row-major (`Ragged`: rows,
feats, and the offset of each row's first entry), and the two autograd Functions
here cost O(nnz * d_in) forward and backward instead of O(n_rows * d_sae * d_in),
where nnz is the number of active pairs:

- `ragged_decode(rg, vals, W_dec)` -> (n_rows, d_in): row r gets sum of vals[e] * W_dec[feats[e]]
  over its entries e. Backward: d vals = dot products with the active decoder rows (one
  fused kernel), d W_dec = a bag sum per latent over the rows that chose it.
- `ragged_pre_acts(x, b_dec, W_enc, b_enc, rg, h)` -> (nnz,) pre-activations at the active
  pairs, gathered from the dense h the caller computed without grad. Backward: d W_enc
  only in active columns, d b_enc and d b_dec from per-latent sums, d x as a bag sum.

They are `saescope.sae.kernels`' TopK functions for rows of unequal length.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd import Function

from saescope.sae.kernels import scatter_pairs


class Ragged(NamedTuple):
    rows: torch.Tensor  # (nnz,) int64, ascending
    feats: torch.Tensor  # (nnz,) int64 (`ragged_of`: ascending within each row)
    offsets: torch.Tensor  # (n_rows,) int64, index of each row's first entry


def ragged_of(mask: torch.Tensor) -> Ragged:
    """The True entries of mask (n_rows, d_sae), row-major."""
    rows, feats = mask.nonzero(as_tuple=True)
    return Ragged(rows, feats, _offsets(rows, mask.shape[0]))


def ragged_at(idx: torch.Tensor, keep: torch.Tensor) -> Ragged:
    """The latents idx[r, j] (n_rows, m) where keep[r, j] is True, row-major (within a row
    in the order of idx, not necessarily ascending)."""
    rows, cols = keep.nonzero(as_tuple=True)
    return Ragged(rows, idx[rows, cols], _offsets(rows, idx.shape[0]))


def _offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


def subset(rg: Ragged, keep: torch.Tensor, n_rows: int) -> Ragged:
    """The entries where keep (nnz,) is True, still row-major."""
    rows = rg.rows[keep]
    return Ragged(rows, rg.feats[keep], _offsets(rows, n_rows))


def _bag_dots(dense: torch.Tensor, table: torch.Tensor, rg: Ragged) -> torch.Tensor:
    """(nnz,): out[e] = <dense[rows[e]], table[feats[e]]> in one fused kernel (embedding_bag's
    per-sample-weight gradient); chunked gathers for dtypes it does not take."""
    if dense.dtype in (torch.float32, torch.float64) and table.dtype == dense.dtype:
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(
            dense.contiguous(), table.contiguous(), rg.feats, rg.offsets, rg.rows, 0, -1
        )
    out = torch.empty(rg.rows.numel(), dtype=dense.dtype, device=dense.device)
    step = 1 << 16
    for s in range(0, rg.rows.numel(), step):
        r, f = rg.rows[s : s + step], rg.feats[s : s + step]
        out[s : s + step] = (dense[r] * table[f].to(dense.dtype)).sum(1)
    return out


def _per_latent(
    rg: Ragged, weights: torch.Tensor, dense: torch.Tensor, n_latents: int
) -> torch.Tensor:
    """(n_latents, d): out[f] = sum over entries e with feats[e] == f of weights[e] * dense[rows[e]]."""
    return scatter_pairs(rg.rows, rg.feats, weights, dense, n_latents)


class RaggedDecode(Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, rows: torch.Tensor, feats: torch.Tensor, offsets: torch.Tensor, vals, W_dec
    ):
        ctx.save_for_backward(rows, feats, offsets, vals, W_dec)
        return F.embedding_bag(feats, W_dec, offsets, mode="sum", per_sample_weights=vals)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        rows, feats, offsets, vals, W_dec = ctx.saved_tensors
        rg = Ragged(rows, feats, offsets)
        grad_vals = grad_W = None
        if ctx.needs_input_grad[3]:
            grad_vals = _bag_dots(grad_out, W_dec, rg)  # (nnz,)
        if ctx.needs_input_grad[4]:
            grad_W = _per_latent(rg, vals, grad_out, W_dec.shape[0])  # (d_sae, d_in)
        return None, None, None, grad_vals, grad_W


class RaggedPreActs(Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        b_dec: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        rows: torch.Tensor,
        feats: torch.Tensor,
        offsets: torch.Tensor,
        h: torch.Tensor | None,
        at: torch.Tensor | None,
    ):
        ctx.save_for_backward(x, b_dec, W_enc, rows, feats, offsets)
        if at is not None:
            return at.clone()
        if h is not None:
            return h[rows, feats]
        return _bag_dots(x - b_dec, W_enc.t(), Ragged(rows, feats, offsets)) + b_enc[feats]

    @staticmethod
    def backward(ctx, grad_sel: torch.Tensor):  # type: ignore[override]
        x, b_dec, W_enc, rows, feats, offsets = ctx.saved_tensors
        rg = Ragged(rows, feats, offsets)
        d_sae = W_enc.shape[1]
        grad_x = grad_b_dec = grad_W = grad_b_enc = None
        col_sum = torch.zeros(d_sae, dtype=grad_sel.dtype, device=grad_sel.device)
        col_sum.index_add_(0, feats, grad_sel)  # (d_sae,)
        if ctx.needs_input_grad[2]:
            grad_W = _per_latent(rg, grad_sel, x - b_dec, d_sae).t()  # (d_in, d_sae)
        if ctx.needs_input_grad[3]:
            grad_b_enc = col_sum
        if ctx.needs_input_grad[1]:
            grad_b_dec = -(W_enc @ col_sum)  # (d_in,)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(
                feats, W_enc.t().contiguous(), offsets, mode="sum", per_sample_weights=grad_sel
            )
        return grad_x, grad_b_dec, grad_W, grad_b_enc, None, None, None, None, None


def ragged_decode(rg: Ragged, vals: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """(n_rows, d_in) = per row, the sum of vals[e] * W_dec[feats[e]] (no bias)."""
    return RaggedDecode.apply(rg.rows, rg.feats, rg.offsets, vals, W_dec)


def ragged_pre_acts(
    x: torch.Tensor,
    b_dec: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    rg: Ragged,
    h: torch.Tensor | None = None,
    at: torch.Tensor | None = None,
) -> torch.Tensor:
    """(nnz,) = ((x - b_dec) @ W_enc + b_enc)[rows, feats]. To reuse exact values computed
    without grad (same dtype as x) as the forward, pass them dense as h (n_rows, d_sae) or
    already at the pairs as `at` (nnz,)."""
    return RaggedPreActs.apply(x, b_dec, W_enc, b_enc, rg.rows, rg.feats, rg.offsets, h, at)
