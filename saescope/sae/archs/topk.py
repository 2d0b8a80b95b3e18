"""TopK (Gao et al. 2024): z = the k largest of h per row, then relu; mse + aux * AuxK.

Training picks the k latents with one dense matmul under no_grad (in bfloat16 or int8
where `--select-precision` says so, then reranking k + max(4, k/8) or k + max(8, k/2)
candidates by their exact values; on CPU a chunk of rows at a time), and decodes and
back-propagates through them only (`saescope.sae.kernels`); AuxK goes through the
dead latents' positive pairs only.
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
    """A step's latents, chosen without grad, and their exact (float32) pre-activations."""

    idx: torch.Tensor  # (n_rows, k) the k largest pre-activations of each row
    vals: torch.Tensor  # (n_rows, k) those pre-activations, exact
    aux_idx: torch.Tensor | None  # (n_rows, m) AuxK: the largest among dead latents
    aux_pre: torch.Tensor | None  # (n_rows, m) their exact pre-activations (None: not known)


def select(sae: SAE, x: torch.Tensor, ctx: LossContext) -> Selection:
    """The k largest pre-activations of every row, from one dense matmul, a chunk of rows
    at a time on CPU so that the search reads the pre-activations while they are in
    cache (the (n_rows, d_sae) matrix is never whole).

    In float32 the matmul's values are the exact ones. In bfloat16 or int8 (several times
    faster on CPUs with AMX, on GPUs, and where int8 products outrun float32 ones) the
    search keeps `rerank_width` candidates per row (k + max(4, k/8) or k + max(8, k/2)),
    whose exact pre-activations are then computed in float32 and ranked: the k chosen
    are the exact top k unless one of them ranked below all those candidates in the
    approximate product (in no row of the measurements in `rerank_width`).
    """
    from saescope.sae.kernels import gather_dots, topk_indices

    L = lazy_loss
    k = int(ctx.k or 0)
    n_rows, d_sae = x.shape[0], sae.cfg.d_sae
    approx = ctx.select_dtype != x.dtype
    m = L.rerank_width(k, d_sae, ctx.select_dtype) if approx else k
    with torch.no_grad():
        scores = L.selection_scores(sae, x, ctx.select_dtype)
        step = L.chunk_rows(n_rows, d_sae, ctx.select_dtype, x.device)
        idx = torch.empty(n_rows, m, dtype=torch.int64, device=x.device)
        vals = None if approx else torch.empty(n_rows, k, dtype=x.dtype, device=x.device)
        aux_parts: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for start in range(0, n_rows, step):
            stop = min(n_rows, start + step)
            h = scores(start, stop)  # (rows, d_sae)
            top = topk_indices(h, m)
            idx[start:stop] = top
            if vals is not None:
                vals[start:stop] = h.gather(1, top)
            aux_idx = L.aux_indices(h, ctx)
            if aux_idx is not None:
                aux_parts.append((aux_idx, None if approx else h.gather(1, aux_idx)))
        if vals is None:  # rerank the candidates by their exact pre-activations
            exact = gather_dots(x - sae.b_dec, sae.W_enc.t(), idx) + sae.b_enc[idx]
            keep = torch.topk(exact, k, dim=1, sorted=False).indices
            idx, vals = idx.gather(1, keep), exact.gather(1, keep)
    if not aux_parts:
        return Selection(idx, vals, None, None)
    aux_pre = None if approx else torch.cat([p for _, p in aux_parts if p is not None])
    return Selection(idx, vals, torch.cat([a for a, _ in aux_parts]), aux_pre)


class TopK(Architecture):
    name = "topk"
    summary = "z = the k largest of relu(h) per row; mse + aux * AuxK (sparse backward)"
    uses_k = True
    sparsify_rule = True
    saelens_names = ("topk",)
    reads = frozenset({"k_aux", "aux_coefficient", "select_precision"})  # always sparse

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

    def selection_seconds(self, sae: SAE, x: torch.Tensor, ctx: LossContext) -> float | None:
        import time

        best = float("inf")
        for i in range(4):  # the first run warms up (allocations, oneDNN kernel creation)
            t0 = time.perf_counter()
            select(sae, x, ctx)
            if i:
                best = min(best, time.perf_counter() - t0)
        return best

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
