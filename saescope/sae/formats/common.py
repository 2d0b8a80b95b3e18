"""Shared pieces of the foreign-format loaders: safe file reading and tensor checks.

Every loader reads its files through these helpers, so a bad file always fails
with a `SaescopeError` that names the file and the problem (missing key, wrong
shape, integer tensor...), never with a bare traceback. Weight arithmetic
(folding biases, scales) is done in float64 and cast back to the SAE's dtype.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from saescope.errors import SaescopeError, describe
from saescope.sae.config import SAE_DTYPES, SAEConfig
from saescope.sae.model import SAE

# dtype spellings found in foreign configs -> saescope's SAEConfig.dtype (SAE_DTYPES)
DTYPES = {name: name for name in SAE_DTYPES} | {
    "float": "float32",
    "half": "float16",
    "double": "float64",
}


def dtype_name(value: Any, where: str) -> str:
    """Map "torch.float32", "float32", torch.float32... onto an SAEConfig dtype name."""
    text = str(value).removeprefix("torch.")
    if text not in DTYPES:
        raise SaescopeError(
            f"{where}: unsupported dtype {value!r}; expected one of {', '.join(SAE_DTYPES)}"
        )
    return DTYPES[text]


def tensor_dtype_name(t: torch.Tensor, where: str) -> str:
    return dtype_name(str(t.dtype), where)


def read_json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SaescopeError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SaescopeError(f"{path} must hold a JSON object")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise SaescopeError(f"cannot read {path} as safetensors: {describe(exc)}") from exc


def read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A `torch.save`d state dict, read without running pickled code (weights_only)."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors, truncated files, non-tensor objects
        raise SaescopeError(
            f"cannot read {path} as a weights-only torch state dict: {describe(exc)}"
        ) from exc
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise SaescopeError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(data)


def take(
    tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], source: Path | str
) -> torch.Tensor:
    """The float tensor `name` of `shape`, or a SaescopeError naming `source`."""
    if name not in tensors:
        have = ", ".join(sorted(tensors)) or "nothing"
        raise SaescopeError(f"{source} lacks the tensor {name!r} (it holds: {have})")
    t = tensors[name]
    if not t.is_floating_point():
        raise SaescopeError(f"{source}: {name} has dtype {t.dtype}, expected a float type")
    if tuple(t.shape) != tuple(shape):
        raise SaescopeError(f"{source}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def reject_extra(
    tensors: dict[str, torch.Tensor], known: set[str], source: Path | str, what: str
) -> None:
    """Refuse tensors this loader does not understand: ignoring them could change the codes."""
    extra = sorted(set(tensors) - known)
    if extra:
        raise SaescopeError(
            f"{source} holds tensors saescope does not know for {what}: {', '.join(extra)}"
        )


def int_field(cfg: dict[str, Any], name: str, source: Path | str) -> int:
    value = cfg.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise SaescopeError(f"{source}: {name!r} must be an integer, got {value!r}")
    return int(value)


def build_sae(
    cfg: SAEConfig, weights: dict[str, torch.Tensor], source: Path | str, device: str = "cpu"
) -> SAE:
    """An SAE from native-layout weights (any float dtype; cast to cfg.dtype here)."""
    dt = getattr(torch, cfg.dtype)
    cast = {
        n: (t.to(torch.float32) if n == "threshold" else t.to(dt)).contiguous()
        for n, t in weights.items()
    }
    if "threshold" not in cast:
        cast["threshold"] = torch.zeros(cfg.d_sae, dtype=torch.float32)
    return SAE.from_tensors(cfg, cast, str(source)).to(device)
