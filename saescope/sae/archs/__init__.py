"""The registry of SAE architectures: a name -> the one module that holds all of it.

Each module in this package defines one `Architecture` (see `base.py`) as `ARCH`:
its inference rule, training loss, initialisation specifics, options and SAELens
mapping. Everything else (the model, trainer, init, latents, eval, convert and the
loaders) asks `get(name)`. Adding an architecture is adding a module here, listing it
in `_MODULES`, and its tests. Importing this package does not import torch.

    relu                  z = relu(h); mse + l1 * L1
    topk                  k largest per row; mse + aux * AuxK
    batchtopk             k * n_rows largest of the batch; learned threshold at inference
    jumprelu              z = relu(h) * (h > t), t learned per latent; mse + l0 * L0
    matryoshka_batchtopk  BatchTopK with nested prefix losses
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING

from saescope.errors import SaescopeError
from saescope.sae.archs.base import Architecture, CommonOptions, SaelensMapping

_MODULES = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk")

REGISTRY: dict[str, Architecture] = {}
for _name in _MODULES:
    _arch = importlib.import_module(f"{__name__}.{_name}").ARCH
    if _arch.name != _name:
        raise RuntimeError(f"{__name__}.{_name} registers {_arch.name!r}")
    REGISTRY[_name] = _arch

ARCHITECTURES: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Architecture:
    """The architecture called `name`, or a SaescopeError listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise SaescopeError(
            f"unknown SAE architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}"
        ) from None


def by_saelens_name(name: str) -> Architecture | None:
    """The architecture a SAELens `architecture` value (a checkpoint's) loads as."""
    for arch in REGISTRY.values():
        if name in arch.saelens_names:
            return arch
    return None


def by_saelens_training(name: str | None) -> Architecture | None:
    """The architecture a SAELens `metadata.training_architecture` stands for, if it is
    saved under another inference architecture (batchtopk and matryoshka: jumprelu)."""
    for arch in REGISTRY.values():
        if name is not None and arch.saelens_training == name:
            return arch
    return None


def help_text() -> str:
    """One line per architecture, for `--architecture`'s help."""
    return "SAE architecture: " + "; ".join(f"{a.name}: {a.summary}" for a in REGISTRY.values())


def _option_bases() -> tuple[type, ...]:
    """Every architecture's options class, each once, most derived first (for the MRO)."""
    seen: list[type] = []
    for arch in REGISTRY.values():
        if arch.options not in seen:
            seen.append(arch.options)
    # drop a class another one already inherits (matryoshka's options extend batchtopk's)
    return tuple(c for c in seen if not any(o is not c and issubclass(o, c) for o in seen))


# TrainConfig inherits this: the options of every registered architecture
if TYPE_CHECKING:  # the same class, spelled out for the type checker
    from saescope.sae.archs.jumprelu import JumpReLUOptions
    from saescope.sae.archs.matryoshka_batchtopk import MatryoshkaOptions
    from saescope.sae.archs.relu import ReluOptions

    @dataclasses.dataclass(frozen=True)
    class ArchOptions(ReluOptions, JumpReLUOptions, MatryoshkaOptions):
        """Options of the architectures (each option's help names its own)."""
else:
    ArchOptions = dataclasses.dataclass(frozen=True)(
        type(
            "ArchOptions",
            _option_bases(),
            {"__doc__": "Options of the architectures (each option's help names its own)."},
        )
    )


def option_names(arch: Architecture) -> set[str]:
    """The option fields `arch` reads beyond the shared ones."""
    return {f.name for f in dataclasses.fields(arch.options)} - {
        f.name for f in dataclasses.fields(CommonOptions)
    }


__all__ = [
    "ARCHITECTURES",
    "REGISTRY",
    "Architecture",
    "ArchOptions",
    "SaelensMapping",
    "by_saelens_name",
    "by_saelens_training",
    "get",
    "help_text",
]
