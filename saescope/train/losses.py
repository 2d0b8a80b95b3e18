"""Training losses, one function per architecture.

In: an `SAE`, a batch x (n_rows, d_in) of already-normalised inputs (this rank's
slice of the global batch), and a `LossContext` (global batch size, dead-latent
mask, coefficients, a cross-rank sum). Out: a `LossOutput` whose `loss` is this
rank's share of the global-batch loss, so summing gradients over ranks (DDP)
gives exactly the single-process gradient.

Reconstruction error is the squared error summed over d_in and averaged over
rows (inputs are scaled to unit mean squared norm, so 1.0 means "explains nothing").

- relu:      mse + l1 * sum_j z_j * ||W_dec_j||
- topk:      mse + aux * AuxK;  decode and backward touch only the k active latents
             (`saescope.sae.kernels`)
- batchtopk: the k * n_global largest activations of the global batch (all ranks) are
             kept; mse + aux * AuxK; reports the smallest kept activation (for the
             threshold)
- jumprelu:  mse + l0 * L0, with straight-through estimators: the threshold gets the
             rectangle-kernel pseudo-derivative, the chain rule through
             threshold = exp(log_threshold) is left to autograd (so d/dlog_t = t * d/dt)
AuxK (Gao et al.): the top k_aux pre-activations among dead latents reconstruct the
residual x - x_hat; its squared error is divided by the residual's total variance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.autograd import Function

from saescope.sae import SAE
from saescope.sae.kernels import sparse_decode, sparse_encode, topk_indices


class LossContext(NamedTuple):
    n_global: int  # rows in the global batch (all ranks)
    dead: torch.Tensor  # (d_sae,) bool, latents dead before this step
    k: int | None
    k_aux: int
    aux_coefficient: float
    sparsity_coefficient: float  # l1 (relu) or l0 (jumprelu), after warm-up
    bandwidth: float  # jumprelu kernel width
    all_sum: Callable[[torch.Tensor], torch.Tensor]  # sum over ranks (identity on one process)
    select_dtype: torch.dtype = torch.float32  # topk: dtype of the matmul that picks the latents
    # every rank's tensor concatenated along dim 0 (identity on one process)
    all_cat: Callable[[torch.Tensor], torch.Tensor] = lambda t: t


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar, this rank's share of the global mean loss
    sq_err: torch.Tensor  # scalar, sum of squared error over this rank's rows (detached)
    aux: torch.Tensor  # scalar, auxiliary/sparsity term before its coefficient (detached)
    active: torch.Tensor  # scalar, number of active (row, latent) pairs on this rank
    fired: torch.Tensor  # (d_sae,) bool, latents active on some row of this rank
    min_kept: torch.Tensor  # scalar, batchtopk: smallest kept activation (inf otherwise)


_INF = float("inf")


def _fired(idx: torch.Tensor, vals: torch.Tensor, d_sae: int) -> torch.Tensor:
    fired = torch.zeros(d_sae, dtype=torch.bool, device=idx.device)
    fired[idx[vals > 0]] = True
    return fired


def _aux_loss(
    sae: SAE, e_hat: torch.Tensor, residual: torch.Tensor, ctx: LossContext
) -> torch.Tensor:
    """|e_hat - e|^2 over the global batch's residual variance (this rank's share)."""
    stats = torch.cat([residual.sum(0), residual.pow(2).sum().reshape(1)]).double()
    stats = ctx.all_sum(stats)
    mean = stats[:-1] / ctx.n_global
    total_var = (stats[-1] - ctx.n_global * mean.pow(2).sum()).clamp_min(1e-12)
    return (e_hat - residual).pow(2).sum() / total_var.to(e_hat.dtype)


def _aux_indices(h: torch.Tensor, ctx: LossContext) -> torch.Tensor | None:
    """(n_rows, k_aux') indices of the largest pre-acts among dead latents, or None.

    Searches the dead columns only (usually a few percent of d_sae): gathering them
    costs a fraction of masking the whole (n_rows, d_sae) block and ranking every
    column; with no more dead latents than k_aux, all of them are taken unranked.
    """
    if ctx.aux_coefficient <= 0 or ctx.k_aux <= 0:
        return None
    dead_idx = ctx.dead.nonzero().squeeze(1)  # (n_dead,)
    n_dead = dead_idx.numel()
    if n_dead == 0:
        return None
    n_rows = h.shape[0]
    if n_dead <= ctx.k_aux:
        return dead_idx.expand(n_rows, n_dead).contiguous()
    # torch.topk on the values (not topk_indices' int16 ranks for bfloat16), so that rows
    # with few positive dead pre-activations fill up with the ones closest to zero
    pos = torch.topk(h.index_select(1, dead_idx), ctx.k_aux, dim=1, sorted=False).indices
    return dead_idx[pos]  # (n_rows, k_aux)


def _select_pre_acts(sae: SAE, x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """(x - b_dec) @ W_enc + b_enc in dtype dt, the bias folded into the matmul (as a ones
    column) because adding it to the (n_rows, d_sae) output costs a full extra pass.
    The weights are gathered latent-major, (d_sae, d_in + 1): a plain copy when W_enc is
    stored that way, as the trainer stores it."""
    n_rows, d_in = x.shape
    x_aug = torch.empty(n_rows, d_in + 1, dtype=dt, device=x.device)
    x_aug[:, :d_in] = x - sae.b_dec
    x_aug[:, d_in] = 1.0
    w_aug = torch.empty(sae.cfg.d_sae, d_in + 1, dtype=dt, device=x.device)
    w_aug[:, :d_in] = sae.W_enc.t()
    w_aug[:, d_in] = sae.b_enc
    return x_aug @ w_aug.t()


def topk_loss(sae: SAE, x: torch.Tensor, ctx: LossContext) -> LossOutput:
    k = int(ctx.k or 0)
    dt = ctx.select_dtype
    with torch.no_grad():
        # which latents: one dense matmul (in bfloat16 if asked: several times faster on
        # CPUs with AMX and on GPUs); their values are then computed exactly in float32
        h = _select_pre_acts(sae, x, dt)  # (n_rows, d_sae)
        idx = topk_indices(h, k)  # (n_rows, k)
        aux_idx = _aux_indices(h, ctx)
    all_idx = idx if aux_idx is None else torch.cat([idx, aux_idx], dim=1)
    exact = h if h.dtype == x.dtype else None
    sel = sparse_encode(x, sae.b_dec, sae.W_enc, sae.b_enc, all_idx, exact)  # (n_rows, k + k_aux)
    del h, exact
    vals = torch.relu(sel[:, :k])  # (n_rows, k)
    x_hat = sparse_decode(idx, vals, sae.W_dec) + sae.b_dec
    sq_err = (x_hat - x).pow(2).sum()
    loss = sq_err / ctx.n_global
    aux = torch.zeros((), device=x.device)
    if aux_idx is not None:
        residual = (x - x_hat).detach()
        e_hat = sparse_decode(aux_idx, torch.relu(sel[:, k:]), sae.W_dec)
        aux = _aux_loss(sae, e_hat, residual, ctx)
        loss = loss + ctx.aux_coefficient * aux
    active = (vals > 0).sum()
    return LossOutput(
        loss,
        sq_err.detach(),
        aux.detach(),
        active,
        _fired(idx, vals.detach(), sae.cfg.d_sae),
        torch.tensor(_INF),
    )


def batchtopk_loss(sae: SAE, x: torch.Tensor, ctx: LossContext) -> LossOutput:
    n_rows, d_sae = x.shape[0], sae.cfg.d_sae
    h = sae.pre_activations(x)  # (n_rows, d_sae)
    acts = torch.relu(h)
    flat = acts.reshape(-1)
    with torch.no_grad():
        # the k * n_global largest activations of the *global* batch: each rank offers its
        # own largest ones, and every rank finds the same cut-off among all offers
        n_keep = int(ctx.k or 0) * ctx.n_global
        # (an activation tied with the cut-off is kept too, so a batch with duplicate rows
        # can keep a few more than k * n_global)
        kept_vals = torch.topk(flat, min(n_keep, flat.numel()), sorted=False).values
        offers = ctx.all_cat(kept_vals)
        if offers.numel() > kept_vals.numel():  # several ranks
            kept_vals = torch.topk(offers, min(n_keep, offers.numel()), sorted=False).values
        positive = kept_vals[kept_vals > 0]
        min_kept = positive.min() if len(positive) else torch.tensor(_INF)
        keep = (flat >= min_kept) & (flat > 0)
        aux_idx = _aux_indices(h, ctx)
    z = (flat * keep).view(n_rows, d_sae)
    x_hat = z @ sae.W_dec + sae.b_dec
    sq_err = (x_hat - x).pow(2).sum()
    loss = sq_err / ctx.n_global
    aux = torch.zeros((), device=x.device)
    if aux_idx is not None:
        residual = (x - x_hat).detach()
        e_hat = sparse_decode(aux_idx, torch.relu(h.gather(1, aux_idx)), sae.W_dec)
        aux = _aux_loss(sae, e_hat, residual, ctx)
        loss = loss + ctx.aux_coefficient * aux
    keep2 = keep.view(n_rows, d_sae)
    return LossOutput(
        loss, sq_err.detach(), aux.detach(), keep2.sum(), keep2.any(0), min_kept.detach()
    )


def _penalised(
    sae: SAE, x: torch.Tensor, z: torch.Tensor, penalty: torch.Tensor, ctx: LossContext
) -> LossOutput:
    """Dense decode of codes z (n_rows, d_sae); loss = (squared error + coef * penalty) / n."""
    x_hat = z @ sae.W_dec + sae.b_dec
    sq_err = (x_hat - x).pow(2).sum()
    loss = (sq_err + ctx.sparsity_coefficient * penalty) / ctx.n_global
    active = z.detach() > 0
    return LossOutput(
        loss,
        sq_err.detach(),
        (penalty / ctx.n_global).detach(),
        active.sum(),
        active.any(0),
        torch.tensor(_INF),
    )


def relu_loss(sae: SAE, x: torch.Tensor, ctx: LossContext) -> LossOutput:
    z = torch.relu(sae.pre_activations(x))  # (n_rows, d_sae)
    l1 = (z * sae.W_dec.norm(dim=1)).sum()
    return _penalised(sae, x, z, l1, ctx)


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLU(Function):
    """z = h * H(h - t); dz/dh = H(h - t); dz/dt = -(t / eps) * K((h - t) / eps)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, t: torch.Tensor, eps: float):  # type: ignore[override]
        ctx.save_for_backward(h, t)
        ctx.eps = eps
        return h * (h > t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        h, t = ctx.saved_tensors
        eps = ctx.eps
        grad_h = grad * (h > t)
        grad_t = (grad * (-t / eps) * _rectangle((h - t) / eps)).sum(0)
        return grad_h, grad_t, None


class Step(Function):
    """H(h - t); no gradient to h; dH/dt = -(1 / eps) * K((h - t) / eps)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, t: torch.Tensor, eps: float):  # type: ignore[override]
        ctx.save_for_backward(h, t)
        ctx.eps = eps
        return (h > t).to(h.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        h, t = ctx.saved_tensors
        eps = ctx.eps
        grad_t = (grad * (-1.0 / eps) * _rectangle((h - t) / eps)).sum(0)
        return None, grad_t, None


def jumprelu_loss(
    sae: SAE, x: torch.Tensor, ctx: LossContext, log_threshold: torch.Tensor
) -> LossOutput:
    h = sae.pre_activations(x)  # (n_rows, d_sae)
    t = log_threshold.exp()  # (d_sae,) float32; autograd supplies d t / d log_t = t
    z = JumpReLU.apply(h, t.to(h.dtype), ctx.bandwidth)
    l0 = Step.apply(h, t.to(h.dtype), ctx.bandwidth).sum()
    return _penalised(sae, x, z, l0, ctx)
