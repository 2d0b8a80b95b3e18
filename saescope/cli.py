"""The `saescope` command line: a thin layer over the stages' `run(config)`.

Each stage command takes its config's fields as flags (or `--config FILE`),
runs the stage and prints the path it wrote. User mistakes (`SaescopeError`)
print as one line on stderr with exit status 2; `--debug` (or SAESCOPE_DEBUG=1)
prints the traceback instead, with the exception that caused the error.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from saescope._version import __version__
from saescope.config import add_config_args, config_from_args
from saescope.errors import SaescopeError, SaescopeWarning

DEBUG_HELP = "on an error, print the traceback and its cause (also: SAESCOPE_DEBUG=1)"


class Stage(NamedTuple):
    module: str  # has `run(config) -> Path`; imported only to run the stage
    options: str  # holds the config class and imports nothing heavy (for --help)
    config: str  # the config class, whose fields are the flags
    summary: str


class Custom(NamedTuple):
    module: str  # has `main(args) -> int`; imported only to run the command
    options: str  # has `add_arguments(parser)` and imports nothing heavy
    summary: str


STAGES: dict[str, Stage] = {
    "corpus": Stage(
        "saescope.corpus",
        "saescope.options.corpus",
        "CorpusConfig",
        "build corpus.parquet from a built-in corpus, a file or a HF dataset",
    ),
    "embed": Stage(
        "saescope.embed",
        "saescope.options.embed",
        "EmbedConfig",
        "embed the corpus into an activation store (or import vectors)",
    ),
    "acts": Stage(
        "saescope.lm.acts",
        "saescope.options.acts",
        "ActsConfig",
        "token activations of a causal LM at one hookpoint, into the activation store",
    ),
    "train": Stage(
        "saescope.train.stage",
        "saescope.train.config",
        "TrainConfig",
        "train sparse autoencoders on the activation store",
    ),
    "eval": Stage(
        "saescope.evaluate",
        "saescope.options.evaluate",
        "EvalConfig",
        "held-out metrics of a trained SAE",
    ),
    "latents": Stage(
        "saescope.latents",
        "saescope.options.latents",
        "LatentsConfig",
        "cache sparse latents, per-feature statistics and examples",
    ),
    "keywords": Stage(
        "saescope.interp.keywords",
        "saescope.options.keywords",
        "KeywordsConfig",
        "name every feature with keywords (no LLM)",
    ),
    "explain": Stage(
        "saescope.explain.stage",
        "saescope.options.explain",
        "ExplainConfig",
        "explain features with an LLM (a local model or any OpenAI-compatible server)",
    ),
    "score": Stage(
        "saescope.scoring.stage",
        "saescope.options.score",
        "ScoreConfig",
        "score names (keywords or LLM explanations) on held-out examples, with a shuffled control",
    ),
    "steer": Stage(
        "saescope.steer.stage",
        "saescope.options.steer",
        "SteerConfig",
        "steer an LM's generations with SAE features; measure concept, fluency, output score",
    ),
    "families": Stage(
        "saescope.families.stage",
        "saescope.options.families",
        "FamiliesConfig",
        "group features into families by co-occurrence; match features across SAE widths",
    ),
    "report": Stage(
        "saescope.report",
        "saescope.options.report",
        "ReportConfig",
        "write a static HTML report of the run (opens offline)",
    ),
    "convert": Stage(
        "saescope.convert",
        "saescope.options.convert",
        "ConvertConfig",
        "convert an SAE file between formats",
    ),
    "index": Stage(
        "saescope.search.stage",
        "saescope.options.search",
        "IndexConfig",
        "build the search index over the store (exact, or approximate with faiss)",
    ),
    "search-eval": Stage(
        "saescope.search.evaluate",
        "saescope.options.search",
        "SearchEvalConfig",
        "measure search edits (success against query drift) and recommend a strength",
    ),
}

CUSTOM: dict[str, Custom] = {
    "demo": Custom(
        "saescope.pipeline", "saescope.pipeline", "run the whole pipeline on the embedded defaults"
    ),
    "inspect": Custom(
        "saescope.inspect",
        "saescope.options.inspect",
        "show a feature's statistics and top texts, or a text's features",
    ),
    "compare": Custom(
        "saescope.compare",
        "saescope.options.compare",
        "match two SAEs' features: shared features, MMCS, activation correlation",
    ),
    "status": Custom(
        "saescope.status",
        "saescope.options.status",
        "which stage outputs of a run are current, out of date or unfinished",
    ),
    "search": Custom(
        "saescope.search.cli",
        "saescope.options.search",
        "semantic search steered by SAE features: results before and after the edits",
    ),
    "serve": Custom(
        "saescope.serve.cli",
        "saescope.options.serve",
        "a dashboard in the browser: browse features, inspect texts, steer search and generation",
    ),
}


def _docstring(module: str) -> str | None:
    """A module's docstring read from its source, so that --help does not import the stage."""
    base = Path(__file__).parent.joinpath(*module.split(".")[1:])
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    try:
        return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, ValueError):  # no source shipped: the summary will do
        return None


