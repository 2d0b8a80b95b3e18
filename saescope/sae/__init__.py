"""Sparse autoencoders: config, module, inference rules and file formats."""

from saescope.sae.config import ARCHITECTURES, SAEConfig
from saescope.sae.model import SAE, Encoding, ForwardOutput

__all__ = ["ARCHITECTURES", "SAE", "Encoding", "ForwardOutput", "SAEConfig"]
