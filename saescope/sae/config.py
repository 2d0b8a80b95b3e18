"""The SAE's own description, saved as `sae/config.json` beside `sae.safetensors`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from saescope.config import coerce
from saescope.errors import SaescopeError
from saescope.sae import archs
from saescope.sae.archs import ARCHITECTURES

INPUT_NORMS = ("none", "row_standardize")
SAE_DTYPES = ("float32", "float16", "bfloat16", "float64")  # torch dtypes by name


@dataclass(frozen=True)
class SAEConfig:
    """Shape and inference rule of one sparse autoencoder.

    Inference (`SAE.encode`), for every architecture:
        x' = (x - mean) / (std + 1e-5)  per row, only when input_norm == "row_standardize"
        h  = (x' - b_dec) @ W_enc + b_enc                     # (n_rows, d_sae)
        z  = the architecture's rule on h (`saescope.sae.archs`):
        relu:      z = relu(h)
        topk:      z = the k largest of relu(h) per row, others 0
        batchtopk, matryoshka_batchtopk:
                   z = relu(h) * (h > threshold)   (threshold learned in training, one value)
        jumprelu:  z = relu(h) * (h > threshold)   (threshold per feature)
    `SAE.decode`: x_hat = z @ W_dec + b_dec, then `* std + mean` per row when standardised.
    """

    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None  # topk family: active latents per row (batch-wide ones: mean per row)
    input_norm: str = "none"
    dtype: str = "float32"
    # free-form provenance: source library, hook/layer, embedding model, training config...
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, tp in (("d_in", int), ("d_sae", int), ("k", int | None), ("dtype", str)):
            object.__setattr__(self, name, coerce(name, tp, getattr(self, name)))
        if self.dtype not in SAE_DTYPES:
            raise SaescopeError(
                f"unknown SAE dtype {self.dtype!r}; choose one of {', '.join(SAE_DTYPES)}"
            )
        if self.architecture not in ARCHITECTURES:
            raise SaescopeError(
                f"unknown SAE architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}"
            )
        if self.input_norm not in INPUT_NORMS:
            raise SaescopeError(
                f"unknown input_norm {self.input_norm!r}; choose one of {INPUT_NORMS}"
            )
        if self.d_in < 1 or self.d_sae < 1:
            raise SaescopeError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        archs.get(self.architecture).check_sae(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
