"""TopK (Gao et al. 2024): z = the k largest of h per row, then relu; mse + aux * AuxK.

Training picks the k latents with one dense matmul under no_grad (in bfloat16 where
`--select-precision` says so; on CPU a chunk of rows at a time), then computes their
values exactly and decodes and back-propagates through them only
(`saescope.sae.kernels`); AuxK goes through the dead latents' positive pairs only.
Inference can skip the dense codes (`encode_sparse`). SAELens: architecture "topk"
with `k`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from saescope.errors import SaescopeError
from saescope.sae.archs.base import Architecture, SaelensMapping, lazy_loss

if TYPE_CHECKING:
    import torch

    from saescope.sae.archs._loss import LossContext, LossOutput
    from saescope.sae.config import SAEConfig
    from saescope.sae.model import SAE
else:
    from saescope.sae.archs.base import lazy_torch as torch


class Selection(NamedTuple):
    """A step's latents, chosen without grad, and their pre-activations in the selection
    dtype (exact when it is the inputs' dtype)."""

    idx: torch.Tensor  # (n_rows, k) the k largest pre-activations of each row
    vals: torch.Tensor  # (n_rows, k) those pre-activations
    aux_idx: torch.Tensor | None  # (n_rows, m) AuxK: the largest among dead latents
    aux_pre: torch.Tensor | None  # (n_rows, m) their pre-activations


def select(sae: SAE, x: torch.Tensor, ctx: LossContext) -> Selection:
    """The k largest pre-activations of every row, from one dense matmul (in bfloat16 if
    asked: several times faster on CPUs with AMX and on GPUs), a chunk of rows at a time
    on CPU so that the search reads the pre-activations while they are in cache; the
    (n_rows, d_sae) matrix is never whole."""
    from saescope.sae.kernels import topk_indices

    L = lazy_loss
    k = int(ctx.k or 0)
    n_rows = x.shape[0]
    with torch.no_grad():
        x_aug, w_aug = L.augmented(sae, x, ctx.select_dtype)
        w_t = w_aug.t()
        step = L.chunk_rows(n_rows, sae.cfg.d_sae, ctx.select_dtype, x.device)
        idx = torch.empty(n_rows, k, dtype=torch.int64, device=x.device)
        vals = torch.empty(n_rows, k, dtype=ctx.select_dtype, device=x.device)
        aux_parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        for start in range(0, n_rows, step):
            stop = min(n_rows, start + step)
            h = x_aug[start:stop] @ w_t  # (rows, d_sae)
            top = topk_indices(h, k)
            idx[start:stop] = top
            vals[start:stop] = h.gather(1, top)
            aux_idx = L.aux_indices(h, ctx)
            if aux_idx is not None:
                aux_parts.append((aux_idx, h.gather(1, aux_idx)))
    if not aux_parts:
        return Selection(idx, vals, None, None)
    return Selection(
        idx, vals, torch.cat([a for a, _ in aux_parts]), torch.cat([p for _, p in aux_parts])
    )


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
        from saescope.sae.kernels import sparse_decode

        L = lazy_loss
        sel = select(sae, x, ctx)
        aux_pairs = L.aux_pairs(sae, x, sel.aux_idx, sel.aux_pre)
        pre, aux_codes = L.gather_pre_acts(sae, x, sel.idx, sel.vals, aux_pairs)
        vals = torch.relu(pre)  # (n_rows, k)
        x_hat = sparse_decode(sel.idx, vals, sae.W_dec) + sae.b_dec
        sq_err = L.squared_error(x_hat, x)
        loss, aux = L.add_aux(sq_err / ctx.n_global, sae, x, x_hat, aux_codes, ctx)
        return L.LossOutput(
            loss,
            sq_err.detach(),
            aux.detach(),
            (vals > 0).sum(),
            L.fired_of(sel.idx, vals.detach(), sae.cfg.d_sae),
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
