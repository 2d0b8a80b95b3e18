"""Adam over a fixed list of tensors, written out instead of `torch.optim.Adam`.

In: the trainee's parameters (each with `.grad` set by backward). Out: the
parameters updated in place by one Adam step at the learning rate the trainer
schedules; `state_dict()` / `load_state_dict()` for bit-exact resume.

Why not `torch.optim.Adam`: constructing the first `torch.optim.Optimizer` in a
process imports `torch._dynamo` (about 1.3 s on the 2-core bench machine), a fixed
cost that a short embedding run (seconds of training) and every CLI call pay. The
update is the same as torch's default (non-AMSGrad, no weight decay):

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g^2
    p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)

One step count t for all parameters (torch keeps one per parameter; they agree here
because every parameter of an SAE gets a gradient every step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from saescope.errors import SaescopeError


class Adam:
    def __init__(
        self, params: Sequence[torch.Tensor], betas: Sequence[float], eps: float = 1e-8
    ) -> None:
        self.params = list(params)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        step_size = lr / (1.0 - b1**self.t)
        root_bc2 = math.sqrt(1.0 - b2**self.t)
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            g = p.grad
            if g is None:
                continue
            m.lerp_(g, 1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = v.sqrt().div_(root_bc2).add_(self.eps)
            p.addcdiv_(m, denom, value=-step_size)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "adam",
            "t": self.t,
            "m": [m.detach().cpu().clone() for m in self.m],
            "v": [v.detach().cpu().clone() for v in self.v],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shapes = [tuple(p.shape) for p in self.params]
        if (
            state.get("kind") != "adam"
            or [tuple(m.shape) for m in state["m"]] != shapes
            or [tuple(v.shape) for v in state["v"]] != shapes
        ):
            raise SaescopeError(
                "the checkpoint's optimizer state does not fit this trainer "
                "(written by another saescope version?); re-run with --overwrite"
            )
        self.t = int(state["t"])
        with torch.no_grad():
            for dst, src in zip(self.m + self.v, state["m"] + state["v"], strict=True):
                dst.copy_(src)
