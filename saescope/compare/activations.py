"""Both SAEs on a sample of a store's rows: which features fire there, and how the
activations of matched features correlate."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from saescope.sae import SAE
from saescope.store import ActivationStore


class Sampled(NamedTuple):
    rows: int  # store rows encoded
    a_alive: np.ndarray  # (d_sae_a,) bool: fired on some sampled row
    b_alive: np.ndarray  # (d_sae_b,)
    correlation: np.ndarray  # (n_pairs,) Pearson over the rows; NaN where one is silent


def _codes(sae: SAE, x: torch.Tensor, batch: int = 4096) -> np.ndarray:
    with torch.inference_mode():
        parts = [sae.encode(x[i : i + batch]).float() for i in range(0, len(x), batch)]
    return torch.cat(parts).numpy()  # (n_rows, d_sae)


def _standardized(codes: np.ndarray) -> np.ndarray:
    centred = codes - codes.mean(axis=0)
    std = centred.std(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return centred / np.where(std > 0, std, np.nan)


def sample(
    a: SAE, b: SAE, store: ActivationStore, pairs_a: np.ndarray, pairs_b: np.ndarray,
    rows: int, seed: int,
) -> Sampled:  # fmt: skip
    n = min(rows, store.count)
    ids = np.sort(np.random.default_rng(seed).choice(store.count, size=n, replace=False))
    x = store.rows(ids)  # (n, d_in)
    ca, cb = _codes(a, x), _codes(b, x)
    za, zb = _standardized(ca[:, pairs_a]), _standardized(cb[:, pairs_b])
    corr = np.mean(za * zb, axis=0).astype(np.float32)  # (n_pairs,)
    return Sampled(n, np.asarray((ca > 0).any(axis=0)), np.asarray((cb > 0).any(axis=0)), corr)
