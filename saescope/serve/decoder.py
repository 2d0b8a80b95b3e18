"""Decoder directions of an SAE: nearest features and matches between two SAEs by cosine.

In: an SAE folder (`config.json` + `sae.safetensors`, `W_dec` of shape (d_sae, d_in)).
Out: `Decoder` (unit-norm rows), `Decoder.nearest(f)` (the features whose decoder rows
point the most the same way as f's) and `match(a, b)`: for every feature of `a` the
feature of `b` with the largest decoder cosine, and whether that match is mutual.

A nearest-feature query is one (d_sae, d_in) matrix-vector product (a few ms at
12,288 x 768); a match is (d_sae_a x d_sae_b) products done in row blocks, so memory
stays at one block of cosines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saescope.errors import SaescopeError, describe
from saescope.paths import NATIVE_SAE_CONFIG, NATIVE_SAE_WEIGHTS

BLOCK_COSINES = 1 << 24  # cosines held at once while matching two SAEs (64 MB)


@dataclass(frozen=True)
class Decoder:
    folder: Path
    directions: np.ndarray  # (d_sae, d_in) float32, rows of unit norm (zero rows stay zero)
    config: dict

    @classmethod
    def load(cls, folder: Path) -> Decoder:
        from safetensors import safe_open

        weights, cfg_path = folder / NATIVE_SAE_WEIGHTS, folder / NATIVE_SAE_CONFIG
        try:
            with safe_open(str(weights), framework="pt") as fh:
                w = fh.get_tensor("W_dec").float().numpy()  # (d_sae, d_in)
            config = json.loads(cfg_path.read_text())
        except Exception as exc:  # missing file, no W_dec, bad JSON: the same answer
            raise SaescopeError(
                f"cannot read the SAE decoder in {folder}: {describe(exc)}"
            ) from exc
        norms = np.linalg.norm(w, axis=1, keepdims=True)
        unit = (w / np.maximum(norms, 1e-12)).astype(np.float32)
        return cls(folder, np.ascontiguousarray(unit), config)

    @property
    def d_sae(self) -> int:
        return int(self.directions.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.directions.shape[1])

    def nearest(self, feature: int, n: int = 10) -> list[tuple[int, float]]:
        """(feature, cosine) of the n features nearest to `feature`, highest cosine first."""
        cos = self.directions @ self.directions[feature]  # (d_sae,)
        cos[feature] = -np.inf
        n = min(n, self.d_sae - 1)
        if n <= 0:
            return []
        top = np.argpartition(-cos, n - 1)[:n]
        top = top[np.lexsort((top, -cos[top]))]
        return [(int(f), float(cos[f])) for f in top]


@dataclass(frozen=True)
class Match:
    """For every feature of SAE a: its best match in SAE b."""

    best: np.ndarray  # (d_sae_a,) int64: the feature of b with the largest cosine
    cosine: np.ndarray  # (d_sae_a,) float32
    mutual: np.ndarray  # (d_sae_a,) bool: a's feature is also b's best match's best match
    best_back: np.ndarray  # (d_sae_b,) int64: for every feature of b, its best in a


def _best(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a: the row of b with the largest dot product, and that product."""
    block = max(1, BLOCK_COSINES // max(len(b), 1))
    best = np.empty(len(a), np.int64)
    value = np.empty(len(a), np.float32)
    for lo in range(0, len(a), block):
        cos = a[lo : lo + block] @ b.T  # (block, d_sae_b)
        best[lo : lo + block] = cos.argmax(axis=1)
        value[lo : lo + block] = cos[np.arange(len(cos)), best[lo : lo + block]]
    return best, value


def match(a: Decoder, b: Decoder) -> Match:
    """Best matches between two SAEs of the same input space, in both directions."""
    if a.d_in != b.d_in:
        raise SaescopeError(
            f"the SAEs in {a.folder} and {b.folder} read {a.d_in}-d and {b.d_in}-d inputs; "
            "only SAEs of the same activations can be matched"
        )
    best, cosine = _best(a.directions, b.directions)
    back, _ = _best(b.directions, a.directions)
    mutual = back[best] == np.arange(a.d_sae)
    return Match(best, cosine, mutual, back)
