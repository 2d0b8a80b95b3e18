"""Feature edits: change a vector's SAE features and keep everything the SAE does not explain.

One concept shared by search steering (`saescope search`) and generation steering
(`saescope steer`): given vectors x (a query embedding, or the hidden states at an
LM hookpoint) and edits of some features, the edited vectors are

    x' = x + (decode(z') - decode(z))        z = encode(x), z' = z with the edits

so the SAE's error term x - decode(z) is kept: with no edit x' == x exactly, and
clamping a feature to its own value changes nothing. The operations on z_f:

    add     z_f + value            (boost: value > 0; suppress: value < 0)
    clamp   value                  (set the feature to a value)
    zero    0                      (ablate the feature)

`add` needs no encoding (the decoder is linear: x' = x + value * W_dec[f], scaled
back by the row's std for SAEs with row standardisation), so it also applies where
the feature is not active. Values are in units of the feature's typical activation
(`unit="typical"`: its `max_act` in `latents/features.parquet`, or another statistic
of that table) or absolute (`unit="absolute"`); `resolve` turns them into absolute
values. A value that is not finite, or a feature outside the SAE, is an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from saescope.errors import SaescopeError

OPS = ("add", "clamp", "zero")
UNITS = ("typical", "absolute")


@dataclass(frozen=True)
class Edit:
    feature: int
    op: str = "add"  # add | clamp | zero
    value: float = 0.0  # add: the amount; clamp: the value; zero: unused
    unit: str = "typical"  # typical | absolute

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise SaescopeError(f"unknown edit {self.op!r}; choose {', '.join(OPS)}")
        if self.unit not in UNITS:
            raise SaescopeError(f"unknown edit unit {self.unit!r}; choose {' or '.join(UNITS)}")
        if not math.isfinite(float(self.value)):
            raise SaescopeError(f"the strength of the edit of feature {self.feature} is not finite")


def check_features(edits: Sequence[Edit], d_sae: int) -> None:
    bad = [e.feature for e in edits if not 0 <= e.feature < d_sae]
    if bad:
        raise SaescopeError(
            f"feature id(s) {', '.join(map(str, bad[:5]))} out of range: the SAE has "
            f"d_sae={d_sae} features (ids 0..{d_sae - 1})"
        )


def resolve(edits: Sequence[Edit], typical: np.ndarray | None, d_sae: int) -> list[Edit]:
    """The edits with absolute values: typical units multiplied by `typical[feature]`.

    typical: (d_sae,) each feature's typical activation (None: only absolute edits allowed).
    """
    check_features(edits, d_sae)
    out = []
    for e in edits:
        if e.unit == "typical" and e.op != "zero":
            if typical is None:
                raise SaescopeError(
                    "edits in units of the typical activation need the features.parquet of a "
                    "latent cache made with this SAE; run `saescope latents` with it, or give "
                    "absolute strengths (--unit absolute)"
                )
            scale = float(typical[e.feature])
            if not math.isfinite(scale) or scale <= 0:
                raise SaescopeError(
                    f"feature {e.feature} has no typical activation (it never fires on this "
                    "run); give an absolute strength"
                )
            e = replace(e, value=e.value * scale, unit="absolute")
        out.append(replace(e, unit="absolute"))
    return out


def typical_activation(features, stat: str = "max_act") -> np.ndarray:
    """(d_sae,) float64 typical activation of every feature from a features.parquet table."""
    if stat not in features.columns:
        raise SaescopeError(f"features.parquet has no column {stat!r}")
    col = features.sort_values("feature")[stat].to_numpy(dtype=np.float64)
    return np.where(np.isfinite(col), col, np.nan)


def needs_codes(edits: Sequence[Edit]) -> bool:
    return any(e.op != "add" for e in edits)


@torch.no_grad()
def apply_edits(sae, x: torch.Tensor, edits: Sequence[Edit]) -> torch.Tensor:
    """x' (same shape and dtype as x, (..., d_in)) with absolute `edits` applied (see above)."""
    if not edits:
        return x
    check_features(edits, sae.cfg.d_sae)
    if any(e.unit != "absolute" and e.op != "zero" for e in edits):
        raise SaescopeError("apply_edits takes absolute edits; pass them through resolve() first")
    shape = x.shape
    flat = x.reshape(-1, shape[-1]).to(sae.W_dec.dtype)
    xs, _mean, std = sae._standardize(flat)
    if needs_codes(edits):
        z = sae.sparsify(sae.pre_activations(xs))
    # one coefficient per row and edit: decode(z') - decode(z) = coef @ W_dec[features],
    # as the decoder is linear (no (rows, d_sae) matrix: adding costs O(rows * d_in))
    coef = torch.empty(flat.shape[0], len(edits), dtype=flat.dtype, device=flat.device)
    for i, e in enumerate(edits):
        if e.op == "add":
            coef[:, i] = e.value
        elif e.op == "clamp":
            coef[:, i] = e.value - z[:, e.feature]
        else:
            coef[:, i] = -z[:, e.feature]
    change = coef @ sae.W_dec[[e.feature for e in edits]]
    if std is not None:
        change = change * std
    return (flat + change).to(x.dtype).reshape(shape)
