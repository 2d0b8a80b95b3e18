"""ReLU + L1: z = relu(h); loss = mse + l1 * penalty.

Two penalties (`--relu-l1`):
- `unit_decoder` (default): decoder rows are kept at unit norm (gradient parallel to
  each row removed, rows renormalised after every step) and the penalty is sum_j z_j.
  Weighting z_j by ||W_dec_j|| would change nothing here: every norm is 1.
- `decoder_norm` (Anthropic, "Towards Monosemanticity" update of April 2024): decoder
  rows are left free and the penalty is sum_j z_j * ||W_dec_j||, so a latent cannot
  dodge the penalty by shrinking its code and growing its decoder row. The saved SAE
  has the norms folded into the encoder (z_j * ||W_dec_j||, unit rows): same x_hat.
Sparse path: once at most 1/32 of the codes are positive (rare for ReLU), decode
and backward go through the positive codes only.
SAELens: architecture "standard".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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

RELU_L1 = ("unit_decoder", "decoder_norm")


@dataclass(frozen=True)
class ReluOptions(CommonOptions):
    l1_coefficient: float = option(
        0.1, "relu: weight of the L1 penalty (on unit-mean-square inputs)"
    )
    relu_l1: str = option(
        "unit_decoder",
        "relu: unit_decoder = unit-norm decoder rows, L1 of the codes; decoder_norm = "
        "decoder rows free, L1 of codes times their decoder row norms (Anthropic, April 2024)",
        choices=RELU_L1,
    )


class Relu(Architecture):
    name = "relu"
    summary = "z = relu(h); mse + l1 * L1 (--relu-l1 chooses the decoder-norm handling)"
    options = ReluOptions
    saelens_names = ("standard",)
    reads = frozenset({"sparsity_warmup_steps", "sparse_backward"})

    def sparsify(self, sae: SAE, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h)

    def check_train(self, cfg: TrainConfig) -> None:
        if not cfg.l1_coefficient >= 0:  # NaN too
            raise SaescopeError(f"l1_coefficient must be >= 0, got {cfg.l1_coefficient}")
        if cfg.relu_l1 == "unit_decoder" and not cfg.unit_norm_decoder:
            raise SaescopeError(
                "relu_l1=unit_decoder needs unit_norm_decoder=true (an L1 on the codes of free "
                "decoder rows is dodged by growing the rows); use --relu-l1 decoder_norm"
            )

    def unit_norm_decoder(self, cfg: TrainConfig) -> bool:
        return cfg.relu_l1 == "unit_decoder"

    def sparsity_coefficient(self, cfg: TrainConfig) -> float:
        return float(cfg.l1_coefficient)

    def _weighted(self, ctx: LossContext) -> bool:
        # unit tests call the loss without options: the weighted penalty is right either way
        return ctx.options is None or ctx.options.relu_l1 == "decoder_norm"

    def loss(
        self, sae: SAE, x: torch.Tensor, ctx: LossContext, extra: torch.nn.Parameter | None
    ) -> LossOutput:
        L = lazy_loss
        weighted = self._weighted(ctx)
        h = sae.pre_activations(x)  # (n_rows, d_sae)
        on = h.detach() > 0
        if not L.use_sparse(ctx, int(on.sum()), on.numel()):
            z = torch.relu(h)
            l1 = (z * sae.W_dec.norm(dim=1)).sum() if weighted else z.sum()
            return L.penalised(sae, x, z, l1, ctx)
        rg = L.ragged_of(on)  # the positive pre-activations
        vals = torch.relu(L.active_pre_acts(sae, x, rg, h.detach()))  # (nnz,)
        del h, on
        l1 = (vals * sae.W_dec.norm(dim=1)[rg.feats]).sum() if weighted else vals.sum()
        return L.penalised_sparse(sae, x, rg, vals, l1, ctx)

    def prepare_export(self, sae: SAE, cfg: TrainConfig) -> None:
        if cfg.relu_l1 != "decoder_norm":
            return
        with torch.no_grad():  # z_j * n_j with unit rows: relu commutes with n_j > 0
            norms = sae.W_dec.norm(dim=1).clamp_min(1e-12)  # (d_sae,)
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])

    def to_saelens(self, cfg: SAEConfig) -> SaelensMapping:
        return SaelensMapping("standard", {})

    def from_saelens(
        self, raw: dict[str, Any], details: dict[str, Any], source: str
    ) -> tuple[Any, dict[str, Any]]:
        return None, {}


ARCH = Relu()
