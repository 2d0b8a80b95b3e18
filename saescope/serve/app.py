"""The dashboard's FastAPI application: runs opened once, a JSON API, light pages, guarded edges.

In: run directories and `Limits`. Out: `create_app(...)`, an ASGI app that

- opens every run at start-up (`ServedRun`: the per-feature tables) and names it by
  its folder (`demo`, `demo-2` when two folders share a name);
- answers the JSON API under /api (OpenAPI document at /openapi.json, read by the
  offline page /api; FastAPI's own /docs is off because it loads its script from a CDN)
  and the pages (`saescope.serve.pages`);
- answers every request it cannot honour with a 4xx and a one-line JSON message: a
  user mistake (`SaescopeError`) 400, an unknown run, feature or SAE 404, a body over
  `Limits.max_body_bytes` 413, a malformed field 422, a model busy with another request
  503. Anything else is a bug: its traceback goes to the server's log, and the answer
  is a 500 that names the exception's type only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saescope._version import __version__
from saescope.errors import SaescopeError
from saescope.io import json_safe
from saescope.serve.compare import Catalog
from saescope.serve.errors import Busy, NotFound
from saescope.serve.limits import Limits
from saescope.serve.served import ServedRun


def _plain(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


class SafeJSON(JSONResponse):
    """JSON with NaN and infinities as null (strict parsers reject bare NaN) and numpy
    values as plain numbers."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(
            json_safe(content), ensure_ascii=False, allow_nan=False, default=_plain,
            separators=(",", ":"),
        )  # fmt: skip
        return text.encode("utf-8")


@dataclass
class Served:
    """What the app serves: the runs by id, every SAE for comparisons, the limits."""

    runs: dict[str, ServedRun]
    catalog: Catalog
    limits: Limits
    seconds: float = 0.0  # start-up: the time the tables took to build
    notes: list[str] = field(default_factory=list)

    def run(self, rid: str) -> ServedRun:
        if rid not in self.runs:
            raise NotFound(f"no run {rid!r} is served; the runs are {', '.join(self.runs)}")
        return self.runs[rid]


def one_blas_thread() -> None:
    """NumPy's BLAS on one thread, for this whole process.

    A server answers requests in parallel threads; a feature page's one matrix-vector
    product (nearest features) took 10-30 ms with two BLAS threads on a busy 2-core
    machine and 1.5-6 ms with one. `saescope serve` and bench/serve.py call this.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def run_ids(paths: Sequence[str | Path]) -> list[str]:
    """A short, URL-safe id per run: its folder name, made unique with -2, -3..."""
    out: list[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(p).resolve().name).strip(".-") or "run"
        rid, i = base, 2
        while rid in out:
            rid, i = f"{base}-{i}", i + 1
        out.append(rid)
    return out


def open_runs(paths: Sequence[str | Path], limits: Limits, device: str = "cpu") -> Served:
    import time

    t0 = time.perf_counter()
    if not paths:
        raise SaescopeError("give at least one --run to serve")
    runs = {
        rid: ServedRun(rid, p, limits, device) for rid, p in zip(run_ids(paths), paths, strict=True)
    }
    return Served(runs, Catalog(runs), limits, time.perf_counter() - t0)


class BodyLimit:
    """Refuse request bodies over `max_bytes` (413) before the app reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:  # bodies are small: read it all, then hand it on
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        text = json.dumps({"detail": f"the request body is larger than {self.max_bytes} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": text.encode()})


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "malformed request"


def create_app(
    runs: Sequence[str | Path], limits: Limits | None = None, device: str = "cpu"
) -> FastAPI:
    """The dashboard over `runs` (see the module docstring)."""
    from saescope.serve import api, pages

    limits = limits or Limits()
    served = open_runs(runs, limits, device)
    app = FastAPI(
        title="saescope dashboard",
        version=__version__,
        description="Read-only JSON API over saescope runs: features, examples, names, "
        "scores, families, the text inspector, search and generation steering, SAE "
        "comparison. The pages of the dashboard use it; scripts can too.",
        docs_url=None,
        redoc_url=None,
        default_response_class=SafeJSON,
    )
    app.state.served = served

    def answer(status: int, message: str) -> SafeJSON:
        return SafeJSON({"detail": message}, status_code=status)

    @app.exception_handler(SaescopeError)
    async def user_error(request: Request, exc: SaescopeError) -> SafeJSON:
        if isinstance(exc, NotFound):
            return answer(404, str(exc))
        if isinstance(exc, Busy):
            return answer(503, str(exc))
        return answer(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> SafeJSON:
        return answer(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> SafeJSON:
        return answer(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> SafeJSON:
        # Starlette re-raises it after this answer: uvicorn logs the traceback on the server
        return answer(500, f"internal error ({type(exc).__name__}); see the server's log")

    app.include_router(api.router)
    app.include_router(pages.router)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    return app
