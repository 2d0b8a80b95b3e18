"""The SAE module: one class for every architecture, one fixed forward result.

Weights (names and shapes are the on-disk contract of `sae.safetensors`):
    W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,),
    threshold (d_sae,) float32 (batchtopk family: one learned value repeated; jumprelu: per
    feature; kept for relu/topk too so every file has the same keys).
The inference rule of each architecture is its module's in `saescope.sae.archs`
(summarised on `SAEConfig`).
Training losses live in `saescope.train`; this module is inference and I/O.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from saescope._version import __version__
from saescope.errors import SaescopeError, describe
from saescope.io import atomic_path
from saescope.sae import archs
from saescope.sae.config import SAEConfig

WEIGHT_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
ROW_STD_EPS = 1e-5


def row_standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x - mean) / (std + ROW_STD_EPS) per row over the last dim, with the mean and the
    (unbiased, as the BatchTopK repo and SAELens's layer_norm take it) std to undo it."""
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True)
    return (x - mean) / (std + ROW_STD_EPS), mean, std


class Encoding(NamedTuple):
    codes: torch.Tensor  # (n_rows, d_sae) dense, zeros where inactive
    pre_acts: torch.Tensor  # (n_rows, d_sae) h before the sparsity rule


class ForwardOutput(NamedTuple):
    x_hat: torch.Tensor  # (n_rows, d_in) reconstruction in input space
    codes: torch.Tensor  # (n_rows, d_sae)
    pre_acts: torch.Tensor  # (n_rows, d_sae)


