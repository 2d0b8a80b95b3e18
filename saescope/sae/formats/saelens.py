"""SAELens folders (`cfg.json` + `sae_weights.safetensors`): load into saescope, export from it.

Load: architectures standard (-> relu), topk, jumprelu, and batchtopk and
matryoshka_batchtopk training checkpoints; a jumprelu file that SAELens wrote for a
BatchTopK or Matryoshka BatchTopK SAE (constant threshold,
`metadata.training_architecture` "batchtopk" or "matryoshka_batchtopk") comes back
as that native architecture. Which SAELens name is which native architecture, and
what each writes, is the architecture's (`saescope.sae.archs`). Everything that changes the encoder input is folded into the weights
so that `SAE.encode(x)` gives SAELens' codes on the raw activations x:
`apply_b_dec_to_input: false`, `rescale_acts_by_decoder_norm`, an old
`scaling_factor`, and a checkpoint's `activation_scaler.json` (norm scaling factor,
covariance whitening). `normalize_activations: "layer_norm"` becomes
`input_norm="row_standardize"`; `constant_norm_rescale` cannot be expressed and
is refused.

Export: `export_saelens(sae, out_dir)` writes a folder that `sae_lens.SAE.load_from_disk`
loads with the same codes (relu -> standard, topk -> topk, jumprelu -> jumprelu,
batchtopk and matryoshka_batchtopk -> jumprelu with their threshold).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from saescope import paths
from saescope._version import __version__
from saescope.errors import SaescopeError
from saescope.io import atomic_path
from saescope.sae import archs
from saescope.sae.config import SAEConfig
from saescope.sae.formats.common import (
    build_sae,
    dtype_name,
    int_field,
    read_json_file,
    read_safetensors,
    reject_extra,
    take,
)
from saescope.sae.model import SAE

SUPPORTED = tuple(name for arch in archs.REGISTRY.values() for name in arch.saelens_names)
# SAELens architectures trained with a per-batch rule whose checkpoints keep one learned
# threshold as `topk_threshold`, and whose cfg may ask to rescale codes by decoder norms
_TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")
# SAELens metadata keys worth carrying over to and from saescope's metadata
CARRIED_METADATA = (
    "model_name",
    "hook_name",
    "hook_head_index",
    "context_size",
    "prepend_bos",
    "dataset_path",
    "model_class_name",
)


def _architecture(raw: dict[str, Any], source: Path) -> tuple[str, Any]:
    """(architecture, k) with pre-6.0 configs (activation_fn "topk") understood."""
    arch = raw.get("architecture") or "standard"
    k = raw.get("k")
    act = raw.get("activation_fn", raw.get("activation_fn_str"))
    if arch == "standard" and act == "topk":
        arch, k = "topk", (raw.get("activation_fn_kwargs") or {}).get("k", k)
    if archs.by_saelens_name(arch) is None:
        raise SaescopeError(
            f"{source}: SAELens architecture {arch!r} is not supported by saescope "
            f"(supported: {', '.join(SUPPORTED)}); its inference rule has no native equivalent"
        )
    return arch, k


def _normalization(raw: dict[str, Any]) -> str:
    norm = raw.get("normalize_activations", "none")
    if norm is None or norm is False:
        return "none"
    if norm is True:  # SAELens < 6 spelled expected_average_only_in as a bool
        return "expected_average_only_in"
    return str(norm)


def _scaler(folder: Path, norm: str, cfg_path: Path) -> tuple[float | None, dict | None]:
    """(scaling factor, whitening tensors) from a trainer checkpoint's scaler files."""
    scaler_path = folder / paths.SAELENS_SCALER
    if norm not in ("expected_average_only_in", "covariance_whitening"):
        return None, None
    scaler = read_json_file(scaler_path) if scaler_path.exists() else {}
    factor = scaler.get("scaling_factor")
    whitening = None
    white_path = folder / paths.SAELENS_WHITENING
    if norm == "covariance_whitening" and white_path.exists():
        whitening = read_safetensors(white_path)
    if norm == "expected_average_only_in" and factor is None:
        raise SaescopeError(
            f"{cfg_path} says normalize_activations='expected_average_only_in' but the scaling "
            f"factor is not folded into the weights and no {paths.SAELENS_SCALER} with a "
            "scaling_factor is beside it; fold it in SAELens "
            "(sae.fold_activation_norm_scaling_factor(factor)) and save again"
        )
    if norm == "covariance_whitening" and whitening is None:
        raise SaescopeError(
            f"{cfg_path} says normalize_activations='covariance_whitening' but the whitening is "
            f"not folded into the weights and {white_path.name} is missing; fold it in SAELens "
            "(sae.fold_activation_whitening(...)) and save again"
        )
    return (float(factor) if factor is not None else None), whitening


