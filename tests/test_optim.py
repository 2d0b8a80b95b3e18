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


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "mixed"])
def test_fused_kernel_and_the_loop_give_the_same_updates(monkeypatch, layout) -> None:
    """CPU float32 takes torch's fused Adam kernel where parameter, gradient and moments
    share a layout (also all transposed, as W_enc is stored); a mixed one (which the
    kernel gets wrong) and other dtypes take the loop. The same update either way,
    including a parameter left without a gradient."""
    from saescope.train import optim

    shapes = [(9, 4), (4,), (2, 3)]
    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(s, generator=gen) for s in shapes]
    if layout != "contiguous":
        start[0] = start[0].t().contiguous().t()  # (9, 4) stored transposed
    assert optim._fusable(start, [torch.zeros_like(p) for p in start])
    assert not optim._fusable([p.half() for p in start], [p.half() for p in start])

    def grad(g: torch.Tensor, i: int) -> torch.Tensor:
        if layout == "transposed" and i == 0:
            return g.t().contiguous().t()
        return g.contiguous()

    runs = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(optim, "_fusable", lambda ps, gs: False)
        params = [p.clone() for p in start]
        opt = Adam(params, (0.9, 0.999))
        for step in range(6):
            for i, (p, g) in enumerate(zip(params, _grads(step, shapes), strict=True)):
                p.grad = None if (i == 2 and step % 2) else grad(g, i)
            opt.step(1e-2)
        runs.append(params)
    for p, q, p0 in zip(*runs, start, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert not torch.equal(p, p0)
