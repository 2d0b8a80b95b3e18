"""Training checkpoints: everything needed to continue bit-for-bit.

Out: `<sae dir>/checkpoints/step-NNNNNNNN.pt` (torch.save of plain tensors and
numbers: weights, Adam state, dead-latent counters, thresholds, input scale, step,
training config), written atomically; the oldest beyond `keep` are deleted.
In: `latest_checkpoint(dir)` finds the newest complete one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saescope import paths
from saescope.errors import SaescopeError, describe
from saescope.io import atomic_path


def save_checkpoint(sae_paths: paths.SAEPaths, step: int, state: dict[str, Any], keep: int) -> Path:
    target = sae_paths.checkpoint(step)
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    old = sorted(sae_paths.checkpoints.glob("step-*.pt"))
    for p in old[: max(0, len(old) - max(1, keep))]:
        p.unlink()
    return target


def latest_checkpoint(sae_paths: paths.SAEPaths) -> Path | None:
    found = (
        sorted(sae_paths.checkpoints.glob("step-*.pt")) if sae_paths.checkpoints.is_dir() else []
    )
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file is a user-level problem: say which and what to do
        raise SaescopeError(
            f"cannot read checkpoint {path}: {describe(exc)}; delete it to resume from an older one"
        ) from exc
