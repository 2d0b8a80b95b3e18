"""TopK (Gao et al. 2024): z = the k largest of h per row, then relu; mse + aux * AuxK.

Training picks the k latents with one dense matmul under no_grad (in bfloat16 where
`--select-precision` says so), then computes their values exactly and decodes and
back-propagates through them only (`saescope.sae.kernels`). Inference can skip the
dense codes (`encode_sparse`). SAELens: architecture "topk" with `k`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saescope.errors import SaescopeError
from saescope.sae.archs.base import Architecture, SaelensMapping, lazy_loss

if TYPE_CHECKING:
    import torch

    from saescope.sae.archs._loss import LossContext, LossOutput
    from saescope.sae.config import SAEConfig
    from saescope.sae.model import SAE
else:
    from saescope.sae.archs.base import lazy_torch as torch


class TopK(Architecture):
    name = "topk"
    summary = "z = the k largest of relu(h) per row; mse + aux * AuxK (sparse backward)"
    uses_k = True
    saelens_names = ("topk",)

    def sparsify(self, sae: SAE, h: torch.Tensor) -> torch.Tensor:
        vals, idx = torch.topk(h, int(sae.cfg.k or 0), dim=-1, sorted=False)
        return torch.zeros_like(h).scatter_(-1, idx, torch.relu(vals))

    def encode_sparse(
        self, sae: SAE, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The k largest pre-activations of each row, then relu, exactly as `sparsify`
        does before scattering them into a dense matrix."""
        from saescope.sae.sparse import one_thread

        xs, _, _ = sae._standardize(x.to(sae.W_enc.dtype))
        h = sae.pre_activations(xs)  # (batch, d_sae)
        vals, idx = torch.topk(h, int(sae.cfg.k or 0), dim=-1, sorted=False)  # (batch, k)
        with one_thread():
            idx, order = torch.sort(idx, dim=1)
            vals = torch.relu(vals.gather(1, order))
            keep = vals > 0
            rows = torch.arange(len(x), device=x.device).unsqueeze(1).expand_as(idx)[keep]
            return rows, idx[keep], vals[keep]

    def loss(
        self, sae: SAE, x: torch.Tensor, ctx: LossContext, extra: torch.nn.Parameter | None
    ) -> LossOutput:
        from saescope.sae.kernels import sparse_decode, topk_indices

        L = lazy_loss
        k = int(ctx.k or 0)
        with torch.no_grad():
            # which latents: one dense matmul (in bfloat16 if asked: several times faster on
            # CPUs with AMX and on GPUs); their values are then computed exactly in float32
            h = L.select_pre_acts(sae, x, ctx.select_dtype)  # (n_rows, d_sae)
            idx = topk_indices(h, k)  # (n_rows, k)
            aux_idx = L.aux_indices(h, ctx)
        all_idx = idx if aux_idx is None else torch.cat([idx, aux_idx], dim=1)
        sel = L.gather_pre_acts(sae, x, all_idx, h)  # (n_rows, k + k_aux)
        del h
        vals = torch.relu(sel[:, :k])  # (n_rows, k)
        x_hat = sparse_decode(idx, vals, sae.W_dec) + sae.b_dec
        sq_err = L.squared_error(x_hat, x)
        aux_pre = None if aux_idx is None else sel[:, k:]
        loss, aux = L.add_aux(sq_err / ctx.n_global, sae, x, x_hat, aux_idx, aux_pre, ctx)
        return L.LossOutput(
            loss,
            sq_err.detach(),
            aux.detach(),
            (vals > 0).sum(),
            L.fired_of(idx, vals.detach(), sae.cfg.d_sae),
            torch.tensor(L.INF),
        )

    def to_saelens(self, cfg: SAEConfig) -> SaelensMapping:
        return SaelensMapping("topk", {"k": cfg.k, "rescale_acts_by_decoder_norm": False})

    def from_saelens(
        self, raw: dict[str, Any], details: dict[str, Any], source: str
    ) -> tuple[Any, dict[str, Any]]:
        k = raw.get("k")
        if k is None:
            raise SaescopeError(f"{source}: architecture 'topk' needs 'k'")
        return k, {}


ARCH = TopK()
