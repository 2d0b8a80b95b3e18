"""Names a package exports, imported on first use (PEP 562).

`import saescope` and the CLI's `--help` must not pay for torch, pandas or
sentence-transformers; a package lists its public names with the module each
comes from, and `__getattr__` imports that module when a name is first used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, tuple[str, str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`; `exports`: name -> (module, attribute)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            # an unknown name: let `from package import submodule` fall back to importing it
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = exports[name]
        value = getattr(importlib.import_module(module), attr)
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
