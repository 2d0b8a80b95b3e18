"""Which torch device a stage runs on: one rule for every stage's `--device`."""

from __future__ import annotations

import torch

from saescope.errors import SaescopeError


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda when present, else cpu; `cuda`/`cuda:N` only when CUDA is there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SaescopeError(
            f"device {name!r} asked for, but CUDA is not available; use --device cpu"
        )
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise SaescopeError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from exc
