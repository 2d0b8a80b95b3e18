"""Options of `saescope status` (saescope/status.py)."""

from __future__ import annotations

import argparse

from saescope.paths import DEFAULT_RUN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", default=DEFAULT_RUN, help=f"run directory (default: {DEFAULT_RUN})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when an output is out of date, unfinished or missing",
    )