def _stage_handler(stage: Stage) -> Callable[[argparse.Namespace], int]:
    def handle(ns: argparse.Namespace) -> int:
        cls = getattr(importlib.import_module(stage.options), stage.config)
        cfg = config_from_args(cls, ns)
        out = importlib.import_module(stage.module).run(cfg)
        print(out)
        return 0

    return handle


def _custom_handler(command: Custom) -> Callable[[argparse.Namespace], int]:
    def handle(ns: argparse.Namespace) -> int:
        return int(importlib.import_module(command.module).main(ns) or 0)

    return handle


def build_parser() -> argparse.ArgumentParser:
    """The whole parser, every command and option, without importing any stage or heavy library."""
    parser = argparse.ArgumentParser(
        prog="saescope",
        description="Sparse autoencoders on sentence embeddings and LM activations: "
        "train them, find what features fire on, name and score features, and use them.",
    )
    parser.add_argument("--version", action="version", version=f"saescope {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, module: str, summary: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=summary,
            description=(_docstring(module) or summary).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # also after the command (`saescope embed --debug`); unset unless given there
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        return p

    for name, stage in STAGES.items():
        p = add(name, stage.module, stage.summary)
        add_config_args(p, getattr(importlib.import_module(stage.options), stage.config))
        p.set_defaults(handler=_stage_handler(stage))
    for name, command in CUSTOM.items():
        p = add(name, command.module, command.summary)
        importlib.import_module(command.options).add_arguments(p)
        p.set_defaults(handler=_custom_handler(command))
    return parser


def _debug(ns: argparse.Namespace) -> bool:
    """--debug given, or SAESCOPE_DEBUG set to anything but empty or 0."""
    env = os.environ.get("SAESCOPE_DEBUG", "")
    return bool(getattr(ns, "debug", False)) or env not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns: Any = parser.parse_args(argv)
    if not getattr(ns, "handler", None):
        parser.print_help()
        return 1
    showwarning = warnings.showwarning

    def one_line(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, SaescopeWarning):
            print(f"saescope {ns.command}: warning: {message}", file=sys.stderr)
        else:
            showwarning(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line
    try:
        return int(ns.handler(ns) or 0)
    except SaescopeError as exc:
        if _debug(ns):
            traceback.print_exception(exc)  # with the chained __cause__
        else:
            hint = " (--debug shows the traceback)" if exc.__cause__ is not None else ""
            print(f"saescope {ns.command}: error: {exc}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"saescope {ns.command}: interrupted; re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # `saescope inspect ... | head`: the reader has what it wanted
        # Python would report the pipe again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        warnings.showwarning = showwarning


if __name__ == "__main__":
    raise SystemExit(main())
