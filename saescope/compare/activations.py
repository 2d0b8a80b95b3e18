"""Both SAEs on a sample of a store's rows: which features fire there, and how the
activations of matched features correlate."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from saescope.sae import SAE
from saescope.store import ActivationStore


class Sample(NamedTuple):
    rows: int  # store rows encoded
    a: np.ndarray  # (rows, d_sae_a) codes
    b: np.ndarray  # (rows, d_sae_b)


def _codes(sae: SAE, x: torch.Tensor, batch: int = 4096) -> np.ndarray:
    with torch.inference_mode():
        parts = [sae.encode(x[i : i + batch]).float() for i in range(0, len(x), batch)]
    return torch.cat(parts).numpy()  # (n_rows, d_sae)


def encode_sample(a: SAE, b: SAE, store: ActivationStore, rows: int, seed: int) -> Sample:
    """Both SAEs' codes of `rows` store rows drawn with `seed` (all rows when fewer)."""
    n = min(rows, store.count)
    ids = np.sort(np.random.default_rng(seed).choice(store.count, size=n, replace=False))
    x = store.rows(ids)  # (n, d_in)
    return Sample(n, _codes(a, x), _codes(b, x))


def _standardized(codes: np.ndarray) -> np.ndarray:
    centred = codes - codes.mean(axis=0)
    std = centred.std(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return centred / np.where(std > 0, std, np.nan)


def correlations(s: Sample, pairs_a: np.ndarray, pairs_b: np.ndarray) -> np.ndarray:
    """(n_pairs,) Pearson correlation of each pair's activations over the sampled rows."""
    za, zb = _standardized(s.a[:, pairs_a]), _standardized(s.b[:, pairs_b])
    return np.mean(za * zb, axis=0).astype(np.float32)
