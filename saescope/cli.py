"""The `saescope` command line: a thin layer over the stages' `run(config)`.

Each stage command takes its config's fields as flags (or `--config FILE`),
runs the stage and prints the path it wrote. User mistakes (`SaescopeError`)
print as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from saescope._version import __version__
from saescope.config import add_config_args, config_from_args
from saescope.errors import SaescopeError

# command -> (module, config class, one-line summary). Each module has `run(config) -> Path`.
STAGES: dict[str, tuple[str, str, str]] = {
    "corpus": (
        "saescope.corpus",
        "CorpusConfig",
        "build corpus.parquet from a built-in corpus, a file or a HF dataset",
    ),
    "embed": (
        "saescope.embed",
        "EmbedConfig",
        "embed the corpus into an activation store (or import vectors)",
    ),
    "train": ("saescope.train", "TrainConfig", "train sparse autoencoders on the activation store"),
    "eval": ("saescope.evaluate", "EvalConfig", "held-out metrics of a trained SAE"),
    "latents": (
        "saescope.latents",
        "LatentsConfig",
        "cache sparse latents, per-feature statistics and examples",
    ),
    "keywords": (
        "saescope.interp.keywords",
        "KeywordsConfig",
        "name every feature with keywords (no LLM)",
    ),
    "score": (
        "saescope.scoring.stage",
        "ScoreConfig",
        "score keyword names on held-out texts, with a shuffled control",
    ),
    "report": (
        "saescope.report",
        "ReportConfig",
        "write a static HTML report of the run (opens offline)",
    ),
    "convert": ("saescope.convert", "ConvertConfig", "convert an SAE file between formats"),
}

# commands with their own argument handling: name -> (module, summary); the module
# has `add_arguments(parser)` and `main(args) -> int`.
CUSTOM: dict[str, tuple[str, str]] = {
    "demo": ("saescope.pipeline", "run the whole pipeline on the embedded defaults"),
    "inspect": (
        "saescope.inspect",
        "show a feature's statistics and top texts, or a text's features",
    ),
}


def _stage_handler(module: str, cls_name: str) -> Callable[[argparse.Namespace], int]:
    def handle(ns: argparse.Namespace) -> int:
        mod = importlib.import_module(module)
        cfg = config_from_args(getattr(mod, cls_name), ns)
        out = mod.run(cfg)
        print(out)
        return 0

    return handle


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saescope",
        description="Sparse autoencoders on sentence embeddings and LM activations: "
        "train them, find what features fire on, name and score features, and use them.",
    )
    parser.add_argument("--version", action="version", version=f"saescope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, cls_name, summary) in STAGES.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(
            name,
            help=summary,
            description=(mod.__doc__ or summary).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_config_args(p, getattr(mod, cls_name))
        p.set_defaults(handler=_stage_handler(module, cls_name))
    for name, (module, summary) in CUSTOM.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(
            name,
            help=summary,
            description=(mod.__doc__ or summary).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(handler=mod.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns: Any = parser.parse_args(argv)
    if not getattr(ns, "handler", None):
        parser.print_help()
        return 1
    try:
        return int(ns.handler(ns) or 0)
    except SaescopeError as exc:
        print(f"saescope {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"saescope {ns.command}: interrupted; re-run the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
