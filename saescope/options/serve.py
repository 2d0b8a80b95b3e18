"""Options of `saescope serve` (saescope/serve/cli.py). Light: imports nothing heavy, for `--help`."""

from __future__ import annotations

import argparse

from saescope.paths import DEFAULT_RUN

LOOPBACK = "127.0.0.1"
DEFAULT_MAX_NEW_TOKENS = 64  # the most tokens one generation request may ask for
DEFAULT_GENERATION_SECONDS = 20.0  # wall time one generation request may take


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        action="append",
        default=None,
        help=f"run directory to serve; repeat for several runs (default: {DEFAULT_RUN})",
    )
    parser.add_argument(
        "--host",
        default=LOOPBACK,
        help=f"address to listen on (default: {LOOPBACK}, this machine only; any other "
        "address lets other machines read the runs, and a warning is printed)",
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port (default: 8000; 0: any free port)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="generation steering: the most tokens one request may generate "
        f"(default: {DEFAULT_MAX_NEW_TOKENS})",
    )
    parser.add_argument(
        "--generation-seconds",
        type=float,
        default=DEFAULT_GENERATION_SECONDS,
        help="generation steering: wall time allowed per generation; it stops early and "
        f"says so (default: {DEFAULT_GENERATION_SECONDS:g})",
    )
    parser.add_argument(
        "--device", default="cpu", help="device of the models loaded on demand (default: cpu)"
    )
    parser.add_argument("--quiet", action="store_true", help="do not log every request on stderr")
