"""`saescope serve`: a served dashboard over run directories (FastAPI + uvicorn, read-only).

A sub-package because it holds several small concepts, one file each:
  tables.py      per-feature arrays from features.parquet; the browser's search, filters, sort
  rows.py        the latent shards memory-mapped: a feature's activations at given rows
  histograms.py  every feature's activation histogram, from one pass over the cache
  decoder.py     decoder directions: nearest features, matching two SAEs by cosine
  served.py      `ServedRun`: one run opened for serving, and its answers
  models.py      models loaded on first use: text inspector, search and generation steering
  compare.py     every SAE of the runs (a sweep's too), matched pairs on request
  limits.py      what one request may ask (sizes, counts, tokens, seconds)
  errors.py      the 404 and 503 answers
  app.py         `create_app`: the FastAPI app, its error answers and body limit
  api.py         the JSON API under /api
  pages.py       the pages, static assets and run files
  cli.py         `saescope serve` (uvicorn on 127.0.0.1 by default)
  static/        the pages' scripts and styles (no build step, no CDN)

Names are imported on first use (the modules load torch, pandas and FastAPI).
"""

from typing import TYPE_CHECKING

from saescope._lazy import lazy_exports

if TYPE_CHECKING:
    from saescope.serve.app import create_app
    from saescope.serve.limits import Limits
    from saescope.serve.served import ServedRun

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Limits": ("saescope.serve.limits", "Limits"),
        "ServedRun": ("saescope.serve.served", "ServedRun"),
        "create_app": ("saescope.serve.app", "create_app"),
    },
)

__all__ = ["Limits", "ServedRun", "create_app"]
