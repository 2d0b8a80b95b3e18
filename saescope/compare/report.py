"""`compare()`: the figures of two SAEs' matching, and the command's table and JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saescope.errors import SaescopeError
from saescope.paths import RunPaths

BINS = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)  # edges of the max-cosine histogram


@dataclass(frozen=True)
class Side:
    """One SAE of the comparison."""

    name: str
    d_sae: int
    architecture: str
    k: int | None
    mmcs: float  # mean over its features of the max decoder cosine to the other SAE
    shared: float  # fraction of its features in a shared pair
    alive: int | None = None  # features firing on the sampled rows (with a run)
    named: bool = False  # its features carry the run's names


@dataclass(frozen=True)
class Pair:
    a: int
    b: int
    decoder_cos: float
    encoder_cos: float
    correlation: float | None = None  # of their activations on the sampled rows
    a_name: str = ""
    b_name: str = ""


@dataclass(frozen=True)
class Unmatched:
    feature: int
    max_cos: float  # to its nearest feature of the other SAE
    nearest: int
    name: str = ""


@dataclass(frozen=True)
class CompareResult:
    a: Side
    b: Side
    matching: str  # "hungarian" or "mutual nearest"
    threshold: float
    pairs: int  # one-to-one pairs
    shared: int  # pairs with decoder and encoder cosine >= threshold
    # per bin of BINS: [low, high, features of A, features of B] by max decoder cosine
    histogram: list[list[float]]
    rows: int | None = None  # store rows both SAEs encoded (with a run)
    mean_correlation: float | None = None  # over shared pairs firing on those rows
    top_shared: list[Pair] = field(default_factory=list)
    only_a: list[Unmatched] = field(default_factory=list)  # A's live features least matched
    only_b: list[Unmatched] = field(default_factory=list)


def _load(name: str, run: str | None):
    """An SAE by name: a folder of the run (with --run), else any path load_sae reads."""
    from saescope.sae import detect_format, load_sae

    path = RunPaths(run).sae_folder(name) if run else Path(name)
    where = detect_format(path)
    return load_sae(where.path), where


def _names(run: str | None, weights: Path):
    """The run's feature names when its latent cache was encoded with these weights."""
    if not run or not RunPaths(run).latents_manifest.exists():
        return None
    from saescope.io import sha256_file
    from saescope.latents import LatentCache
    from saescope.report.data import load_annotations
    from saescope.search.select import FeatureNames

    try:
        if LatentCache(run).sae_sha256 != sha256_file(weights):
            return None
        names = FeatureNames(load_annotations(run))
    except SaescopeError:
        return None
    return names if names else None


def _fraction(mask: np.ndarray, of: np.ndarray) -> float:
    return float(mask[of].mean()) if of.any() else 0.0