def load_saelens(folder: Path, device: str = "cpu") -> SAE:
    """Load a SAELens SAE folder as a native SAE with the same codes."""
    cfg_path, w_path = folder / paths.SAELENS_CFG, folder / paths.SAELENS_WEIGHTS
    raw = read_json_file(cfg_path)
    arch, k = _architecture(raw, cfg_path)
    d_in, d_sae = int_field(raw, "d_in", cfg_path), int_field(raw, "d_sae", cfg_path)
    dtype = dtype_name(raw.get("dtype", "float32"), str(cfg_path))
    norm = _normalization(raw)
    if norm not in ("none", "layer_norm", "expected_average_only_in", "covariance_whitening"):
        raise SaescopeError(
            f"{cfg_path}: normalize_activations={norm!r} rescales each row by its own norm "
            "around the bias, which has no exact native equivalent; saescope cannot load it"
        )
    factor, whitening = _scaler(folder, norm, cfg_path)
    meta_in = raw.get("metadata") or {}
    tensors = read_safetensors(w_path)
    notes: list[str] = []

    f64 = torch.float64
    W_enc = take(tensors, "W_enc", (d_in, d_sae), w_path).to(f64)
    b_enc = take(tensors, "b_enc", (d_sae,), w_path).to(f64)
    W_dec = take(tensors, "W_dec", (d_sae, d_in), w_path).to(f64)
    b_dec = take(tensors, "b_dec", (d_in,), w_path).to(f64)
    known = {"W_enc", "b_enc", "W_dec", "b_dec", "scaling_factor", "finetuning_scaling_factor"}
    threshold = None
    if arch == "jumprelu":
        known |= {"threshold", "log_threshold"}
        if "threshold" in tensors:
            threshold = take(tensors, "threshold", (d_sae,), w_path).to(f64)
        else:  # older SAELens checkpoints keep log(threshold)
            threshold = take(tensors, "log_threshold", (d_sae,), w_path).exp().to(f64)
    if arch in _TOPK_FAMILY[1:]:  # a BatchTopK-family training checkpoint: one threshold
        known.add("topk_threshold")
        threshold = take(tensors, "topk_threshold", (), w_path).to(f64).expand(d_sae).clone()
    reject_extra(tensors, known, w_path, f"SAELens {arch}")

    for name in ("scaling_factor", "finetuning_scaling_factor"):
        if name in tensors:  # SAELens < 6 scaled codes before decoding
            W_dec = W_dec * take(tensors, name, (d_sae,), w_path).to(f64)[:, None]
            notes.append(f"{name} folded into W_dec")
    if arch in _TOPK_FAMILY and raw.get("rescale_acts_by_decoder_norm", False):
        # SAELens ranks h * |W_dec row| and decodes z / |W_dec row|: fold both
        norms = W_dec.norm(dim=1)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / safe[:, None]
        notes.append("rescale_acts_by_decoder_norm folded into W_enc, b_enc, W_dec")
    if not raw.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ W_enc
        notes.append("apply_b_dec_to_input=false: b_dec @ W_enc folded into b_enc")
    if whitening is not None:
        mean = take(whitening, "mean", (d_in,), folder / paths.SAELENS_WHITENING).to(f64)
        mat = take(whitening, "matrix", (d_in, d_in), folder / paths.SAELENS_WHITENING).to(f64)
        inv = take(whitening, "inverse_matrix", (d_in, d_in), folder / paths.SAELENS_WHITENING).to(
            f64
        )
        W_enc, W_dec, b_dec = mat @ W_enc, W_dec @ inv, b_dec @ inv + mean
        notes.append("covariance whitening folded into W_enc, W_dec, b_dec")
    if factor is not None:  # the SAE saw x * factor
        W_enc, W_dec, b_dec = W_enc * factor, W_dec / factor, b_dec / factor
        notes.append(f"norm scaling factor {factor} folded into W_enc, W_dec, b_dec")

    native = archs.by_saelens_name(arch)
    assert native is not None  # _architecture refused the others
    details = meta_in.get("training_architecture_details") or {}
    trained_as = archs.by_saelens_training(meta_in.get("training_architecture"))
    if (
        arch == "jumprelu"
        and trained_as is not None
        and threshold is not None
        and bool((threshold == threshold[0]).all())
        and details.get("k") is not None
    ):
        native = trained_as
        notes.append(
            f"jumprelu file written for a {meta_in['training_architecture']} SAE: "
            f"loaded as {native.name}"
        )
    k, extra_meta = native.from_saelens(raw | {"k": k}, details, str(cfg_path))
    if native.uses_k:
        if k is None:
            raise SaescopeError(f"{cfg_path}: architecture {arch!r} needs 'k'")
        if float(k) != round(float(k)):
            notes.append(f"mean active latents k={k} rounded to {round(float(k))}")
        k = max(1, round(float(k)))
    else:
        k = None

    metadata = {
        "source_format": "saelens",
        "source_path": str(folder),
        "source_architecture": arch,
        "saelens_metadata": meta_in,
        "conversion": notes,
    }
    metadata |= extra_meta
    metadata |= {key: meta_in[key] for key in CARRIED_METADATA if meta_in.get(key) is not None}
    if raw.get("reshape_activations", "none") != "none":
        metadata["reshape_activations"] = raw["reshape_activations"]
        notes.append("input must be flattened to (n_rows, n_heads * d_head) before encoding")
    cfg = SAEConfig(
        architecture=native.name,
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        input_norm="row_standardize" if norm == "layer_norm" else "none",
        dtype=dtype,
        metadata=metadata,
    )
    weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        weights["threshold"] = threshold
    return build_sae(cfg, weights, w_path, device)


