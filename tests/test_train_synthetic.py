"""Ground truth: a TopK SAE recovers the dictionary that generated its data."""

import time

import pytest
import torch

from saescope.train import TrainConfig, train_on_batches

N_FEATURES, D_IN, ACTIVE = 512, 128, 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_batches(n_batches: int, batch_size: int, seed: int = 0):
    """(dictionary (512, 128) of unit rows, generator of batches with 5 active features each)."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(N_FEATURES, D_IN, generator=g), dim=1)

    def batches():
        for _ in range(n_batches):
            idx = torch.rand(batch_size, N_FEATURES, generator=g).topk(ACTIVE, dim=1).indices
            mags = torch.rand(batch_size, ACTIVE, generator=g) * 1.5 + 0.5  # non-negative
            codes = torch.zeros(batch_size, N_FEATURES).scatter_(1, idx, mags)
            yield codes @ dictionary

    return dictionary, batches()


def test_topk_sae_recovers_the_true_dictionary():
    start = time.perf_counter()
    steps = 600
    dictionary, batches = synthetic_batches(steps, 256)
    cfg = TrainConfig(
        d_sae=[1024], k=[ACTIVE], batch_size=256, lr=3e-3, dead_after_samples=50_000,
        b_dec_init="mean",
    )  # fmt: skip
    result = train_on_batches(batches, cfg, total_steps=steps)
    W_dec = result.saes[0].W_dec.detach()  # (1024, 128), unit rows
    best = (dictionary @ W_dec.t()).max(dim=1).values  # (512,) best cosine per true direction
    recovered = (best >= 0.9).float().mean().item()
    assert recovered >= 0.9, f"only {recovered:.1%} of the true directions recovered"
    assert time.perf_counter() - start < 120
