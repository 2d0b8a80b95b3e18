"""saescope's own Adam: the same updates as torch.optim.Adam, and a faithful state_dict."""

from __future__ import annotations

import pytest
import torch

from saescope.errors import SaescopeError
from saescope.train.optim import Adam


def _grads(step: int, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=gen) * (1 + step) for s in shapes]


def test_matches_torch_adam_under_a_changing_lr() -> None:
    shapes = [(7, 5), (5,), (3, 7)]
    gen = torch.Generator().manual_seed(0)
    ours = [torch.randn(s, generator=gen) for s in shapes]
    start = [p.clone() for p in ours]
    ref = [p.clone().requires_grad_(True) for p in ours]
    opt = Adam(ours, (0.9, 0.99))
    ref_opt = torch.optim.Adam(ref, lr=1.0, betas=(0.9, 0.99))
    for step in range(12):
        lr = 1e-2 * (step + 1) / 12
        for p, q, g in zip(ours, ref, _grads(step, shapes), strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step(lr)
        for group in ref_opt.param_groups:
            group["lr"] = lr
        ref_opt.step()
    for p, q in zip(ours, ref, strict=True):
        torch.testing.assert_close(p, q.detach(), rtol=1e-6, atol=1e-7)
    assert all(not torch.equal(p, p0) for p, p0 in zip(ours, start, strict=True))


def test_state_dict_round_trip_continues_identically() -> None:
    shapes = [(4, 3), (3,)]
    a = [torch.ones(s) for s in shapes]
    opt_a = Adam(a, (0.9, 0.999))
    for step in range(3):
        for p, g in zip(a, _grads(step, shapes), strict=True):
            p.grad = g
        opt_a.step(1e-2)
    b = [p.clone() for p in a]
    opt_b = Adam(b, (0.9, 0.999))
    opt_b.load_state_dict(opt_a.state_dict())
    for step in range(3, 6):
        for p, q, g in zip(a, b, _grads(step, shapes), strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step(1e-2)
        opt_b.step(1e-2)
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)


def test_a_foreign_state_dict_is_refused() -> None:
    opt = Adam([torch.zeros(2)], (0.9, 0.999))
    with pytest.raises(SaescopeError, match="optimizer state"):
        opt.load_state_dict({"state": {}, "param_groups": []})  # torch.optim's layout
