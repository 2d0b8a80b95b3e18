"""Ground truth: a TopK SAE recovers the dictionary that generated its data."""

import time

import pytest
import torch

from saescope.errors import SaescopeError
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


def test_a_stream_without_a_length_needs_its_steps_and_every_batch_is_checked():
    """A generator with no total_steps trained with max_steps 0: no warm-up or decay and a
    dead-latent window of one row, a worse SAE without a word."""
    cfg = TrainConfig(d_sae=[64], k=[4], batch_size=32, progress=False)
    _, stream = synthetic_batches(4, 32)
    with pytest.raises(SaescopeError, match="pass total_steps="):
        train_on_batches(stream, cfg)
    with pytest.raises(SaescopeError, match="got no batches"):  # the real problem first
        train_on_batches([], cfg)

    class NoLength:  # a DataLoader of an IterableDataset: __len__ that raises
        def __iter__(self):
            return synthetic_batches(4, 32)[1]

        def __len__(self):
            raise TypeError("no len")

    with pytest.raises(SaescopeError, match="pass total_steps="):
        train_on_batches(NoLength(), cfg)
    _, stream = synthetic_batches(4, 32)
    arrays = [b.numpy() for b in stream]  # numpy batches are taken as they are
    result = train_on_batches(arrays, cfg)
    assert result.steps == 4
    sae = result.saes[0]
    assert not sae.training and not any(p.requires_grad for p in sae.parameters())
    bad = [torch.from_numpy(a) for a in arrays[:2]] + [torch.zeros(32, D_IN - 1)]
    with pytest.raises(SaescopeError, match=rf"batch 2 has shape \(32, {D_IN - 1}\); expected"):
        train_on_batches(bad, cfg)
