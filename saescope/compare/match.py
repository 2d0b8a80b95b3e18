"""Matching two dictionaries by direction: nearest partners and a one-to-one matching."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from saescope.families.splits import nearest, unit_directions
from saescope.sae import SAE

# largest d_sae_a * d_sae_b matched by the Hungarian algorithm (8192 x 8192 takes about
# 15 s on one core); larger pairs are matched by mutual nearest neighbours
HUNGARIAN_MAX = 8192 * 8192


class Directions(NamedTuple):
    decoder: np.ndarray  # (d_sae, d_in) unit rows
    encoder: np.ndarray  # (d_sae, d_in) unit rows (W_enc's columns)


class Matching(NamedTuple):
    a_best: np.ndarray  # (d_sae_a,) nearest feature of B by decoder cosine
    a_best_cos: np.ndarray  # (d_sae_a,) its cosine
    b_best: np.ndarray  # (d_sae_b,)
    b_best_cos: np.ndarray  # (d_sae_b,)
    pairs_a: np.ndarray  # (n_pairs,) one-to-one pairs: feature of A ...
    pairs_b: np.ndarray  # (n_pairs,) ... and of B
    decoder_cos: np.ndarray  # (n_pairs,)
    encoder_cos: np.ndarray  # (n_pairs,)
    method: str  # "hungarian" or "mutual nearest"


def directions(sae: SAE, ids: np.ndarray | None = None) -> Directions:
    """Unit decoder and encoder directions of the SAE's features `ids` (default: all)."""
    enc = torch.nn.functional.normalize(sae.W_enc.detach().float().T, dim=1).numpy()
    dec = unit_directions(sae)
    return Directions(dec, enc) if ids is None else Directions(dec[ids], enc[ids])


def _one_to_one(a: np.ndarray, b: np.ndarray, a_best: np.ndarray, b_best: np.ndarray):
    if len(a) * len(b) <= HUNGARIAN_MAX:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(a @ b.T, maximize=True)
        return rows.astype(np.int64), cols.astype(np.int64), "hungarian"
    # mutual nearest: i's nearest is j and j's nearest is i (at most min(d_a, d_b) pairs)
    rows = np.flatnonzero(b_best[a_best] == np.arange(len(a)))
    return rows, a_best[rows], "mutual nearest"


def match(a: Directions, b: Directions) -> Matching:
    """Nearest partners both ways, and one-to-one pairs with both cosines."""
    b_best, b_best_cos = nearest(a.decoder, b.decoder)  # for each feature of B: one of A
    a_best, a_best_cos = nearest(b.decoder, a.decoder)
    rows, cols, method = _one_to_one(a.decoder, b.decoder, a_best, b_best)
    dec = np.einsum("ij,ij->i", a.decoder[rows], b.decoder[cols]).astype(np.float32)
    enc = np.einsum("ij,ij->i", a.encoder[rows], b.encoder[cols]).astype(np.float32)
    return Matching(a_best, a_best_cos, b_best, b_best_cos, rows, cols, dec, enc, method)
