"""Training losses: each architecture's lives in its module of `saescope.sae.archs`.

`loss(sae, x, ctx, extra)` asks the SAE's architecture (`sae.arch.loss`); the shared
machinery (`LossContext`, `LossOutput`, AuxK, the JumpReLU straight-through
estimators, padded active sets) is `saescope.sae.archs._loss`, re-exported here
together with one function per architecture for callers that name one.
"""

from __future__ import annotations

import torch

from saescope.sae import SAE
from saescope.sae.archs import get
from saescope.sae.archs._loss import (
    JumpReLU,
    LossContext,
    LossOutput,
    Step,
    aux_indices,
)

_aux_indices = aux_indices  # the name the tests and benches use


def loss(
    sae: SAE, x: torch.Tensor, ctx: LossContext, extra: torch.nn.Parameter | None = None
) -> LossOutput:
    """The loss of the SAE's architecture on normalised inputs x (n_rows, d_in)."""
    return sae.arch.loss(sae, x, ctx, extra)


def topk_loss(sae: SAE, x: torch.Tensor, ctx: LossContext) -> LossOutput:
    return get("topk").loss(sae, x, ctx, None)


def batchtopk_loss(sae: SAE, x: torch.Tensor, ctx: LossContext) -> LossOutput:
    return get("batchtopk").loss(sae, x, ctx, None)


def matryoshka_batchtopk_loss(sae: SAE, x: torch.Tensor, ctx: LossContext) -> LossOutput:
    return get("matryoshka_batchtopk").loss(sae, x, ctx, None)


def relu_loss(sae: SAE, x: torch.Tensor, ctx: LossContext) -> LossOutput:
    return get("relu").loss(sae, x, ctx, None)


def jumprelu_loss(
    sae: SAE, x: torch.Tensor, ctx: LossContext, log_threshold: torch.nn.Parameter | torch.Tensor
) -> LossOutput:
    return get("jumprelu").loss(sae, x, ctx, log_threshold)  # type: ignore[arg-type]


__all__ = [
    "JumpReLU",
    "LossContext",
    "LossOutput",
    "Step",
    "batchtopk_loss",
    "jumprelu_loss",
    "loss",
    "matryoshka_batchtopk_loss",
    "relu_loss",
    "topk_loss",
]
