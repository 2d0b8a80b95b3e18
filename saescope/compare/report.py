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


def compare(
    a: str,
    b: str,
    run: str | None = None,
    threshold: float = 0.7,
    rows: int = 4096,
    seed: int = 0,
    n: int = 5,
) -> CompareResult:
    """Match SAE `a` with SAE `b` (see the package docstring). With a run, only the
    features that fire on its sampled rows take part, on both sides."""
    from saescope.compare.activations import correlations, encode_sample
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
    ids_a, ids_b = np.arange(sae_a.cfg.d_sae), np.arange(sae_b.cfg.d_sae)
    sample = None
    if run:
        from saescope.sae.fit import check_fits_store
        from saescope.store import ActivationStore

        store = ActivationStore(RunPaths(run).acts)
        for sae, name in ((sae_a, a), (sae_b, b)):
            check_fits_store(sae, store.meta, store.d_in, name)
        sample = encode_sample(sae_a, sae_b, store, rows, seed)
        ids_a = np.flatnonzero((sample.a > 0).any(axis=0))  # live on these rows
        ids_b = np.flatnonzero((sample.b > 0).any(axis=0))
        for ids, name in ((ids_a, a), (ids_b, b)):
            if not len(ids):
                raise SaescopeError(f"no feature of {name} fires on {sample.rows:,} rows of {run}")
    m = match(directions(sae_a, ids_a), directions(sae_b, ids_b))  # indices into ids_a/b
    pairs_a, pairs_b = ids_a[m.pairs_a], ids_b[m.pairs_b]
    shared = (m.decoder_cos >= threshold) & (m.encoder_cos >= threshold)
    corr = (
        correlations(sample, pairs_a, pairs_b)
        if sample is not None
        else np.full(len(pairs_a), np.nan, np.float32)
    )
    names_a, names_b = _names(run, where_a.weights), _names(run, where_b.weights)

    def label(names, f: int) -> str:
        return names.label(int(f)) if names else ""

    def side(name: str, sae, best_cos: np.ndarray, n_shared: int, names) -> Side:
        return Side(
            name,
            sae.cfg.d_sae,
            sae.cfg.architecture,
            sae.cfg.k,
            float(best_cos.mean()),
            n_shared / len(best_cos),
            len(best_cos) if run else None,
            names is not None,
        )

    def only(ids, best, best_cos, other_ids, names) -> list[Unmatched]:
        worst = np.argsort(best_cos, kind="stable")[:n]
        return [
            Unmatched(
                int(ids[j]), float(best_cos[j]), int(other_ids[best[j]]), label(names, ids[j])
            )
            for j in worst
        ]

    fired = shared & np.isfinite(corr)
    top = np.flatnonzero(shared)
    top = top[np.argsort(-m.decoder_cos[top], kind="stable")[:n]]
    # the lowest bin takes anti-aligned features too, the highest rounding above 1
    edges = len(BINS) - 2
    bin_a = np.clip(np.searchsorted(BINS, m.a_best_cos, side="right") - 1, 0, edges)
    bin_b = np.clip(np.searchsorted(BINS, m.b_best_cos, side="right") - 1, 0, edges)
    count_a = np.bincount(bin_a, minlength=len(BINS) - 1)
    count_b = np.bincount(bin_b, minlength=len(BINS) - 1)
    histogram = [
        [low, high, int(count_a[i]), int(count_b[i])]
        for i, (low, high) in enumerate(zip(BINS[:-1], BINS[1:], strict=True))
    ]
    n_shared = int(shared.sum())
    return CompareResult(
        a=side(a, sae_a, m.a_best_cos, n_shared, names_a),
        b=side(b, sae_b, m.b_best_cos, n_shared, names_b),
        matching=m.method,
        threshold=threshold,
        pairs=len(pairs_a),
        shared=n_shared,
        histogram=histogram,
        rows=sample.rows if sample is not None else None,
        mean_correlation=float(corr[fired].mean()) if fired.any() else None,
        top_shared=[
            Pair(
                int(pairs_a[i]),
                int(pairs_b[i]),
                float(m.decoder_cos[i]),
                float(m.encoder_cos[i]),
                None if math.isnan(corr[i]) else float(corr[i]),
                label(names_a, pairs_a[i]),
                label(names_b, pairs_b[i]),
            )
            for i in top
        ],
        only_a=only(ids_a, m.a_best, m.a_best_cos, ids_b, names_a),
        only_b=only(ids_b, m.b_best, m.b_best_cos, ids_a, names_b),
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
    lines.append(f"max decoder cosine of each{live} feature to the other SAE's:")
    lines.append(f"  {'cosine':<9}  {'A':>7} {'B':>7}")
    for low, high, in_a, in_b in r.histogram:
        lines.append(f"  {low:.1f}-{high:.1f}    {int(in_a):>7,} {int(in_b):>7,}")
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
