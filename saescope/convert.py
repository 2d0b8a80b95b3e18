"""Convert stage: an SAE file of any supported format in, a saescope or SAELens folder out.

Reads SAELens (`cfg.json` + `sae_weights.safetensors`), sparsify (`cfg.json` +
`sae.safetensors`, or a checkpoint with one folder per hookpoint plus
`--hookpoint`), saerch `{domain}_{k}_{n}_{batch}.pth` (seed 004), BatchTopK-repo
`config.json` + `sae.pt`, or a saescope folder, with the same codes as the home
library (see docs/formats.md). Writes into `--out`:
  --to native  : config.json + sae.safetensors (what `saescope train` writes)
  --to saelens : cfg.json + sae_weights.safetensors (loads with sae_lens.SAE.load_from_disk)
and `convert.json` (these options, the source format and the source files' sha256).
Re-running with the same options and unchanged source files does nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from saescope import paths
from saescope.config import config_to_dict, same_config
from saescope.errors import SaescopeError
from saescope.io import read_json, sha256_file, write_json
from saescope.options.convert import TARGETS, ConvertConfig
from saescope.sae.formats import Located, detect_format, export_saelens, load_sae

# every SAE file name convert may write; an --overwrite clears them all first
_OUTPUT_FILES = {
    "native": (paths.NATIVE_SAE_CONFIG, paths.NATIVE_SAE_WEIGHTS),
    "saelens": (paths.SAELENS_CFG, paths.SAELENS_WEIGHTS),
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


def _is_done(out: Path, cfg: ConvertConfig, sources: dict[str, str]) -> bool | None:
    """True: finished with these options; False: another conversion is there; None: none."""
    record = out / paths.CONVERT_RECORD
    if not record.exists():
        return None
    saved = read_json(record)
    same = (
        not same_config(saved.get("config", {}), cfg, ignore=("overwrite",))
        and saved.get("source_sha256") == sources
    )
    present = all((out / name).exists() for name in _OUTPUT_FILES[cfg.to])
    return same and present


def run(cfg: ConvertConfig) -> Path:
    if not cfg.src or not cfg.out:
        raise SaescopeError("convert needs --src (the SAE to read) and --out (a folder to write)")
    if cfg.to not in TARGETS:
        raise SaescopeError(f"--to must be one of {', '.join(TARGETS)}, got {cfg.to!r}")
    where = detect_format(cfg.src, cfg.hookpoint)
    out = Path(cfg.out)
    src_dir = where.path.parent if where.path.is_file() else where.path
    if out.resolve() == src_dir.resolve():
        raise SaescopeError(f"--out {out} is the source folder; choose another folder")
    sources = _source_record(where)
    done = _is_done(out, cfg, sources)
    if done:
        return out
    if not cfg.overwrite and (done is False or (out.exists() and any(out.iterdir()))):
        raise SaescopeError(
            f"{out} already holds files (another conversion or other data); "
            "choose an empty folder or pass --overwrite"
        )
    sae = load_sae(cfg.src, hookpoint=cfg.hookpoint, k=cfg.k)
    if out.exists():  # --overwrite: clear SAE files of either target, nothing else
        for name in (*_OUTPUT_FILES["native"], *_OUTPUT_FILES["saelens"], paths.CONVERT_RECORD):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if cfg.to == "native":
        sae.save(out)
    else:
        export_saelens(sae, out)
    write_json(
        out / paths.CONVERT_RECORD,
        {
            "config": config_to_dict(cfg),
            "source_format": where.format,
            "source_path": str(where.path),
            "source_sha256": sources,
            "architecture": sae.cfg.architecture,
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
            "k": sae.cfg.k,
            "conversion": sae.cfg.metadata.get("conversion", []),
        },
    )
    return out
