"""LM metrics of an SAE: the model's next-token loss with the SAE spliced in at its hookpoint.

In: a loaded causal LM, the hookpoint, an SAE and token contexts (`input_ids`,
`attention_mask`, `keep`, each (n_contexts, ctx_len), as `acts/tokens.safetensors`
holds them). Out: `LMMetrics`, with the names and formulas of SAELens
(`evals.get_downstream_reconstruction_metrics`) and SAEBench (`kl_div_score`).

Where the activations are replaced. At the positions that are store rows
(`keep`): real tokens, never padding, and neither BOS nor the EOS separators
unless the store was made with `--keep-special`. These are the tokens the SAE
was trained on; SAELens, too, leaves BOS/EOS/padding activations alone when it
splices. Every intervention (SAE, zero ablation, SAE plus its error) replaces
exactly these positions and leaves all others as the clean model computes them.
(SAELens zero-ablates every position, BOS included. Ablating BOS, which most
models use as an attention sink, makes the zero baseline far worse than the SAE
could ever be and inflates ce_loss_score; with the same positions, an SAE that
outputs zero scores exactly 0.)

Which tokens are counted. KL at position p counts when keep[p]. The CE at p
(the loss of predicting token p + 1 from tokens 0..p) counts when keep[p] and
token p + 1 is real (attention_mask[p + 1]; the last position of a context has no
next token). This is SAELens' rule (a loss counts when the token it is predicted
from is not special: `mask[:, :-1]`), with padding left out as a target too. All
means are over tokens, pooled over every context.

    ce_loss_without_sae    CE_clean  mean -log p(next token), clean model
    ce_loss_with_sae       CE_sae    x -> x_hat (the SAE's reconstruction) at the rows
    ce_loss_with_ablation  CE_zero   x -> 0 at the rows
    ce_loss_with_error     CE_err    x -> x_hat + (x - x_hat), the error term added back:
                                     CE_clean up to float rounding (a check that the
                                     splice changes nothing else)
    ce_loss_score          (CE_zero - CE_sae) / (CE_zero - CE_clean)  1: as good as the
                           clean model, 0: as bad as zero ablation (None if CE_zero == CE_clean)
    delta_loss             CE_sae - CE_clean
    kl_div_with_sae        mean KL(p_clean || p_sae) over next-token distributions, in nats
    kl_div_with_ablation   mean KL(p_clean || p_zero)
    kl_div_with_error      mean KL(p_clean || p_err)  (~0)
    kl_div_score           (KL_zero - KL_sae) / KL_zero  (SAEBench; None if KL_zero == 0)
    n_contexts, n_tokens (CE predictions counted), n_kl_tokens (KL positions counted)

`sae_hookpoint` and `check_hookpoint` say where an SAE was trained (a saescope
SAE's store meta, or a foreign file's `hook_name`: sparsify `layers.L`, SAELens
`blocks.L.hook_*`) and refuse an SAE whose hookpoint is not the store's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from saescope.errors import SaescopeError
from saescope.lm import hooks
from saescope.lm.model import LM
from saescope.sae import SAE

VARIANTS = ("sae", "ablation", "error")


@dataclass(frozen=True)
class LMMetrics:
    """Token means over the counted positions (see the module docstring)."""

    ce_loss_without_sae: float
    ce_loss_with_sae: float
    ce_loss_with_ablation: float
    ce_loss_with_error: float
    ce_loss_score: float | None
    delta_loss: float
    kl_div_with_sae: float
    kl_div_with_ablation: float
    kl_div_with_error: float
    kl_div_score: float | None
    n_contexts: int
    n_tokens: int
    n_kl_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _replacement(sae: SAE, variant: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """rows (n, d_in) -> what replaces them, in float32 or the SAE's dtype."""

    def sae_rows(x: torch.Tensor) -> torch.Tensor:
        return sae(x).x_hat

    def zero_rows(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def error_rows(x: torch.Tensor) -> torch.Tensor:
        x_hat = sae(x).x_hat
        return x_hat + (x.to(x_hat.dtype) - x_hat)

    return {"sae": sae_rows, "ablation": zero_rows, "error": error_rows}[variant]


def _splicer(
    sae: SAE, hp: hooks.Hookpoint, rows: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A hook function: h (b, w, d) with h[rows] replaced by fn(h[rows]); rows (b, w) bool."""
    device = sae.W_enc.device

    def splice(h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != sae.cfg.d_in:
            raise SaescopeError(
                f"hookpoint {hp.name} ({hp.module}) gives {h.shape[-1]}-d activations, "
                f"the SAE takes d_in={sae.cfg.d_in}"
            )
        out = h.clone()
        out[rows] = fn(h[rows].to(device)).to(h.device, h.dtype)
        return out

    return splice


def _log_probs(lm: LM, ids: torch.Tensor, mask: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """(n, vocab) float32 next-token log-probabilities at the positions `at` (b, w) bool."""
    logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (b, w, V)
    return torch.log_softmax(logits[at].float(), dim=-1)


def lm_metrics(
    lm: LM,
    hp: hooks.Hookpoint,
    sae: SAE,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    keep: np.ndarray,
    batch_size: int = 8,
    progress: bool = True,
) -> LMMetrics:
    """CE and KL of the clean model, with `sae` spliced in at `hp`, zero-ablated there, and with
    the SAE's error added back, over the given contexts (each array (n_contexts, ctx_len))."""
    if batch_size < 1:
        raise SaescopeError(f"the LM batch size must be >= 1, got {batch_size}")
    n_ctx = int(input_ids.shape[0])
    lengths = attention_mask.sum(axis=1)
    order = np.argsort(-lengths, kind="stable")  # longest first: padding is cut per batch
    ce = dict.fromkeys(("clean", *VARIANTS), 0.0)  # sums of -log p(next token)
    kl = dict.fromkeys(VARIANTS, 0.0)  # sums of KL(clean || variant)
    n_ce = n_kl = 0
    device = lm.device
    bar = tqdm(total=n_ctx, desc="lm metrics", unit="ctx", leave=False, disable=not progress)
    with torch.inference_mode():
        for lo in range(0, n_ctx, batch_size):
            idx = order[lo : lo + batch_size]
            width = max(int(lengths[idx].max()), 1)
            ids = torch.from_numpy(input_ids[idx, :width].astype(np.int64)).to(device)
            real = torch.from_numpy(attention_mask[idx, :width].astype(bool)).to(device)
            rows = torch.from_numpy(keep[idx, :width].astype(bool)).to(device) & real
            has_next = torch.zeros_like(real)
            has_next[:, :-1] = real[:, 1:]
            scored = rows & has_next  # (b, w) positions whose CE counts
            targets = ids[:, 1:][scored[:, :-1]]  # (n_ce,) next tokens
            ce_of_row = scored[rows]  # which KL positions also count for CE
            clean = _log_probs(lm, ids, real.long(), rows)  # (n_kl, V)
            p_clean = clean.exp()
            ce["clean"] -= float(clean[ce_of_row].gather(1, targets[:, None]).double().sum())
            for variant in VARIANTS:
                splice = _splicer(sae, hp, rows, _replacement(sae, variant))
                with hooks.replaced(lm.model, hp, splice):
                    other = _log_probs(lm, ids, real.long(), rows)  # (n_kl, V)
                ce[variant] -= float(other[ce_of_row].gather(1, targets[:, None]).double().sum())
                # KL(p || q) = sum_v p_v (log p_v - log q_v); in place: (n_kl, V) is large
                kl[variant] -= float(other.sub_(clean).mul_(p_clean).sum(-1).double().sum())
            n_ce += int(targets.numel())
            n_kl += int(clean.shape[0])
            bar.update(len(idx))
    bar.close()
    if n_ce == 0:
        raise SaescopeError(
            f"none of the {n_ctx} contexts has a token to score (every position is padding, "
            "BOS or a separator); use more contexts"
        )
    mean_ce = {k: v / n_ce for k, v in ce.items()}
    mean_kl = {k: v / n_kl for k, v in kl.items()}
    lost = mean_ce["ablation"] - mean_ce["clean"]
    return LMMetrics(
        ce_loss_without_sae=mean_ce["clean"],
        ce_loss_with_sae=mean_ce["sae"],
        ce_loss_with_ablation=mean_ce["ablation"],
        ce_loss_with_error=mean_ce["error"],
        ce_loss_score=(mean_ce["ablation"] - mean_ce["sae"]) / lost if lost != 0 else None,
        delta_loss=mean_ce["sae"] - mean_ce["clean"],
        kl_div_with_sae=mean_kl["sae"],
        kl_div_with_ablation=mean_kl["ablation"],
        kl_div_with_error=mean_kl["error"],
        kl_div_score=(mean_kl["ablation"] - mean_kl["sae"]) / mean_kl["ablation"]
        if mean_kl["ablation"] != 0
        else None,
        n_contexts=n_ctx,
        n_tokens=n_ce,
        n_kl_tokens=n_kl,
    )


# --- where an SAE reads -----------------------------------------------------------------


def sae_hookpoint(sae: SAE) -> str | None:
    """The hookpoint an SAE was trained at: its store's (saescope) or its `hook_name` (foreign)."""
    meta = sae.cfg.metadata
    store_meta = meta.get("store_meta") or {}
    hook = store_meta.get("hookpoint") if isinstance(store_meta, dict) else None
    hook = hook or meta.get("hook_name")
    return str(hook) if hook else None


def check_hookpoint(
    sae_hook: str | None, store_meta: dict[str, Any], where: str, model: Any = None
) -> None:
    """Refuse (one line) an SAE trained at another hookpoint than the store's.

    Without `model`, spellings are compared (resid_post.L = layers.L =
    blocks.L.hook_resid_post); with it, both are resolved to the module they read.
    An SAE that does not say where it was trained passes.
    """
    if sae_hook is None:
        return
    store_hook = str(store_meta.get("hookpoint"))
    model_name = store_meta.get("model", "the model")
    if sae_hook.strip().startswith("blocks.") and hooks.normalise(sae_hook) is None:
        raise SaescopeError(
            f"the SAE in {where} reads SAELens hook {sae_hook!r}, which maps to no single Hugging "
            "Face module (only hook_resid_pre, hook_resid_post, hook_mlp_out and hook_attn_out "
            f"do); saescope cannot evaluate it on {model_name}"
        )
    if model is not None:
        try:
            mine = hooks.resolve(model, sae_hook)
        except SaescopeError as exc:
            raise SaescopeError(
                f"the SAE in {where} was trained at hookpoint {sae_hook!r}, which {model_name} "
                f"does not have ({exc})"
            ) from None
        theirs = hooks.resolve(model, store_hook)
        same = (mine.module, mine.read) == (theirs.module, theirs.read)
    else:
        a, b = hooks.normalise(sae_hook), hooks.normalise(store_hook)
        if a is None or b is None:  # a module name: decided once the model is loaded
            return
        same = a == b
    if not same:
        raise SaescopeError(
            f"the SAE in {where} was trained at hookpoint {sae_hook!r}, but the store holds "
            f"{store_hook!r} of {model_name}; use it on a run made with "
            f"`saescope acts --hookpoint {sae_hook}`"
        )
