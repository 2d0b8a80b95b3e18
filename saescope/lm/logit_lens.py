"""Logit lens of SAE features: the tokens each decoder direction promotes and suppresses.

In: a causal LM and the SAE's decoder `W_dec` (d_sae, d_model). Out: `LogitLens`,
each feature's `n` most promoted and `n` most suppressed token ids with their
logits, and `lens_columns`, the same as the extra columns of `features.parquet`
for token runs (`LENS_SCHEMA`).

What a direction does to the logits: the model reads the residual stream through
its final norm and the unembedding, logits = W_U norm(x). A feature adds
a * W_dec[f] to x. To first order the logits move by
    W_U diag(gain) (C W_dec[f]) / rms(x)        (minus a term along x itself)
where gain is the norm's elementwise weight, C removes the mean for a LayerNorm
(identity for an RMSNorm), and rms(x) is the scale of the residual the feature
is added to. So the lens is W_U (gain * C W_dec[f]):
  - the gain (and the centring of a LayerNorm) is applied: it is a fixed,
    per-dimension map that can reorder tokens completely;
  - the normalisation 1/rms(x) is not: it depends on the residual, which a
    feature alone does not have, and as one positive number it reorders no token
    (applying the norm to W_dec[f] itself, as if the residual were the direction,
    would only multiply every logit by sqrt(d_model) for an RMSNorm);
  - biases (a LayerNorm's beta, an lm_head bias) are left out: they add the same
    logits for every feature, so they would make every feature "promote" the
    same tokens.
The gain is measured by running the norm module on a fixed zero-mean probe, so
Llama's `weight`, Gemma's `1 + weight` and LayerNorm's `weight` are read alike
(up to the factor 1/sqrt(1 + eps), the same for every feature and token).
Logits are in units of one unit of the decoder direction, before the
normalisation. Only the tokenizer's ids are ranked (a padded unembedding's
extra rows are no tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from saescope.errors import SaescopeError

N_LENS_TOKENS = 10  # promoted and suppressed tokens kept per feature
_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm", "norm_f")

# columns appended to features.parquet for token runs
LENS_SCHEMA = pa.schema(
    [
        ("promoted_ids", pa.list_(pa.int32())),
        ("promoted_tokens", pa.list_(pa.string())),
        ("promoted_logits", pa.list_(pa.float32())),
        ("suppressed_ids", pa.list_(pa.int32())),
        ("suppressed_tokens", pa.list_(pa.string())),
        ("suppressed_logits", pa.list_(pa.float32())),
    ]
)


@dataclass(frozen=True)
class Unembed:
    """The map from a residual direction to logits: W_U (gain * C d)."""

    gain: torch.Tensor  # (d_model,) float32, the final norm's elementwise gain
    centre: bool  # the final norm removes the mean (LayerNorm)
    W_U: torch.Tensor  # (vocab, d_model) float32, rows of the tokenizer's ids only
    norm: str  # the final norm's module name ("" when the model has none)

    def logits(self, directions: torch.Tensor) -> torch.Tensor:
        """(n, vocab) logits of (n, d_model) directions."""
        d = directions.float()
        if self.centre:
            d = d - d.mean(dim=1, keepdim=True)
        return (d * self.gain) @ self.W_U.T


@dataclass(frozen=True)
class LogitLens:
    """Each feature's most promoted and most suppressed tokens (ids and logits)."""

    promoted_ids: np.ndarray  # (d_sae, n) int64, highest logit first
    promoted_logits: np.ndarray  # (d_sae, n) float32, descending
    suppressed_ids: np.ndarray  # (d_sae, n) int64, lowest logit first
    suppressed_logits: np.ndarray  # (d_sae, n) float32, ascending
    norm: str  # the final norm module the gain was read from
    centre: bool


