"""Options of `saescope inspect` (saescope/inspect.py)."""

from __future__ import annotations

import argparse

from saescope.paths import DEFAULT_RUN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("feature", nargs="?", type=int, help="feature id to show")
    parser.add_argument(
        "--run", default=DEFAULT_RUN, help=f"run directory (default: {DEFAULT_RUN})"
    )
    parser.add_argument(
        "--text",
        help="embed this text and list the features it activates (token runs: run the LM on "
        "it and print each token's activations of the strongest features)",
    )
    parser.add_argument(
        "-n", "--n", type=int, default=10, help="examples or features to list (default: 10)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--width",
        type=int,
        default=0,
        help="line width, at least 60 (default 0: the terminal's, at least 60)",
    )