class SAE(nn.Module):
    """A sparse autoencoder of any architecture (`SAEConfig`; the rule is the architecture's).

    `encode(x)` -> codes (n_rows, d_sae), `reconstruct(x)` -> x_hat in the input's space,
    `forward(x)` -> both with the pre-activations (`ForwardOutput`); x is (..., d_in), a
    tensor, numpy array or list. `load_sae` and `train_on_batches` return it ready for
    inference (eval mode, no gradients: `sae.requires_grad_(True)` to train it further).
    `save(dir)` / `SAE.load(dir)` write and read the native folder.
    """

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.arch = archs.get(cfg.architecture)
        dt = getattr(torch, cfg.dtype)
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dt))
        # float32 always: a threshold in bf16 moves in steps too coarse to learn
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=torch.float32))

    # -- inference -------------------------------------------------------------
    def _standardize(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.cfg.input_norm != "row_standardize":
            return x, None, None
        return row_standardize(x)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """h = (x - b_dec) @ W_enc + b_enc on already-normalised input; (n_rows, d_sae)."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def sparsify(self, h: torch.Tensor) -> torch.Tensor:
        """Apply the architecture's inference rule to pre-activations h (n_rows, d_sae)."""
        return self.arch.sparsify(self, h)

    def _rows(self, x: Any) -> torch.Tensor:
        """`x` (..., d_in) as a tensor on the SAE's device and in its dtype (numpy arrays and
        lists are taken too), or a `SaescopeError` naming the shape it needs."""
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(np.asarray(x))  # cast below, to the SAE's own dtype
            except (TypeError, ValueError) as exc:
                raise SaescopeError(
                    f"the SAE takes a tensor or array of rows, got {type(x).__name__}: "
                    f"{describe(exc)}"
                ) from exc
        if x.ndim == 0 or x.shape[-1] != self.cfg.d_in:
            raise SaescopeError(
                f"the SAE takes rows of {self.cfg.d_in} values, shape (n_rows, {self.cfg.d_in}) "
                f"or (..., {self.cfg.d_in}); got shape {tuple(x.shape)}"
            )
        return x.to(self.W_enc.device, self.W_enc.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (n_rows, d_sae) of inputs (n_rows, d_in)."""
        return self.encode_full(x).codes

    def encode_full(self, x: torch.Tensor) -> Encoding:
        xs, _, _ = self._standardize(self._rows(x))
        h = self.pre_activations(xs)
        return Encoding(self.sparsify(h), h)

    def decode(
        self, codes: torch.Tensor, mean: torch.Tensor | None = None, std: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reconstruction (n_rows, d_in) of codes; mean/std undo row standardisation.

        An SAE with `input_norm="row_standardize"` encodes each row standardised, so
        `decode(codes)` alone is in that standardised space; `reconstruct(x)` (or
        `forward(x).x_hat`) maps back to the input's, as does passing the row's mean and
        std (`saescope.sae.model.row_standardize(x)[1:]`).
        """
        x_hat = codes @ self.W_dec + self.b_dec
        if mean is not None and std is not None:
            x_hat = x_hat * std + mean  # as SAELens layer_norm and the BatchTopK repo map back
        return x_hat

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat (..., d_in) of inputs x, in the input's space whatever the `input_norm`."""
        return self.forward(x).x_hat

    def forward(self, x: torch.Tensor) -> ForwardOutput:
        xs, mean, std = self._standardize(self._rows(x))
        h = self.pre_activations(xs)
        z = self.sparsify(h)
        return ForwardOutput(self.decode(z, mean, std), z, h)

    # -- weights ---------------------------------------------------------------
    @property
    def dtype_name(self) -> str:
        """The weights' dtype by name ("float32"): `cfg.dtype` unless the module was cast
        since (`sae.to(torch.float16)`), which is what `save` and the exports write."""
        return str(self.W_enc.dtype).removeprefix("torch.")

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale decoder rows to unit norm (the encoder is left as it is)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n).detach().contiguous() for n in WEIGHT_NAMES}

    @classmethod
    def from_tensors(
        cls, cfg: SAEConfig, tensors: dict[str, torch.Tensor], source: str = "tensors"
    ) -> SAE:
        """Build an SAE from native-layout tensors, checking every name and shape."""
        sae = cls(cfg)
        expect = {
            "W_enc": (cfg.d_in, cfg.d_sae),
            "b_enc": (cfg.d_sae,),
            "W_dec": (cfg.d_sae, cfg.d_in),
            "b_dec": (cfg.d_in,),
            "threshold": (cfg.d_sae,),
        }
        for name, shape in expect.items():
            if name not in tensors:
                if name == "threshold" and not sae.arch.has_threshold:
                    continue
                raise SaescopeError(f"{source} lacks the tensor {name!r}")
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise SaescopeError(
                    f"{source}: {name} has shape {tuple(t.shape)}, expected {shape}"
                )
            if not t.is_floating_point():
                raise SaescopeError(f"{source}: {name} has dtype {t.dtype}, expected a float type")
            with torch.no_grad():
                getattr(sae, name).copy_(t)
        return sae

    def save(self, directory: str | Path, extra_config: dict | None = None) -> Path:
        """Write `config.json` and `sae.safetensors` (atomically) into `directory`."""
        from saescope import paths

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / "sae.safetensors") as tmp:
            save_file(self.state_tensors(), str(tmp))
        cfg = self.cfg.to_dict() | {"dtype": self.dtype_name, "saescope_version": __version__}
        cfg |= extra_config or {}
        with atomic_path(d / paths.STAGE_CONFIG) as tmp:
            tmp.write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> SAE:
        """Load a native saescope SAE folder (config.json + sae.safetensors)."""
        from saescope.device import pick_device

        device = str(pick_device(device))  # an unknown device is named as such
        d = Path(directory)
        cfg_path, w_path = d / "config.json", d / "sae.safetensors"
        if not cfg_path.exists() or not w_path.exists():
            from saescope.sae.formats import untrained_hint

            hint = untrained_hint(d)
            raise SaescopeError(
                f"{d} is not a saescope SAE folder (needs config.json and sae.safetensors)"
                + (hint or "; for other libraries' files use `saescope convert`")
            )
        cfg = SAEConfig.from_dict(json.loads(cfg_path.read_text()))
        try:
            tensors = load_file(str(w_path), device=device)
        except Exception as exc:
            raise SaescopeError(
                f"cannot read {w_path}: {describe(exc)}; if it was trained here, remove {d} "
                "and re-run `saescope train` to make it again"
            ) from exc
        return cls.from_tensors(cfg, tensors, str(w_path)).to(device)
