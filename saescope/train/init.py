"""Initial weights from a data sample: decoder bias, input scale, tied encoder.

In: a sample (n_rows, d_in) of (normalised) training inputs and a seed.
Out: an `SAE` whose decoder rows are random unit vectors, W_enc = W_dec.T,
b_dec = the sample's geometric median (or mean), b_enc = 0; and the scale factor
that gives the inputs unit mean squared norm.
"""

from __future__ import annotations

import torch

from saescope.sae import SAE, SAEConfig


def geometric_median(points: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """The point minimising the sum of Euclidean distances (Weiszfeld iterations); (d_in,)."""
    pts = points.double()
    guess = pts.mean(dim=0)
    for _ in range(iters):
        dist = (pts - guess).norm(dim=1).clamp_min(1e-12)  # (n_rows,)
        w = 1.0 / dist
        new = (w[:, None] * pts).sum(0) / w.sum()
        moved = (new - guess).norm()
        guess = new
        if moved <= tol * (guess.norm() + 1e-12):
            break
    return guess.to(points.dtype)


def input_scale(sample: torch.Tensor) -> float:
    """Factor s such that s * x has unit mean squared norm over the sample."""
    msq = sample.double().pow(2).sum(dim=1).mean().item()
    return 1.0 / msq**0.5 if msq > 0 else 1.0


def init_sae(cfg: SAEConfig, sample: torch.Tensor, b_dec_init: str, seed: int) -> SAE:
    """A fresh SAE for training on inputs distributed like `sample` (already scaled)."""
    sae = SAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=gen, dtype=torch.float64)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    if b_dec_init == "geometric_median":
        b_dec = geometric_median(sample)
    elif b_dec_init == "mean":
        b_dec = sample.mean(dim=0)
    else:
        b_dec = torch.zeros(cfg.d_in)
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.t())
        sae.b_dec.copy_(b_dec)
        sae.b_enc.zero_()
        sae.threshold.zero_()
    return sae
