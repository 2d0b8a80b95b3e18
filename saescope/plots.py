"""Small PNG plots of a latent cache (matplotlib, Agg backend, no display needed).

In: arrays the latents stage already has (per-feature log10 density, the L0
histogram, per-feature activation histograms). Out: PNG files, one per plot.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from saescope.io import atomic_path  # noqa: E402

DPI = 110


def _save(fig, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def density_histogram(log10_density: np.ndarray, path: Path) -> Path:
    """Histogram of log10(feature density); dead features (NaN) are counted in the legend."""
    alive = log10_density[~np.isnan(log10_density)]
    n_dead = int(np.isnan(log10_density).sum())
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if len(alive):
        ax.hist(alive, bins=50, color="#3b6ea8", label=f"alive ({len(alive)})")
    ax.plot([], [], " ", label=f"dead: {n_dead}")
    ax.set_xlabel("log10 density (fraction of rows where the feature is active)")
    ax.set_ylabel("features")
    ax.set_title(f"Feature density ({len(log10_density)} features, {n_dead} dead)")
    ax.legend(loc="upper left", frameon=False)
    return _save(fig, path)


def l0_histogram(l0_hist: np.ndarray, path: Path) -> Path:
    """Bar chart of how many rows have each number of active features."""
    n = int(l0_hist.sum())
    nz = np.nonzero(l0_hist)[0]
    hi = int(nz[-1]) + 1 if len(nz) else 1
    mean = float((np.arange(len(l0_hist)) * l0_hist).sum() / max(n, 1))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(np.arange(hi), l0_hist[:hi], width=1.0, color="#5a9e6f")
    ax.set_xlabel("active features per row (L0)")
    ax.set_ylabel("rows")
    ax.set_title(f"L0 per row (mean {mean:.1f} over {n} rows)")
    return _save(fig, path)


def activation_grid(
    hists: dict[int, tuple[np.ndarray, np.ndarray]], density: np.ndarray, path: Path
) -> Path:
    """One small histogram of non-zero activations per feature, in a grid."""
    feats = list(hists)
    cols = 4
    rows = max(1, math.ceil(len(feats) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(10, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, f in zip(axes.flat, feats, strict=False):
        counts, edges = hists[f]
        ax.set_visible(True)
        ax.stairs(counts, edges, fill=True, color="#a8663b")
        ax.set_title(f"feature {f} (density {density[f]:.3g})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Non-zero activation distribution of the densest features", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=1 - 0.5 / (2.0 * rows), hspace=0.55)
    return _save(fig, path, tight=False)


def steering_sweep(
    curves: dict[str, list[tuple[float, float, float]]], max_ppl_ratio: float, path: Path
) -> Path:
    """Concept gain against perplexity ratio over strengths, one line per feature.

    curves: label -> [(strength, ppl_ratio, concept_gain), ...] in strength order.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in curves.items():
        if not pts:
            continue
        s, ppl, gain = zip(*pts, strict=True)
        ax.plot(ppl, gain, marker="o", label=label)
        for x, y, t in zip(ppl, gain, s, strict=True):
            ax.annotate(f"{t:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.axvline(max_ppl_ratio, color="grey", linestyle="--", linewidth=1, label="perplexity bound")
    ax.set_xscale("log")
    ax.set_xlabel("perplexity of steered text / unsteered (log)")
    ax.set_ylabel("concept gain (feature activation)")
    ax.set_title("steering strength sweep (labels: strength)")
    ax.legend(fontsize=7)
    return _save(fig, path)
