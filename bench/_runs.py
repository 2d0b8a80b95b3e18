"""Runs the benchmarks share: news chunks embedded with the packaged MiniLM, made once.

Imported by the bench scripts (run as `python bench/NAME.py`, so this folder is on
`sys.path`).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def news_base_run(out: Path, n_texts: int) -> Path:
    """`out/base-N`: N shuffled news chunks embedded with MiniLM (reused when complete)."""
    from saescope.corpus import CorpusConfig
    from saescope.corpus import run as make_corpus
    from saescope.embed import EmbedConfig
    from saescope.embed import run as embed

    base = out / f"base-{n_texts}"
    if not (base / "acts" / "manifest.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        make_corpus(CorpusConfig(run=str(base), source="news", shuffle=True, limit=n_texts))
        embed(EmbedConfig(run=str(base), batch_size=64))
    return base
