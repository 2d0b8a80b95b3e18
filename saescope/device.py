"""Which torch device a stage runs on: one rule for every stage's `--device`."""

from __future__ import annotations

import os

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


def onednn_allows(*isas: str) -> bool:
    """False when ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA) caps oneDNN below
    every ISA named (matched as parts of the cap's name: "AMX", "BF16"). torch and
    OpenVINO read the CPU, not that cap: under a cap such as AVX2 a torch bfloat16 matmul
    ran without native support, 2.5 GFLOP/s against float32's 230 on a capped AMX Xeon,
    and OpenVINO, which still listed BF16, failed to compile a bfloat16 graph (2026-12-01)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    cap = cap.strip().upper()
    return cap in ("", "ALL", "DEFAULT") or any(isa in cap for isa in isas)
