"""The dashboard's pages, its static assets and the files of its runs.

Every page is the same small HTML shell naming one script under static/; the script
reads the API and builds the page with `textContent` only, so no text from a corpus,
a name or a request is ever parsed as markup. The shell carries nothing from the
request, and a Content-Security-Policy allows scripts, styles and images from this
server alone (no inline script, no CDN): the pages work offline.

    /                                runs             /runs/{run}/inspect    text inspector
    /runs/{run}                      feature browser  /runs/{run}/search     search steering
    /runs/{run}/features/{f}         feature page     /runs/{run}/generate   generation steering
    /compare                         compare SAEs     /api                   the API, from /openapi.json
    /runs/{run}/files/{path}         a file of the run (plots, the static report): only
                                     inside the run, no hidden files, a few file types
"""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from saescope.report.assets import CSS as REPORT_CSS
from saescope.serve.app import Served
from saescope.serve.errors import NotFound

router = APIRouter(include_in_schema=False)

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
# the run files a page may link to; anything else of a run is not served
FILE_TYPES = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".html": "text/html",
}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}

SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>saescope: __TITLE__</title>
<link rel="stylesheet" href="/static/style.css">
</head>
<body data-page="__PAGE__">
<header><h1><a href="/">saescope</a></h1><nav id="nav"></nav></header>
<main id="app"><div class="empty">Loading…</div></main>
<script src="/static/common.js"></script>
<script src="/static/__PAGE__.js"></script>
</body>
</html>
"""

PAGES = {
    "home": "runs",
    "browser": "features",
    "feature": "feature",
    "inspect": "text inspector",
    "search": "search steering",
    "generate": "generation steering",
    "compare": "compare SAEs",
    "apidoc": "API",
}


def _static(name: str) -> str:
    folder = resources.files("saescope.serve").joinpath("static")
    return folder.joinpath(name).read_text(encoding="utf-8")


def _page(page: str) -> HTMLResponse:
    text = SHELL.replace("__TITLE__", html.escape(PAGES[page])).replace("__PAGE__", page)
    return HTMLResponse(text, headers=HEADERS)


def _served(request: Request) -> Served:
    return request.app.state.served  # type: ignore[no-any-return]


@router.get("/")
def home() -> HTMLResponse:
    return _page("home")


@router.get("/api")
def api_page() -> HTMLResponse:
    return _page("apidoc")


@router.get("/compare")
def compare_page() -> HTMLResponse:
    return _page("compare")


@router.get("/runs/{run}")
def browser_page(request: Request, run: str) -> HTMLResponse:
    _served(request).run(run)  # 404 for a run that is not served
    return _page("browser")


@router.get("/runs/{run}/features/{feature}")
def feature_page(request: Request, run: str, feature: str) -> HTMLResponse:
    _served(request).run(run)
    return _page("feature")  # the page asks the API, which answers a bad id with 4xx


@router.get("/runs/{run}/{page}")
def run_page(request: Request, run: str, page: str) -> HTMLResponse:
    _served(request).run(run)
    if page not in ("inspect", "search", "generate"):
        raise NotFound(f"no page {page!r}; the pages of a run are inspect, search, generate")
    return _page(page)


@router.get("/static/style.css")
def style() -> Response:
    # the static report's styles, and the dashboard's own on top
    return Response(REPORT_CSS + "\n" + _static("serve.css"), media_type="text/css")


@router.get("/static/{name}")
def static(name: str) -> Response:
    suffix = PurePosixPath(name).suffix
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        raise NotFound(f"no static file {name!r}")
    try:
        text = _static(name)
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        raise NotFound(f"no static file {name!r}") from None
    return Response(
        text, media_type=STATIC_TYPES[suffix], headers={"X-Content-Type-Options": "nosniff"}
    )


def run_file(root: Path, relative: str) -> Path:
    """The file `relative` names inside the run `root`, or NotFound.

    Refused: absolute paths, backslashes, NUL, any `..` or hidden (dot) component, a
    type not in FILE_TYPES, and a path that leaves the run once links are resolved.
    """
    bad = NotFound(f"no such file in this run: {relative!r}")
    if not relative or "\x00" in relative or "\\" in relative or relative.startswith("/"):
        raise bad
    parts = PurePosixPath(relative).parts
    if any(p in ("", ".", "..") or p.startswith(".") or ":" in p for p in parts):
        raise bad
    if PurePosixPath(relative).suffix.lower() not in FILE_TYPES:
        raise bad
    base = root.resolve()
    target = (base / Path(*parts)).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        raise bad
    return target


@router.get("/runs/{run}/files/{path:path}")
def files(request: Request, run: str, path: str) -> FileResponse:
    r = _served(request).run(run)
    target = run_file(r.paths.root, path)
    return FileResponse(
        target,
        media_type=FILE_TYPES[target.suffix.lower()],
        headers={"X-Content-Type-Options": "nosniff"},
    )
