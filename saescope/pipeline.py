"""The pipeline glue: chains stages on one run directory (with the CLI, the only place that does).

`saescope demo` runs the whole chain on the embedded defaults and prints each
stage's wall time. Re-running it skips the stages that are already done.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

# Stages are imported inside the steps: `saescope demo --help` must not load torch.


def demo_steps(run: str, limit: int) -> list[tuple[str, Callable[[], Path]]]:
    """(name, thunk) for every stage of the demo, in order."""
    return [
        ("corpus", lambda: _corpus(run, limit)),
        ("embed", lambda: _embed(run)),
        ("train", lambda: _train(run)),
        ("eval", lambda: _eval(run)),
        ("latents", lambda: _latents(run)),
        ("keywords", lambda: _keywords(run)),
        ("score", lambda: _score(run)),
        ("report", lambda: _report(run)),
    ]


def _corpus(run: str, limit: int) -> Path:
    from saescope import corpus

    return corpus.run(corpus.CorpusConfig(run=run, source="news", shuffle=True, limit=limit))


def _embed(run: str) -> Path:
    from saescope import embed

    return embed.run(embed.EmbedConfig(run=run))


def _train(run: str) -> Path:
    from saescope import train

    # TopK, 3072 latents, k 32 on the whole store: 10 short epochs, well under a minute on 2 cores
    return train.run(
        train.TrainConfig(run=run, d_sae=[3072], k=[32], batch_size=1024, epochs=10.0, lr=2e-3)
    )


def _eval(run: str) -> Path:
    from saescope import evaluate

    return evaluate.run(evaluate.EvalConfig(run=run))


def _latents(run: str) -> Path:
    from saescope import latents

    return latents.run(latents.LatentsConfig(run=run))


def _keywords(run: str) -> Path:
    from saescope.interp.keywords import KeywordsConfig
    from saescope.interp.keywords import run as keywords

    return keywords(KeywordsConfig(run=run))


def _score(run: str) -> Path:
    from saescope.scoring.stage import ScoreConfig
    from saescope.scoring.stage import run as score

    return score(ScoreConfig(run=run, scorer="embedding"))


def _report(run: str) -> Path:
    from saescope import report

    return report.run(report.ReportConfig(run=run))


def run_steps(steps: list[tuple[str, Callable[[], Path]]]) -> dict[str, float]:
    times: dict[str, float] = {}
    for name, thunk in steps:
        t0 = time.perf_counter()
        out = thunk()
        times[name] = time.perf_counter() - t0
        print(f"[{name}] {times[name]:7.1f}s  -> {out}", flush=True)
    print(f"[total] {sum(times.values()):7.1f}s", flush=True)
    return times


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default="runs/demo", help="run directory (default: runs/demo)")
    parser.add_argument(
        "--limit", type=int, default=20000, help="texts taken from the news corpus (default: 20000)"
    )


def main(ns: argparse.Namespace) -> int:
    run_steps(demo_steps(ns.run, ns.limit))
    from saescope.paths import RunPaths

    index = RunPaths(ns.run).report_index
    if index.exists():
        print(f"report: {index.resolve()}  (open it in a browser; it needs no network)")
    return 0
