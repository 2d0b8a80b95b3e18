"""Initial weights from a data sample: decoder bias, input scale, tied encoder.

In: a sample (n_rows, d_in) of (normalised) training inputs and a seed.
Out: an `SAE` whose decoder rows are random unit vectors, W_enc = c * W_dec.T,
b_dec = the sample's geometric median (or mean), b_enc = 0; and the scale factor
that gives the inputs unit mean squared norm.

The encoder scale c is the least-squares fit of the tied init's reconstruction to
the sample (`encoder_scale`). Without it, a TopK SAE with k unit-norm latents adds up
k roughly aligned projections and its first reconstructions are several times too
long (NMSE well above 1, worse than predicting the mean), which Adam at TopK learning
rates takes hundreds of steps to undo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from saescope.sae import SAE, SAEConfig

if TYPE_CHECKING:
    from saescope.train.config import TrainConfig


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


@torch.no_grad()
def encoder_scale(
    sae: SAE,
    sample: torch.Tensor,
    max_rows: int = 2048,
    chunk_rows: int = 256,
    threshold: float | None = None,
) -> float:
    """Least-squares c minimising ||(x - b_dec) - c * (x_hat - b_dec)||^2 over the sample.

    Valid because with b_enc = 0 the codes of homogeneous architectures (TopK, BatchTopK,
    Matryoshka, ReLU) are positively homogeneous in W_enc: scaling W_enc by c > 0 keeps the
    chosen latents and scales the codes, hence x_hat - b_dec, by c. Architectures with a k
    are fitted with per-row top-k (batch-wide ones: the same number of active latents on
    average as their rule). With `threshold` the codes are h * (h > threshold) instead
    (JumpReLU's start, whose threshold is then scaled by c with the encoder). One scalar
    needs few rows: the first `max_rows` of the sample are used, to keep init cheap.
    """
    k = int(sae.cfg.k or 0) if sae.arch.uses_k else 0
    num = 0.0
    den = 0.0
    sample = sample[:max_rows]
    for start in range(0, sample.shape[0], chunk_rows):
        xc = sample[start : start + chunk_rows].to(sae.W_enc.dtype) - sae.b_dec  # (rows, d_in)
        h = xc @ sae.W_enc + sae.b_enc  # (rows, d_sae)
        if threshold is not None:
            recon = (h * (h > threshold)) @ sae.W_dec
        elif 0 < k < h.shape[1]:
            vals, idx = torch.topk(h, k, dim=-1, sorted=False)
            # (rows, d_in): x_hat - b_dec, from the k chosen decoder rows only
            recon = torch.einsum("rk,rkd->rd", torch.relu(vals), sae.W_dec[idx])
        else:
            recon = torch.relu(h) @ sae.W_dec
        num += (xc.double() * recon.double()).sum().item()
        den += recon.double().pow(2).sum().item()
    return num / den if num > 0 and den > 0 else 1.0


def init_sae(
    cfg: SAEConfig,
    sample: torch.Tensor,
    b_dec_init: str,
    seed: int,
    train_cfg: TrainConfig | None = None,
) -> SAE:
    """A fresh SAE for training on inputs distributed like `sample` (already scaled), with
    its architecture's own changes (`Architecture.init`) applied last."""
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
        if sae.arch.homogeneous and sample.shape[0] > 0:
            sae.W_enc.mul_(encoder_scale(sae, sample))
    sae.arch.init(sae, sample, train_cfg)
    return sae