def final_norm(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of the norm before the unembedding, None when there is none."""
    base = getattr(model, "base_model", model)
    names = {id(m): n for n, m in model.named_modules()}
    for owner in (base, getattr(base, "decoder", None)):
        for attr in _NORM_NAMES:
            mod = getattr(owner, attr, None) if owner is not None else None
            if isinstance(mod, nn.Module):
                return names.get(id(mod), attr), mod
    return None


def norm_gain(norm: nn.Module | None, d_model: int) -> tuple[torch.Tensor, bool]:
    """(gain (d_model,), centres) of a final norm module, measured with probes.

    norm(0) is its bias; a constant vector is what a centring norm maps to its bias;
    a +-1 probe normalised the way the norm does it gives the gain dimension by dimension.
    """
    if norm is None:
        return torch.ones(d_model), False
    p = next(iter(norm.parameters()), None)
    dtype, device = (p.dtype, p.device) if p is not None else (torch.float32, torch.device("cpu"))
    probe = torch.ones(d_model)
    probe[1::2] = -1.0  # mean 0 (1/d_model for an odd size), RMS 1

    def run(v: torch.Tensor) -> torch.Tensor:
        return norm(v.to(device, dtype)[None, None])[0, 0].float().cpu()

    with torch.inference_mode():
        zero = run(torch.zeros(d_model))
        flat = run(torch.ones(d_model)) - zero
        alt = run(probe) - zero
    centre = bool(flat.abs().max() <= 1e-3 * alt.abs().max().clamp_min(1e-12))
    seen = probe - probe.mean() if centre else probe  # what the norm normalises
    seen = seen / seen.pow(2).mean().sqrt()
    return alt / seen, centre


def unembedding(model: Any, vocab: int | None = None) -> Unembed:
    """The final norm's gain and the unembedding of `model` (first `vocab` rows)."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise SaescopeError(
            f"the {type(model).__name__} has no output embedding (lm_head) to read a logit lens from"
        )
    W_U = head.weight.detach().float()
    if vocab is not None:
        W_U = W_U[:vocab]
    found = final_norm(model)
    name, mod = found if found is not None else ("", None)
    gain, centre = norm_gain(mod, W_U.shape[1])
    return Unembed(gain.to(W_U.device), centre, W_U, name)


def logit_lens(
    unembed: Unembed, W_dec: torch.Tensor, n: int = N_LENS_TOKENS, chunk: int = 256
) -> LogitLens:
    """The `n` most promoted and suppressed tokens of every row of W_dec (d_sae, d_model)."""
    d_sae, d_model = W_dec.shape
    if d_model != unembed.W_U.shape[1]:
        raise SaescopeError(
            f"the SAE's decoder has d_in={d_model} but the model's residual stream has "
            f"{unembed.W_U.shape[1]} dimensions; was the store made with another model?"
        )
    n = min(n, unembed.W_U.shape[0])
    ids = {side: np.empty((d_sae, n), np.int64) for side in ("up", "down")}
    vals = {side: np.empty((d_sae, n), np.float32) for side in ("up", "down")}
    with torch.inference_mode():
        for lo in range(0, d_sae, chunk):
            logits = unembed.logits(W_dec[lo : lo + chunk].to(unembed.W_U.device))  # (c, vocab)
            hi = lo + len(logits)
            for side in ("up", "down"):
                v, i = torch.topk(logits, n, dim=1, largest=side == "up", sorted=True)
                ids[side][lo:hi], vals[side][lo:hi] = i.cpu().numpy(), v.cpu().numpy()
    return LogitLens(ids["up"], vals["up"], ids["down"], vals["down"], unembed.norm, unembed.centre)


def token_strings(tokenizer: Any, ids: Sequence[int]) -> dict[int, str]:
    """Each distinct id as the text it stands for (decoded alone)."""
    uniq = sorted({int(i) for i in ids})
    return dict(zip(uniq, tokenizer.batch_decode([[i] for i in uniq]), strict=True))


def lens_columns(lens: LogitLens, tokenizer: Any) -> dict[str, list[list[Any]]]:
    """The `LENS_SCHEMA` columns of `lens` (one list per feature)."""
    strings = token_strings(tokenizer, [*lens.promoted_ids.ravel(), *lens.suppressed_ids.ravel()])
    cols: dict[str, list[list[Any]]] = {}
    for side in ("promoted", "suppressed"):
        ids = getattr(lens, f"{side}_ids")
        cols[f"{side}_ids"] = ids.tolist()
        cols[f"{side}_tokens"] = [[strings[i] for i in row] for row in ids.tolist()]
        cols[f"{side}_logits"] = getattr(lens, f"{side}_logits").tolist()
    return cols


def store_logit_lens(
    meta: dict[str, Any], W_dec: torch.Tensor, n: int = N_LENS_TOKENS, device: str = "cpu"
) -> tuple[dict[str, list[list[Any]]], dict[str, Any]]:
    """(LENS_SCHEMA columns, a description) for the SAE of a token store: loads the store's LM."""
    from saescope.lm.model import load_lm

    if not meta.get("model"):
        raise SaescopeError("the token store's manifest names no model; re-run `saescope acts`")
    lm = load_lm(str(meta["model"]), device)
    unembed = unembedding(lm.model, len(lm.tokenizer))
    lens = logit_lens(unembed, W_dec.detach().float().to(lm.device), n)
    about = {"model": meta["model"], "norm": lens.norm, "centre": lens.centre, "n": n}
    return lens_columns(lens, lm.tokenizer), about