def _training_store(metadata: dict[str, Any]) -> dict[str, Any]:
    """The SAELens metadata a native SAE's training store gives: `model_name`, and for LM
    token stores `hook_name` (SAELens's spelling), `context_size` and `prepend_bos`, so
    that the exported file still says which rows it reads (a loader checks them)."""
    store = metadata.get("store_meta")
    if not isinstance(store, dict):
        return {}
    out: dict[str, Any] = {}
    if store.get("model"):
        out["model_name"] = str(store["model"])
    if store.get("rows") == "tokens" and store.get("hookpoint"):
        from saescope.lm.hooks import saelens_name

        out["hook_name"] = saelens_name(str(store["hookpoint"]))
        if store.get("ctx_len"):
            out["context_size"] = int(store["ctx_len"])
        if "bos" in store:
            out["prepend_bos"] = bool(store["bos"])
    return out


def saelens_config(sae: SAE) -> dict[str, Any]:
    """The `cfg.json` SAELens 6 needs to load `sae` with the same inference rule."""
    cfg = sae.cfg
    mapping = sae.arch.to_saelens(cfg)
    source_meta = cfg.metadata.get("saelens_metadata") or {}
    meta: dict[str, Any] = dict(source_meta) if isinstance(source_meta, dict) else {}
    meta |= {key: cfg.metadata[key] for key in CARRIED_METADATA if key in cfg.metadata}
    meta = _training_store(cfg.metadata) | meta
    # the cfg.json layout is SAELens 6's; without a 6.x version SAELens takes it for a pre-6 file
    if (
        not str(meta.get("sae_lens_version", "")).split(".")[0].isdigit()
        or int(str(meta["sae_lens_version"]).split(".")[0]) < 6
    ):
        meta["sae_lens_version"] = "6.0.0"
    meta["converted_by"] = f"saescope {__version__}"
    if mapping.training is not None:
        meta["training_architecture"] = mapping.training
        meta["training_architecture_details"] = mapping.details or {}
    out: dict[str, Any] = {
        "architecture": mapping.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": sae.dtype_name,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        # SAELens' layer_norm is saescope's row_standardize (unbiased std, eps 1e-5)
        "normalize_activations": "layer_norm" if cfg.input_norm == "row_standardize" else "none",
        "reshape_activations": "none",
        "metadata": meta,
    }
    return out | mapping.fields


def export_saelens(sae: SAE, out_dir: str | Path) -> Path:
    """Write `cfg.json` + `sae_weights.safetensors` (atomically) that SAELens loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = saelens_config(sae)
    keys = ["W_enc", "b_enc", "W_dec", "b_dec"]
    if config["architecture"] == "jumprelu":
        keys.append("threshold")
    dt = sae.W_enc.dtype  # the SAE's own, also when it was cast after it was made
    tensors = {n: getattr(sae, n).detach().to("cpu", dt).contiguous() for n in keys}
    with atomic_path(out / paths.SAELENS_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(out / paths.SAELENS_CFG) as tmp:
        tmp.write_text(json.dumps(config, indent=2, default=str) + "\n")
    return out
