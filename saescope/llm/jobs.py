"""Per-feature LLM work, asynchronous and resumable: each result is on disk as it finishes.

In: the features to do, an async `work(feature) -> dict` (JSON-serialisable, with
"feature" and "status"), a JSONL results file and a concurrency. Out: every
feature's result (those of earlier runs included), one JSON line per finished
feature appended and flushed as it finishes, so a kill loses at most the features
in flight.

Resuming: a feature whose last line has a FINAL status is never requested again;
features left "error" (the server failed: timeouts, connection errors, 5xx, 429
after every retry) or "budget" (the request or token budget ran out) are done
again on the next run. A line cut short by a kill is ignored.
"""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from saescope.errors import SaescopeWarning

FINAL = ("ok", "failed", "too_few_examples", "no_name")  # done; never requested again
RETRY = ("error", "budget")  # not done: the next run does them again
TRANSIENT = ("timeout", "connection", "rate_limit", "server")  # LLMError kinds that mean "error"


def sample_features(ids: Iterable[int], n: int | None, seed: int, what: str) -> list[int]:
    """A seeded sample of `n` of `ids` (sorted), or all of them when `n` is None. An `n`
    above what there is takes them all and says so (`what`: "alive features", say)."""
    pool = sorted(int(f) for f in ids)
    if n is None:
        return pool
    if n > len(pool):
        warnings.warn(
            f"--n-features {n}: there are only {len(pool)} {what}; taking all of them",
            SaescopeWarning,
            stacklevel=2,
        )
        return pool
    rng = np.random.default_rng(seed)
    return sorted(int(f) for f in rng.choice(pool, size=n, replace=False))


def failure_reasons(results: dict[int, dict[str, Any]], shown: int = 2) -> str:
    """ "; most often: connection: cannot reach ... (3 features)": the commonest reasons of
    the features that failed or were left for another run, for the summary line ('' when
    none did)."""
    from collections import Counter

    why = Counter(
        str(r.get("reason") or "no reason given")
        for r in results.values()
        if r.get("status") in ("failed", "error", "budget")
    )
    if not why:
        return ""
    top = [f"{reason} ({n} feature{'s' if n > 1 else ''})" for reason, n in why.most_common(shown)]
    return "; most often: " + "; ".join(top)


class ResultsFile:
    """A JSONL file of per-feature results, appended to as features finish."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[int, dict[str, Any]]:
        """feature -> its last result line (lines a kill cut short are skipped)."""
        out: dict[int, dict[str, Any]] = {}
        if not self.path.exists():
            return out
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "feature" in rec:
                    out[int(rec["feature"])] = rec
        return out

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)

    def append(self, result: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(result, ensure_ascii=False, default=_plain) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            if fh.tell() > 0 and not _ends_with_newline(self.path):
                fh.write("\n")  # a line a kill cut short: start afresh on the next line
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _plain(x: Any) -> Any:
    """numpy scalars and arrays as plain JSON values."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


async def run_features(
    features: Iterable[int],
    work: Callable[[int], Awaitable[dict[str, Any]]],
    results: ResultsFile,
    concurrency: int,
    desc: str,
    progress: bool = True,
    tokens: Callable[[], int] | None = None,
) -> dict[int, dict[str, Any]]:
    """Run `work` on every feature not already finished; all results, old and new.

    At most `concurrency` features are in work at once (their requests are bounded
    again by the client). `tokens()`: the tokens spent so far, shown on the bar.
    """
    features = list(features)
    previous = results.load()
    done = {f: r for f, r in previous.items() if r.get("status") in FINAL}
    todo = [f for f in features if f not in done]
    sem = asyncio.Semaphore(max(1, concurrency))
    bar = tqdm(
        total=len(features),
        initial=len(features) - len(todo),
        desc=desc,
        unit="feature",
        disable=not progress,
    )

    async def one(f: int) -> None:
        async with sem:
            r = await work(f)
        results.append(r)
        done[f] = r
        bar.update(1)
        if tokens is not None:
            bar.set_postfix(tokens=tokens(), refresh=False)

    try:
        await asyncio.gather(*(one(f) for f in todo))
    finally:
        bar.close()
    return {f: done.get(f, previous.get(f, {})) for f in features}


def run(coro: Awaitable[Any]) -> Any:
    """Run a coroutine from synchronous stage code."""
    return asyncio.run(coro)  # type: ignore[arg-type]