def compare(
    a: str,
    b: str,
    run: str | None = None,
    threshold: float = 0.7,
    rows: int = 4096,
    seed: int = 0,
    n: int = 5,
) -> CompareResult:
    """Match SAE `a` with SAE `b` (see the package docstring)."""
    from saescope.compare.activations import sample
    from saescope.compare.match import directions, match

    if not 0.0 < threshold <= 1.0:
        raise SaescopeError(f"--threshold must be in (0, 1], got {threshold}")
    if rows < 2 or n < 0:
        raise SaescopeError(f"--rows must be >= 2 and -n >= 0, got {rows} and {n}")
    sae_a, where_a = _load(a, run)
    sae_b, where_b = _load(b, run)
    if sae_a.cfg.d_in != sae_b.cfg.d_in:
        raise SaescopeError(
            f"{a} reads d_in={sae_a.cfg.d_in} and {b} d_in={sae_b.cfg.d_in}: SAEs of "
            "different spaces have no directions in common"
        )
    m = match(directions(sae_a), directions(sae_b))
    shared = (m.decoder_cos >= threshold) & (m.encoder_cos >= threshold)
    alive_a = np.ones(sae_a.cfg.d_sae, bool)
    alive_b = np.ones(sae_b.cfg.d_sae, bool)
    corr = np.full(len(m.pairs_a), np.nan, np.float32)
    n_rows = None
    if run:
        from saescope.sae.fit import check_fits_store
        from saescope.store import ActivationStore

        store = ActivationStore(RunPaths(run).acts)
        for sae, name in ((sae_a, a), (sae_b, b)):
            check_fits_store(sae, store.meta, store.d_in, name)
        s = sample(sae_a, sae_b, store, m.pairs_a, m.pairs_b, rows, seed)
        alive_a, alive_b, corr, n_rows = s.a_alive, s.b_alive, s.correlation, s.rows
    in_shared_a = np.zeros(sae_a.cfg.d_sae, bool)
    in_shared_a[m.pairs_a[shared]] = True
    in_shared_b = np.zeros(sae_b.cfg.d_sae, bool)
    in_shared_b[m.pairs_b[shared]] = True
    names_a, names_b = _names(run, where_a.weights), _names(run, where_b.weights)

    def label(names, f: int) -> str:
        return names.label(int(f)) if names else ""

    def side(name: str, sae, best_cos, in_shared, alive, names) -> Side:
        return Side(
            name,
            sae.cfg.d_sae,
            sae.cfg.architecture,
            sae.cfg.k,
            float(best_cos[alive].mean()) if alive.any() else 0.0,
            _fraction(in_shared, alive),
            int(alive.sum()) if run else None,
            names is not None,
        )

    def only(best, best_cos, alive, names) -> list[Unmatched]:
        live = np.flatnonzero(alive)
        worst = live[np.argsort(best_cos[live], kind="stable")[:n]]
        return [Unmatched(int(f), float(best_cos[f]), int(best[f]), label(names, f)) for f in worst]

    fired = shared & np.isfinite(corr)
    top = np.flatnonzero(shared)
    top = top[np.argsort(-m.decoder_cos[top], kind="stable")[:n]]
    histogram = []
    # the lowest bin takes anti-aligned features too, the highest rounding above 1
    bin_a = np.clip(np.searchsorted(BINS, m.a_best_cos, side="right") - 1, 0, len(BINS) - 2)
    bin_b = np.clip(np.searchsorted(BINS, m.b_best_cos, side="right") - 1, 0, len(BINS) - 2)
    count_a = np.bincount(bin_a[alive_a], minlength=len(BINS) - 1)
    count_b = np.bincount(bin_b[alive_b], minlength=len(BINS) - 1)
    for i, (low, high) in enumerate(zip(BINS[:-1], BINS[1:], strict=True)):
        histogram.append([low, high, int(count_a[i]), int(count_b[i])])
    return CompareResult(
        a=side(a, sae_a, m.a_best_cos, in_shared_a, alive_a, names_a),
        b=side(b, sae_b, m.b_best_cos, in_shared_b, alive_b, names_b),
        matching=m.method,
        threshold=threshold,
        pairs=len(m.pairs_a),
        shared=int(shared.sum()),
        histogram=histogram,
        rows=n_rows,
        mean_correlation=float(corr[fired].mean()) if fired.any() else None,
        top_shared=[
            Pair(
                int(m.pairs_a[i]),
                int(m.pairs_b[i]),
                float(m.decoder_cos[i]),
                float(m.encoder_cos[i]),
                None if math.isnan(corr[i]) else float(corr[i]),
                label(names_a, m.pairs_a[i]),
                label(names_b, m.pairs_b[i]),
            )
            for i in top
        ],
        only_a=only(m.a_best, m.a_best_cos, alive_a, names_a),
        only_b=only(m.b_best, m.b_best_cos, alive_b, names_b),
    )


def format_result(r: CompareResult) -> str:
    def shown(name: str) -> str:
        return f" [{name}]" if name else ""

    live = " live" if r.rows is not None else ""
    lines = [
        f"A {r.a.name}: {r.a.architecture}, d_sae {r.a.d_sae}"
        + (f", k {r.a.k}" if r.a.k else "")
        + (f", {r.a.alive} firing on {r.rows:,} rows" if r.rows is not None else ""),
        f"B {r.b.name}: {r.b.architecture}, d_sae {r.b.d_sae}"
        + (f", k {r.b.k}" if r.b.k else "")
        + (f", {r.b.alive} firing on {r.rows:,} rows" if r.rows is not None else ""),
        f"mean max decoder cosine (MMCS){live}: A->B {r.a.mmcs:.3f}, B->A {r.b.mmcs:.3f}",
        f"one-to-one pairs ({r.matching}): {r.pairs:,}; shared (decoder and encoder cosine "
        f">= {r.threshold:g}): {r.shared:,}, {r.a.shared:.1%} of A's{live} features and "
        f"{r.b.shared:.1%} of B's",
    ]
    if r.mean_correlation is not None:
        lines.append(f"activation correlation of shared pairs: mean {r.mean_correlation:.3f}")
    lines.append(f"max decoder cosine of each{live} feature:   A      B")
    for low, high, in_a, in_b in r.histogram:
        lines.append(f"  {low:.1f}-{high:.1f}  {int(in_a):>22,} {int(in_b):>6,}")
    if r.top_shared:
        lines.append("most alike pairs (decoder / encoder cosine, activation correlation):")
        for p in r.top_shared:
            c = "" if p.correlation is None else f", {p.correlation:.2f}"
            lines.append(
                f"  A #{p.a}{shown(p.a_name)} = B #{p.b}{shown(p.b_name)}: "
                f"{p.decoder_cos:.3f} / {p.encoder_cos:.3f}{c}"
            )
    for who, items in (("A", r.only_a), ("B", r.only_b)):
        if items:
            other = "B" if who == "A" else "A"
            lines.append(f"{who}'s{live} features least like any of {other}'s:")
            for u in items:
                lines.append(
                    f"  #{u.feature}{shown(u.name)}: {u.max_cos:.3f} to {other} #{u.nearest}"
                )
    return "\n".join(lines)


def main(ns: argparse.Namespace) -> int:
    r = compare(ns.a, ns.b, ns.run, ns.threshold, ns.rows, ns.seed, ns.n)
    print(json.dumps(dataclasses.asdict(r), indent=2) if ns.json else format_result(r))
    return 0
