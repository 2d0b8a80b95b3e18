"""`saescope serve`: a dashboard over one or more runs, in the browser.

    saescope serve --run runs/demo                      http://127.0.0.1:8000/
    saescope serve --run runs/demo --run runs/demo-lm   two runs (and compare their SAEs)
    saescope serve --run runs/demo --port 0             any free port (the URL is printed)

Pages: a feature browser (search by id, keyword, explanation or example text; sort by
density, max activation or score; filter dead features, a score range, a family), a
page per feature (statistics, activation histogram, top and quantile examples with the
active span, names and scores with their shuffled control, logit-lens tokens of LM
runs, families and splits, nearest features by decoder cosine), a text inspector,
search steering (sentence runs with `saescope index`), generation steering (LM runs),
and a comparison of two SAEs. The JSON API the pages use is documented at /api
(/openapi.json). Nothing is loaded from the network; the runs are only read.

In: run directories with a finished latent cache (`saescope latents`); names, scores,
families and a search index are shown when those stages have run. It listens on
127.0.0.1 (this machine only) unless --host says otherwise, with a warning.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import time
from pathlib import Path

from saescope.errors import SaescopeError, describe
from saescope.paths import DEFAULT_RUN

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a one-line error."""
    try:
        family, kind, proto, _, _ = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto must say TCP: asyncio sets TCP_NODELAY only on sockets that do, and without
        # it every answer waited ~40 ms for a delayed ACK (Nagle's algorithm)
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        raise SaescopeError(
            f"cannot listen on {host}:{port} ({describe(exc)}); choose another --port "
            "(0 picks a free one)"
        ) from exc
    return sock


def _since_start() -> float:
    """Seconds since this process started (Linux: from /proc, to the clock tick)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time, in ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        import psutil

        return time.time() - psutil.Process().create_time()


def main(ns: argparse.Namespace) -> int:
    if not 0 <= ns.port <= 65535:
        raise SaescopeError(f"--port must be 0..65535, got {ns.port}")
    if ns.max_new_tokens < 1 or not ns.generation_seconds > 0:
        raise SaescopeError("--max-new-tokens must be >= 1 and --generation-seconds > 0")
    runs = ns.run or [DEFAULT_RUN]
    if not is_loopback(ns.host):
        print(
            f"saescope serve: warning: listening on {ns.host}, not this machine only: anyone "
            "who can reach it can read these runs' texts and features and run their models. "
            "Use the default --host 127.0.0.1 unless you mean to share them.",
            file=sys.stderr,
            flush=True,
        )
    import uvicorn

    from saescope.serve.app import create_app, one_blas_thread
    from saescope.serve.limits import Limits

    one_blas_thread()

    sock = listen(ns.host, ns.port)  # before loading: a port in use fails at once
    limits = Limits(max_new_tokens=ns.max_new_tokens, generation_seconds=ns.generation_seconds)
    app = create_app(runs, limits, ns.device)
    served = app.state.served
    port = sock.getsockname()[1]
    shown = f"[{ns.host}]" if ":" in ns.host else ns.host
    url = f"http://{shown}:{port}/"
    for r in served.runs.values():
        s = r.summary()
        gone = [k for k, why in s["missing"].items() if why]
        note = f" (no {', no '.join(gone)})" if gone else ""
        print(f"saescope serve: run {r.id}: {r.path} ({s['d_sae']} features, {s['kind']}){note}")
    print(
        f"saescope serve: ready in {_since_start():.2f}s (tables {served.seconds:.2f}s); "
        f"open {url}   API: {url}api   Ctrl-C stops",
        flush=True,
    )
    config = uvicorn.Config(
        app, log_level="warning" if ns.quiet else "info", access_log=not ns.quiet, lifespan="off"
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
