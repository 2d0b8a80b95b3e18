"""Sparse autoencoders: config, module, inference rules and file formats."""

from saescope.sae.config import ARCHITECTURES, SAEConfig
from saescope.sae.formats import detect_format, export_saelens, load_sae
from saescope.sae.model import SAE, Encoding, ForwardOutput

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "Encoding",
    "ForwardOutput",
    "SAEConfig",
    "detect_format",
    "export_saelens",
    "load_sae",
]
