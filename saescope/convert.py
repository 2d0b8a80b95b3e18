"""Convert stage: an SAE file of any supported format in, a saescope, SAELens or sparsify
folder out.

Reads SAELens (`cfg.json` + `sae_weights.safetensors`), sparsify (`cfg.json` +
`sae.safetensors`, or a checkpoint with one folder per hookpoint plus
`--hookpoint`), saerch `{domain}_{k}_{n}_{batch}.pth` (seed 004), BatchTopK-repo
`config.json` + `sae.pt`, or a saescope folder, with the same codes as the home
library (see docs/formats.md). Writes into `--out`:
  --to native  : config.json + sae.safetensors (what `saescope train` writes)
  --to saelens : cfg.json + sae_weights.safetensors (loads with sae_lens.SAE.load_from_disk)
  --to sparsify: cfg.json + sae.safetensors (sparsify's SparseCoder.load_from_disk, and
                 delphi; TopK SAEs only)
and `convert.json`, the provenance record of the conversion (these options, the
sha256 of the source files read, and as its result the source format and path and
the SAE's shape).
Re-running with the same options and unchanged source files does nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from saescope import paths, provenance
from saescope.errors import SaescopeError
from saescope.io import sha256_file
from saescope.options.convert import TARGETS, ConvertConfig
from saescope.paths import SAEPaths
from saescope.sae.formats import (
    Located,
    detect_format,
    export_saelens,
    export_sparsify,
    load_sae,
)
from saescope.sae.formats.sparsify import sparsify_config
from saescope.sae.model import SAE

# every SAE file name convert may write; an --overwrite clears them all first
_OUTPUT_FILES = {
    "native": (paths.NATIVE_SAE_CONFIG, paths.NATIVE_SAE_WEIGHTS),
    "saelens": (paths.SAELENS_CFG, paths.SAELENS_WEIGHTS),
    "sparsify": (paths.SPARSIFY_CFG, paths.SPARSIFY_WEIGHTS),
}
# how each target is written (SAE.save is the native one)
_WRITERS: dict[str, Callable[[SAE, Path], object]] = {
    "native": SAE.save,
    "saelens": export_saelens,
    "sparsify": export_sparsify,
}


_SOURCE_FILES = {
    "saescope": (paths.NATIVE_SAE_CONFIG, paths.NATIVE_SAE_WEIGHTS),
    "saelens": (
        paths.SAELENS_CFG,
        paths.SAELENS_WEIGHTS,
        paths.SAELENS_SCALER,
        paths.SAELENS_WHITENING,
    ),
    "sparsify": (paths.SPARSIFY_CFG, paths.SPARSIFY_WEIGHTS),
    "batchtopk_repo": (paths.BATCHTOPK_CFG, paths.BATCHTOPK_WEIGHTS),
}


def _source_files(where: Located) -> list[Path]:
    """The files the loader reads (not a checkpoint's optimizer state and such)."""
    if where.path.is_file():
        return [where.path]
    return [where.path / n for n in _SOURCE_FILES[where.format] if (where.path / n).exists()]


def _source_record(where: Located) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in _source_files(where)}


def run(cfg: ConvertConfig) -> Path:
    """Convert `cfg.src` into `cfg.out`, holding the writer lock of the folder around it."""
    if not cfg.out:
        raise SaescopeError("convert needs --src (the SAE to read) and --out (a folder to write)")
    with provenance.run_lock(Path(cfg.out).parent, "convert"):
        return _convert(cfg)


def _convert(cfg: ConvertConfig) -> Path:
    if not cfg.src:
        raise SaescopeError("convert needs --src (the SAE to read) and --out (a folder to write)")
    if cfg.to not in TARGETS:
        raise SaescopeError(f"--to must be one of {', '.join(TARGETS)}, got {cfg.to!r}")
    where = detect_format(cfg.src, cfg.hookpoint)
    out = Path(cfg.out)
    src_dir = where.path.parent if where.path.is_file() else where.path
    if out.resolve() == src_dir.resolve():
        raise SaescopeError(f"--out {out} is the source folder; choose another folder")
    sources = _source_record(where)
    record = provenance.Record.make(
        out / paths.CONVERT_RECORD, "convert", cfg, sources, ignore=("overwrite",)
    )
    trained = SAEPaths(out)
    if trained.train_record.exists() and not cfg.overwrite:
        raise SaescopeError(
            f"{out} holds an SAE trained by `saescope train` ({trained.train_record.name}); "
            "--overwrite replaces it with the converted SAE and removes its training record, "
            "metrics and checkpoints; or choose another --out"
        )
    present = all((out / name).exists() for name in _OUTPUT_FILES[cfg.to])
    holds = out.exists() and any(out.iterdir())  # another conversion, or other data
    decision = record.decide(cfg.overwrite, out, exists=holds, quiet=True)
    if decision is provenance.Decision.SKIP and present:
        record.up_to_date(out)
        return out
    sae = load_sae(cfg.src, hookpoint=cfg.hookpoint, k=cfg.k)
    if out.exists():  # --overwrite: clear SAE files of either target, nothing else
        # ... and what described an SAE trained here (its records, metrics, checkpoints):
        # left beside converted weights they would claim those weights as trained here
        own = (*(n for names in _OUTPUT_FILES.values() for n in names), paths.CONVERT_RECORD)
        for target in [out / name for name in own] + [
            trained.train_record,
            trained.eval_record,
            trained.metrics,
            trained.train_log,
            trained.checkpoints,
        ]:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if cfg.to == "sparsify":
        sparsify_config(sae)  # an SAE sparsify cannot run is refused before --out changes
    record.start()
    _WRITERS[cfg.to](sae, out)
    record.finish(
        {
            "source_format": where.format,
            "source_path": str(where.path),
            "architecture": sae.cfg.architecture,
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
            "k": sae.cfg.k,
            "conversion": sae.cfg.metadata.get("conversion", []),
        }
    )
    return out
