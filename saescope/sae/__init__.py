"""Sparse autoencoders: config, module, inference rules and file formats."""

from typing import TYPE_CHECKING

from saescope._lazy import lazy_exports
from saescope.sae.config import ARCHITECTURES, SAEConfig

if TYPE_CHECKING:
    from saescope.sae.formats import detect_format, export_saelens, export_sparsify, load_sae
    from saescope.sae.model import SAE, Encoding, ForwardOutput

# the module and the formats load torch: imported on first use, so the light
# `saescope.sae.config` (the architecture registry the CLI needs) stays light
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SAE": ("saescope.sae.model", "SAE"),
        "Encoding": ("saescope.sae.model", "Encoding"),
        "ForwardOutput": ("saescope.sae.model", "ForwardOutput"),
        "detect_format": ("saescope.sae.formats", "detect_format"),
        "export_saelens": ("saescope.sae.formats", "export_saelens"),
        "export_sparsify": ("saescope.sae.formats", "export_sparsify"),
        "load_sae": ("saescope.sae.formats", "load_sae"),
    },
)

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "Encoding",
    "ForwardOutput",
    "SAEConfig",
    "detect_format",
    "export_saelens",
    "export_sparsify",
    "load_sae",
]
