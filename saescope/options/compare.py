"""Options of `saescope compare` (saescope/compare/)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="SAE A: a folder, file or hf: name (with --run: a folder of it)")
    parser.add_argument("b", help="SAE B, the same way")
    parser.add_argument(
        "--run",
        help="a run whose store both SAEs read: folder names are its SAE folders (sae, "
        "sae-4096-k16), and a sample of its rows gives activation correlations, which "
        "features fire, and (for the latent cache's SAE) feature names (default: unset)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.7,
        help="a pair is shared when its decoder and encoder cosines both reach this (default: 0.7)",
    )
    parser.add_argument(
        "--rows", type=int, default=4096, help="store rows both SAEs encode (default: 4096)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the rows drawn (default: 0)")
    parser.add_argument(
        "-n", "--n", type=int, default=5, help="pairs and unmatched features listed (default: 5)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
