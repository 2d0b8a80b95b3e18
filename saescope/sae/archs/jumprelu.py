"""JumpReLU (Rajamanoharan et al. 2024): z = relu(h) * (h > t), t learned per latent.

Loss: mse + l0 * L0 with straight-through estimators: the threshold gets the
rectangle-kernel pseudo-derivative of bandwidth eps, the chain rule through
t = exp(log_threshold) is left to autograd (so d/dlog_t = t * d/dt). The log
threshold is a float32 parameter trained beside the weights and saved as `threshold`.
It starts where the init sample keeps `--jumprelu-init-l0` latents a row, with the
encoder scaled to fit those codes (`fitted_start`).
With `--jumprelu-target-l0` T the L0 term is c * (L0 / T - 1)^2 of the global batch's
mean L0 instead, which pushes L0 towards T from either side (`target_l0_penalty`). On
the mean, not on each row: SAELens's quadratic mode (GemmaScope 2's) penalises every
row's (L0_row - T)^2, which also pulls each row towards T whatever it holds. The
threshold alone takes its gradient, as with the linear term (passing it to the encoder
as well reached T in fewer steps but cost 0.12 NMSE and 16% dead latents in 40 steps on
MiniLM sentences). L0 first dips below T while the encoder settles and reaches it after
about 150 steps of 4096 there.
Dead latents (silent for `dead_after_samples` rows) add Anthropic's pre-activation
loss, pre_act * sum relu(t - h) * |W_dec row| (`dead_pre_act_loss`), their only gradient.
Sparse path: the (row, latent) pairs that are active (h > t) or inside the kernel
window (|h - t| < eps / 2) are the only ones with an MSE or L0 gradient; when they are at most
1/8 of all pairs, they are gathered and decoded and back-propagated through alone.
SAELens: architecture "jumprelu" with `threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from saescope.config import option
from saescope.errors import SaescopeError
from saescope.sae.archs.base import Architecture, CommonOptions, SaelensMapping, lazy_loss

if TYPE_CHECKING:
    import torch

    from saescope.sae.archs._loss import LossContext, LossOutput
    from saescope.sae.config import SAEConfig
    from saescope.sae.model import SAE
    from saescope.train.config import TrainConfig
else:
    from saescope.sae.archs.base import lazy_torch as torch


# The weight c of the target term c * (L0 / T - 1)^2. Adam scales each threshold's step by
# its gradient's size, so c matters little: MiniLM sentences (d_sae 3072, T 32, 256 steps of
# 4096) ended at train L0 33.3 with c 1, 32.5 with c 4 and with c 16 (linear default: 22.6).
TARGET_COEFFICIENT = 4.0


@dataclass(frozen=True)
class JumpReLUOptions(CommonOptions):
    l0_coefficient: float = option(3e-3, "jumprelu: weight of the L0 penalty")
    jumprelu_bandwidth: float = option(
        1e-3, "jumprelu: width epsilon of the rectangle kernel of the straight-through estimator"
    )
    jumprelu_init_threshold: float = option(
        0.05,
        "jumprelu: initial threshold of every latent (inputs have unit mean square norm) "
        "when --jumprelu-init-l0 is 0",
    )
    jumprelu_init_l0: float = option(
        32.0,
        "jumprelu: the mean L0 training starts at: the initial threshold keeps that many "
        "latents a row of the init sample, and the encoder is scaled to reconstruct it "
        "best (0: start at --jumprelu-init-threshold, encoder unscaled; with "
        "--jumprelu-target-l0 training starts at the target instead)",
    )
    jumprelu_target_l0: float = option(
        0.0,
        "jumprelu: aim training at this mean L0: the L0 term becomes "
        "--jumprelu-target-coefficient * (L0 / target - 1)^2 of the batch's mean L0, which "
        "pushes L0 down above the target and up below it (0: off, the linear penalty "
        "--l0-coefficient * L0)",
    )
    jumprelu_target_coefficient: float = option(
        TARGET_COEFFICIENT,
        "jumprelu: weight of the (L0 / target - 1)^2 term when --jumprelu-target-l0 is set",
    )
    pre_act_coefficient: float = option(
        1e-3,
        "jumprelu: weight of the pre-activation loss on dead latents (Anthropic's): "
        "sum of relu(threshold - h) * |W_dec row|, which lifts their pre-activations towards "
        "the threshold and lowers it; 0: off",
    )


class JumpReLU(Architecture):
    name = "jumprelu"
    summary = "z = relu(h) * (h > t), t learned per latent; mse + l0 * L0 (straight-through)"
    options = JumpReLUOptions
    has_threshold = True
    homogeneous = False  # the threshold breaks the scaling of codes with W_enc
    saelens_names = ("jumprelu",)
    reads = frozenset({"sparsity_warmup_steps", "sparse_backward"})

    def sparsify(self, sae: SAE, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h) * (h > sae.threshold.to(h.dtype))

    def check_train(self, cfg: TrainConfig) -> None:
        if cfg.jumprelu_bandwidth <= 0 or cfg.jumprelu_init_threshold <= 0:
            raise SaescopeError("jumprelu_bandwidth and jumprelu_init_threshold must be > 0")
        if cfg.pre_act_coefficient < 0:
            raise SaescopeError("pre_act_coefficient must be >= 0")
        if cfg.jumprelu_init_l0 < 0:
            raise SaescopeError("jumprelu_init_l0 must be >= 0")
        smallest = min(int(d) for d in cfg.d_sae)
        if not 0 <= cfg.jumprelu_target_l0 < smallest:
            raise SaescopeError(
                f"jumprelu_target_l0 must be 0 (off) or below d_sae ({smallest}), "
                f"not {cfg.jumprelu_target_l0}"
            )
        if cfg.jumprelu_target_coefficient <= 0:
            raise SaescopeError("jumprelu_target_coefficient must be > 0")

    def sparsity_coefficient(self, cfg: TrainConfig) -> float:
        if cfg.jumprelu_target_l0 > 0:
            return float(cfg.jumprelu_target_coefficient)
        return float(cfg.l0_coefficient)

    def init(self, sae: SAE, sample: torch.Tensor, cfg: TrainConfig | None) -> None:
        if cfg is None or sample.shape[0] == 0:
            return
        start = cfg.jumprelu_target_l0 if cfg.jumprelu_target_l0 > 0 else cfg.jumprelu_init_l0
        if start <= 0:
            return
        t, scale = fitted_start(sae, sample, float(start))
        with torch.no_grad():
            sae.W_enc.mul_(scale)  # b_enc is 0: h scales by `scale`, the active set is kept
            sae.threshold.fill_(t * scale)

    def extra_parameter(
        self, cfg: TrainConfig, sae: SAE, device: torch.device
    ) -> torch.nn.Parameter:
        fitted = sae.threshold.detach().float()
        start = (
            fitted
            if bool((fitted > 0).all())
            else torch.full_like(fitted, cfg.jumprelu_init_threshold)
        )
        return torch.nn.Parameter(start.log().to(device))

    def loss(
        self, sae: SAE, x: torch.Tensor, ctx: LossContext, extra: torch.nn.Parameter | None
    ) -> LossOutput:
        if extra is None:
            raise SaescopeError("jumprelu training needs its log threshold")
        out = self._loss(sae, x, ctx, extra)
        coef = float(getattr(ctx.options, "pre_act_coefficient", 0.0))
        pre = dead_pre_act_loss(sae, x, extra.exp(), ctx.dead) if coef > 0 else None
        return out if pre is None else out._replace(loss=out.loss + coef * pre / ctx.n_global)

    def _loss(
        self, sae: SAE, x: torch.Tensor, ctx: LossContext, extra: torch.nn.Parameter
    ) -> LossOutput:
        L = lazy_loss
        eps = ctx.bandwidth
        t = extra.exp()  # (d_sae,) float32; autograd supplies d t / d log_t = t
        h = sae.pre_activations(x)  # (n_rows, d_sae)
        with torch.no_grad():
            t_h = t.detach().to(h.dtype)
            # pairs with a gradient: active ones, and those inside the kernel window
            live = (h.detach() > t_h) | ((h.detach() - t_h).abs() < eps / 2)
        # its dense straight-through estimators cost more than ReLU's relu: sparse pays
        # from 1/8 of the pairs (9% active: 1.8x faster measured)
        if not L.use_sparse(ctx, int(live.sum()), live.numel(), ratio=8):
            z = L.JumpReLU.apply(h, t.to(h.dtype), eps)
            l0 = L.Step.apply(h, t.to(h.dtype), eps).sum()
            return L.penalised(sae, x, z, self._penalty(l0, x, ctx), ctx)
        rg = L.ragged_of(live)
        h_sel = L.active_pre_acts(sae, x, rg, h.detach())  # (nnz,)
        del h, live
        t_sel = t.to(h_sel.dtype)[rg.feats]  # (nnz,), gradient scattered back to t
        z = L.JumpReLU.apply(h_sel, t_sel, eps)
        l0 = L.Step.apply(h_sel, t_sel, eps).sum()
        return L.penalised_sparse(sae, x, rg, z, self._penalty(l0, x, ctx), ctx)

    @staticmethod
    def _penalty(l0: torch.Tensor, x: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """This rank's L0 term (the trainer weighs it by the sparsity coefficient and
        divides by the global batch): l0 itself, or with a target `target_l0_penalty`."""
        target = float(getattr(ctx.options, "jumprelu_target_l0", 0.0) or 0.0)
        return l0 if target <= 0 else target_l0_penalty(l0, x.shape[0], target, ctx)

    def inference_threshold(
        self, running: float, extra: torch.nn.Parameter | None, d_sae: int
    ) -> torch.Tensor:
        if extra is None:
            return torch.zeros(d_sae)
        return extra.detach().float().exp().cpu()

    def to_saelens(self, cfg: SAEConfig) -> SaelensMapping:
        return SaelensMapping("jumprelu", {})


def target_l0_penalty(
    l0: torch.Tensor, n_rows: int, target: float, ctx: LossContext
) -> torch.Tensor:
    """This rank's share of n_global * (m / T - 1)^2, m the global batch's mean L0, with
    the gradient of that term reaching `l0` (this rank's straight-through L0 sum):
    d/dl0 = 2 (m / T - 1) / T, so above the target L0 is pushed down, below it up.

    The forward value is this rank's rows' share, n_rows * (m / T - 1)^2, so that the
    logged sparsity term (`aux`, summed over ranks and divided by the global batch) is
    (m / T - 1)^2 itself. One scalar all-reduce a step under torchrun."""
    m = ctx.all_sum(l0.detach().reshape(1)).squeeze(0) / ctx.n_global
    gap = m / target - 1.0
    slope = 2.0 * gap / target
    value = n_rows * gap * gap
    return slope * l0 + (value - slope * l0).detach()


def fitted_start(
    sae: SAE, sample: torch.Tensor, l0: float, max_rows: int = 2048, chunk_rows: int = 256
) -> tuple[float, float]:
    """(t, c): the pre-activation t above which the first `max_rows` sample rows keep `l0`
    latents a row on average, and the least-squares scale c of the encoder for the codes
    h * (h > t), minimising ||(x - b_dec) - c * (x_hat - b_dec)||^2.

    With a fixed start (0.05 on unit-mean-square inputs) the tied encoder's codes were
    about 4x too large (c 0.24) on MiniLM embeddings, and the threshold a loose guess:
    training then shrank the encoder until most latents fell under it, and 40 steps of
    4096 (d_sae 3072) ended at L0 27, held-out NMSE 0.62. Starting at L0 32, fitted so:
    L0 28, NMSE 0.39 (BatchTopK at k 32: 0.37)."""
    with torch.no_grad():
        return _fitted_start(sae, sample[:max_rows].to(sae.W_enc.dtype), l0, chunk_rows)


def _fitted_start(sae: SAE, rows: torch.Tensor, l0: float, chunk_rows: int) -> tuple[float, float]:
    # training-time code, imported on use (saescope.sae does not import the trainer)
    from saescope.train.init import encoder_scale

    n_keep = max(1, int(round(l0 * rows.shape[0])))
    tops = []
    for start in range(0, rows.shape[0], chunk_rows):
        h = sae.pre_activations(rows[start : start + chunk_rows]).reshape(-1)
        tops.append(torch.topk(h, min(n_keep, h.numel()), sorted=False).values)
    cand = torch.cat(tops)
    t = float(torch.topk(cand, min(n_keep, cand.numel()), sorted=False).values.min())
    t = max(t, 1e-6)  # a threshold is positive (it is learned as a log)
    return t, encoder_scale(sae, rows, rows.shape[0], chunk_rows, threshold=t)


def dead_pre_act_loss(
    sae: SAE, x: torch.Tensor, t: torch.Tensor, dead: torch.Tensor
) -> torch.Tensor | None:
    """sum over rows and dead latents j of relu(t_j - h_j) * |W_dec_j| (Anthropic's
    pre-activation loss, on the dead latents only), or None when none is dead.

    A dead latent is below its threshold on every row, so neither the MSE nor the L0
    term reaches its encoder column; this term lifts its pre-activations towards the
    threshold and lowers the threshold. Only the dead columns are computed (a gather of
    n_dead encoder columns), and b_dec, shared by all latents, gets no gradient from it."""
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0:
        return None
    h = (x - sae.b_dec.detach()) @ sae.W_enc.index_select(1, idx) + sae.b_enc[idx]
    gap = torch.relu(t[idx].to(h.dtype) - h)  # (n_rows, n_dead)
    return (gap.sum(0) * sae.W_dec[idx].detach().norm(dim=1)).sum()


ARCH = JumpReLU()
