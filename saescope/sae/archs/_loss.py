"""Loss machinery the architectures share (imports torch; loaded on first training use).

In: an `SAE`, a batch x (n_rows, d_in) of already-normalised inputs (this rank's
slice of the global batch) and a `LossContext`. Out: a `LossOutput` whose `loss` is
this rank's share of the global-batch loss, so summing gradients over ranks (DDP)
gives exactly the single-process gradient. Reconstruction error is the squared error
summed over d_in and averaged over rows.

Pieces: the AuxK loss (Gao et al.: the top k_aux pre-activations among dead latents
reconstruct the residual; its squared error over the residual's total variance), the
JumpReLU straight-through estimators, the dense decode with a penalty, and the
ragged active sets that let BatchTopK, JumpReLU, Matryoshka and ReLU decode and
back-propagate through the active latents only (`_ragged`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.autograd import Function

from saescope.sae.archs._ragged import (  # noqa: F401  (re-exported for the archs)
    Ragged,
    ragged_at,
    ragged_decode,
    ragged_of,
    ragged_pre_acts,
    subset,
)
from saescope.sae.kernels import (
    gather_dots,
    int8_matmul_levels,
    quantize_int8,
    sparse_encode,
    sparse_encode_with_pairs,
)
from saescope.sae.model import SAE

INF = float("inf")
# auto: the sparse path when at most 1 / SPARSE_RATIO of the (row, latent) pairs are active
# (an architecture may pass its own ratio). Measured on a busy 2-core CPU at d_in 384,
# d_sae 3072, 4096 rows, ms per step dense -> sparse: BatchTopK (1% active) 1756 -> 1207,
# JumpReLU (9%) 1798 -> 974, ReLU (6.6%) 1044 -> 1970; quiet, 2026-12-01, Matryoshka
# BatchTopK (1%) 557 -> 242.
SPARSE_RATIO = 32


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
    sparse_backward: str = "auto"  # "auto", "always" or "never" (see CommonOptions)
    options: Any = None  # the TrainConfig, for architecture options (None in unit tests)


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar, this rank's share of the global mean loss
    sq_err: torch.Tensor  # scalar, sum of squared error over this rank's rows (detached)
    aux: torch.Tensor  # scalar, auxiliary/sparsity term before its coefficient (detached)
    active: torch.Tensor  # scalar, number of active (row, latent) pairs on this rank
    fired: torch.Tensor  # (d_sae,) bool, latents active on some row of this rank
    min_kept: torch.Tensor  # scalar, batchtopk: smallest kept activation (inf otherwise)


def fired_of(idx: torch.Tensor, vals: torch.Tensor, d_sae: int) -> torch.Tensor:
    fired = torch.zeros(d_sae, dtype=torch.bool, device=idx.device)
    fired[idx[vals > 0]] = True
    return fired


def aux_loss(e_hat: torch.Tensor, residual: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """|e_hat - e|^2 over the global batch's residual variance (this rank's share)."""
    stats = torch.cat([residual.sum(0), residual.pow(2).sum().reshape(1)]).double()
    stats = ctx.all_sum(stats)
    mean = stats[:-1] / ctx.n_global
    total_var = (stats[-1] - ctx.n_global * mean.pow(2).sum()).clamp_min(1e-12)
    return (e_hat - residual).pow(2).sum() / total_var.to(e_hat.dtype)


def aux_indices(h: torch.Tensor, ctx: LossContext) -> torch.Tensor | None:
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


class AuxPairs(NamedTuple):
    """The AuxK (row, dead latent) pairs of a step that can contribute, chosen without grad."""

    rg: Ragged  # the pairs whose pre-activation is positive, row-major
    at: torch.Tensor  # (nnz,) their exact pre-activations


class AuxCodes(NamedTuple):
    rg: Ragged  # as AuxPairs.rg
    vals: torch.Tensor  # (nnz,) the relu'd pre-activations at rg, with a sparse backward


def aux_pairs(
    sae: SAE, x: torch.Tensor, aux_idx: torch.Tensor | None, aux_pre: torch.Tensor | None
) -> AuxPairs | None:
    """The pairs of the dead latents aux_idx (n_rows, m) that AuxK needs, or None.

    Only the pairs with a positive pre-activation are kept: relu makes the others add
    nothing to e_hat and get no gradient, so dropping them changes no value and no
    gradient. Dead latents' pre-activations are mostly negative, and decoding and
    back-propagating all n_rows * m pairs was a fifth of a TopK step on an LM token
    store (d_sae 4608, 40-66 dead latents in every row). aux_pre (n_rows, m): their
    pre-activations computed without grad; reused when exact (x's dtype), else the m dot
    products per row are computed exactly once to decide which pairs are positive.
    """
    if aux_idx is None:
        return None
    with torch.no_grad():
        if aux_pre is None or aux_pre.dtype != x.dtype:
            aux_pre = gather_dots(x - sae.b_dec, sae.W_enc.t(), aux_idx) + sae.b_enc[aux_idx]
        keep = aux_pre > 0
        return AuxPairs(ragged_at(aux_idx, keep), aux_pre[keep])  # both row-major


def aux_codes(sae: SAE, x: torch.Tensor, pairs: AuxPairs | None) -> AuxCodes | None:
    """The AuxK codes at `pairs`, with grad to the encoder (through the pairs only)."""
    if pairs is None:
        return None
    pre = ragged_pre_acts(x, sae.b_dec, sae.W_enc, sae.b_enc, pairs.rg, at=pairs.at)
    return AuxCodes(pairs.rg, torch.relu(pre))


def add_aux(
    loss: torch.Tensor,
    sae: SAE,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    aux: AuxCodes | None,
    ctx: LossContext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss + aux_coefficient * AuxK, AuxK) where the dead latents' codes `aux` model the
    residual x - x_hat."""
    if aux is None:
        return loss, torch.zeros((), device=x.device)
    residual = (x - x_hat).detach()
    e_hat = ragged_decode(aux.rg, aux.vals, sae.W_dec)
    value = aux_loss(e_hat, residual, ctx)
    return loss + ctx.aux_coefficient * value, value


def augmented(sae: SAE, x: torch.Tensor, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - b_dec | 1) (n_rows, d_in + 1) and (W_enc^T | b_enc) (d_sae, d_in + 1) in dtype dt,
    so that one matmul gives the pre-activations with the bias folded in (adding it to the
    (n_rows, d_sae) output costs a full extra pass). The weights are gathered latent-major:
    a plain copy when W_enc is stored that way, as the trainer stores it."""
    n_rows, d_in = x.shape
    x_aug = torch.empty(n_rows, d_in + 1, dtype=dt, device=x.device)
    x_aug[:, :d_in] = x - sae.b_dec
    x_aug[:, d_in] = 1.0
    w_aug = torch.empty(sae.cfg.d_sae, d_in + 1, dtype=dt, device=x.device)
    w_aug[:, :d_in] = sae.W_enc.t()
    w_aug[:, d_in] = sae.b_enc
    return x_aug, w_aug


def select_pre_acts(sae: SAE, x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """(x - b_dec) @ W_enc + b_enc (n_rows, d_sae) in dtype dt, as `selection_scores`
    computes it (callers hold no_grad)."""
    return selection_scores(sae, x, dt)(0, x.shape[0])


def selection_scores(
    sae: SAE, x: torch.Tensor, dt: torch.dtype
) -> Callable[[int, int], torch.Tensor]:
    """A function (start, stop) -> the pre-activations of rows start:stop (rows, d_sae),
    computed in the selection dtype dt (callers hold no_grad):

    - float32 / bfloat16: one matmul of the `augmented` operands, in dt;
    - int8: x - b_dec and W_enc quantized each row / latent on its own range
      (`quantize_int8`; W_enc within the range this CPU's int8 product keeps exact,
      `int8_matmul_levels`), one exact int32 product (`torch._int_mm`), then scaled back
      to float32 plus b_enc. The values are approximate, the dtype is float32.
    """
    if dt != torch.int8:
        x_aug, w_aug = augmented(sae, x, dt)
        w_t = w_aug.t()
        return lambda start, stop: x_aug[start:stop] @ w_t
    levels = int8_matmul_levels()
    xq, x_scale = quantize_int8(x - sae.b_dec)  # (n_rows, d_in), (n_rows, 1)
    wq, w_scale = quantize_int8(sae.W_enc.t(), levels)  # (d_sae, d_in), (d_sae, 1)
    w_scale_t = w_scale.t()  # (1, d_sae)
    wq_t = wq.t()
    b_enc = sae.b_enc.detach()

    def scores(start: int, stop: int) -> torch.Tensor:
        acc = torch._int_mm(xq[start:stop], wq_t)  # (rows, d_sae) int32, exact
        # int32 * float32 -> float32 in one pass, then one fused multiply-add
        return torch.addcmul(b_enc, acc * w_scale_t, x_scale[start:stop])

    return scores


def rerank_width(k: int, d_sae: int, dt: torch.dtype) -> int:
    """Candidates an approximate selection keeps per row before the k with the largest
    exact pre-activations are taken: k + max(4, k / 8) for bfloat16, k + max(8, k / 2)
    for int8. On MiniLM embeddings (d_sae 3072, k 32, 4096 held-out rows of a trained
    SAE) bfloat16 alone missed an exact top-k latent in 15.5% of rows; bfloat16 with 34
    candidates missed one in 350 rows, with 36 none. int8 (rows and latents each on their
    own range; 4096 rows of the demo SAE, 2026-12-01) alone missed one in 34.9% of rows
    with W_enc within 127, 50.4% within 64 (`int8_matmul_levels`), with 40 candidates in
    none / 0.02%, with 48 in none. On SmolLM2 token rows (resid_post.15, row-standardised,
    d_sae 4608, k 32): bfloat16 alone 12.8% of rows, with 36 candidates none; int8 alone
    87%, with 40 candidates 0.3% / 0.6%, with 44 and 48 none. Each extra candidate costs
    top-k width: on an AMX CPU 40 of them made the step 9% slower than 32."""
    extra = max(4, k // 8) if dt == torch.bfloat16 else max(8, k // 2)
    return min(d_sae, k + extra)


# Rows of pre-activations a CPU selection handles at a time (`chunk_rows`): about 8 MiB of
# them, so that the top-k search reads what the matmul just wrote while it is in cache.
# At 4096 rows on 2 AVX-512 cores, matmul + top-k + gather, ms whole -> chunked: d_sae 4608
# 113 -> 96 (448 rows), d_sae 3072 74 -> 63 (640), d_sae 12288 (k 64) 231 -> 186 (160).
CHUNK_BYTES = 8 << 20


def chunk_rows(n_rows: int, d_sae: int, dtype: torch.dtype, device: torch.device) -> int:
    """Rows per chunk of a selection matmul: all of them off CPU, else `CHUNK_BYTES` worth
    (a multiple of 32, at least 32)."""
    if device.type != "cpu":
        return n_rows
    per_row = d_sae * (4 if dtype == torch.int8 else dtype.itemsize)  # int8: int32 out
    return max(32, CHUNK_BYTES // per_row // 32 * 32)


def use_sparse(ctx: LossContext, nnz: int, n_dense: int, ratio: int = SPARSE_RATIO) -> bool:
    """Whether a step with nnz active (row, latent) pairs out of n_dense takes the sparse
    path (decode and backward through the active pairs only); auto: nnz * ratio <= n_dense."""
    if ctx.sparse_backward == "always":
        return True
    if ctx.sparse_backward == "never":
        return False
    return nnz * ratio <= n_dense


def gather_pre_acts(
    sae: SAE,
    x: torch.Tensor,
    idx: torch.Tensor,
    values: torch.Tensor | None,
    aux: AuxPairs | None = None,
) -> tuple[torch.Tensor, AuxCodes | None]:
    """(n_rows, m) pre-activations at latents idx (n_rows, m) with a sparse backward, and
    the AuxK codes at `aux` through the same backward (one W_enc gradient for both);
    values: the pre-activations at idx computed without grad, reused when exact."""
    exact = values if values is not None and values.dtype == x.dtype else None
    if aux is None:
        return sparse_encode(x, sae.b_dec, sae.W_enc, sae.b_enc, idx, exact), None
    main, pre = sparse_encode_with_pairs(
        x, sae.b_dec, sae.W_enc, sae.b_enc, idx, exact, aux.rg.rows, aux.rg.feats, aux.at
    )
    return main, AuxCodes(aux.rg, torch.relu(pre))


def active_pre_acts(sae: SAE, x: torch.Tensor, rg: Ragged, h: torch.Tensor | None) -> torch.Tensor:
    """(nnz,) pre-activations at the active pairs rg with a sparse backward; h: the dense
    pre-activations computed without grad, reused when they are exact (same dtype)."""
    exact = h if h is not None and h.dtype == x.dtype else None
    return ragged_pre_acts(x, sae.b_dec, sae.W_enc, sae.b_enc, rg, exact)


def squared_error(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_hat - x).pow(2).sum()


def penalised(
    sae: SAE, x: torch.Tensor, z: torch.Tensor, penalty: torch.Tensor, ctx: LossContext
) -> LossOutput:
    """Dense decode of codes z (n_rows, d_sae); loss = (squared error + coef * penalty) / n."""
    x_hat = z @ sae.W_dec + sae.b_dec
    sq_err = squared_error(x_hat, x)
    loss = (sq_err + ctx.sparsity_coefficient * penalty) / ctx.n_global
    active = z.detach() > 0
    return LossOutput(
        loss,
        sq_err.detach(),
        (penalty / ctx.n_global).detach(),
        active.sum(),
        active.any(0),
        torch.tensor(INF),
    )


def penalised_sparse(
    sae: SAE,
    x: torch.Tensor,
    rg: Ragged,
    vals: torch.Tensor,
    penalty: torch.Tensor,
    ctx: LossContext,
) -> LossOutput:
    """`penalised` for codes given at the active pairs rg, vals (nnz,)."""
    x_hat = ragged_decode(rg, vals, sae.W_dec) + sae.b_dec
    sq_err = squared_error(x_hat, x)
    loss = (sq_err + ctx.sparsity_coefficient * penalty) / ctx.n_global
    on = vals.detach() > 0
    return LossOutput(
        loss,
        sq_err.detach(),
        (penalty / ctx.n_global).detach(),
        on.sum(),
        fired_of(rg.feats, vals.detach(), sae.cfg.d_sae),
        torch.tensor(INF),
    )


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)


def _to_shape(grad_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Sum a per-entry threshold gradient over the rows a (d_sae,) threshold was broadcast to."""
    return grad_t if grad_t.shape == t.shape else grad_t.sum(0)


class JumpReLU(Function):
    """z = h * H(h - t); dz/dh = H(h - t); dz/dt = -(t / eps) * K((h - t) / eps).

    t is (d_sae,) broadcast over the rows of h, or one threshold per entry of h (the
    sparse path gathers them), in which case its gradient is per entry too."""

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
        grad_t = _to_shape(grad * (-t / eps) * _rectangle((h - t) / eps), t)
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
        grad_t = _to_shape(grad * (-1.0 / eps) * _rectangle((h - t) / eps), t)
        return None, grad_t, None
