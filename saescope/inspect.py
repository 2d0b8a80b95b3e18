"""`saescope inspect`: look at one feature, or at the features a new text activates.

    saescope inspect 42 --run runs/demo            statistics, names and top texts of feature 42
    saescope inspect 42 --run runs/demo --json     the same as JSON, for scripts
    saescope inspect --text "..." --run runs/demo  embed a new text with the run's model and
                                                   list the features it activates, strongest first

In: `latents/features.parquet` and `corpus.parquet` (plus keywords, explanations and
scores when those stages have run); `--text` also needs `acts/manifest.json` (which
model embedded the corpus) and the SAE. Out: text on stdout; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.errors import SaescopeError
from saescope.examples import from_features_row
from saescope.io import read_json
from saescope.paths import RunPaths
from saescope.report.data import Annotations, RowTexts, load_annotations, read_features


@dataclass(frozen=True)
class Example:
    row: int
    act: float
    text: str
    bin: int | None = None


@dataclass(frozen=True)
class FeatureView:
    feature: int
    count: int
    density: float
    log10_density: float | None
    max_act: float
    mean_act: float
    mean_active_act: float | None
    dead: bool
    keywords: list[str] = field(default_factory=list)
    explanation: str | None = None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    top: list[Example] = field(default_factory=list)
    quantiles: list[Example] = field(default_factory=list)


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def feature_view(
    run: str | Path, feature: int, n_top: int = 10, ann: Annotations | None = None
) -> FeatureView:
    """Everything known about one feature, with the texts of its top and quantile examples."""
    df = read_features(run)
    if not 0 <= feature < len(df):
        raise SaescopeError(
            f"feature {feature} is out of range: the SAE of {run} has features 0..{len(df) - 1}"
        )
    r = df.iloc[feature]
    ann = ann if ann is not None else load_annotations(run)
    texts = RowTexts(run, int(read_json(RunPaths(run).latents_manifest)["n_rows"]))
    fe = from_features_row(r).limit(n_top)
    top = [
        Example(int(row), float(act), texts(int(row)))
        for row, act in zip(fe.top_rows, fe.top_acts, strict=True)
    ]
    quant = [
        Example(int(row), float(act), texts(int(row)), int(b))
        for row, act, b in zip(fe.quantile_rows, fe.quantile_acts, fe.quantile_bins, strict=True)
    ]
    kw = ann.keywords.get(feature)
    ex = ann.explanations.get(feature)
    return FeatureView(
        feature=feature,
        count=int(r["count"]),
        density=float(r["density"]),
        log10_density=_num(r["log10_density"]),
        max_act=float(r["max_act"]),
        mean_act=float(r["mean_act"]),
        mean_active_act=_num(float(r["mean_active_act"])),
        dead=bool(r["dead"]),
        keywords=kw.words if kw else [],
        explanation=ex.text if ex else None,
        scores={s: v[feature] for s, v in ann.scores.items() if feature in v},
        top=top,
        quantiles=quant,
    )


@dataclass(frozen=True)
class TextHit:
    feature: int
    act: float
    density: float
    keywords: list[str]
    top_text: str


def text_features(run: str | Path, text: str, n: int = 10) -> list[TextHit]:
    """Features a new text activates (strongest first), embedded the way the corpus was."""
    from saescope.embed import encode_texts, load_sentence_model
    from saescope.sae import SAE

    rp = RunPaths(run)
    if not (rp.acts / "manifest.json").exists():
        raise SaescopeError(f"no activation store at {rp.acts}; --text needs the run's store")
    meta = read_json(rp.acts / "manifest.json").get("meta", {})
    if meta.get("source") != "sentence-transformers" or not meta.get("model"):
        raise SaescopeError(
            f"the store of {run} was not made by a sentence-transformers model "
            f"(source {meta.get('source')!r}), so a new text cannot be embedded the same way"
        )
    df = read_features(run)
    from saescope.latents import LatentCache

    # the SAE whose features the table lists: the one the cache was encoded with
    sae = SAE.load(LatentCache(run).sae_dir()).eval()
    model = load_sentence_model(meta["model"])
    x = encode_texts(model, [text], 1, bool(meta.get("normalize", False)))  # (1, d_in)
    with torch.inference_mode():
        codes = sae.encode(x)[0]  # (d_sae,)
    active = torch.nonzero(codes > 0).squeeze(1)
    order = active[torch.argsort(codes[active], descending=True)][:n].tolist()
    ann = load_annotations(run)
    texts = RowTexts(run, int(read_json(rp.latents_manifest)["n_rows"]))
    hits = []
    for f in order:
        r = df.iloc[f]
        top = texts(int(r["top_rows"][0])) if len(r["top_rows"]) else ""
        kw = ann.keywords.get(f)
        hits.append(TextHit(f, float(codes[f]), float(r["density"]), kw.words if kw else [], top))
    return hits


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"


def format_feature(v: FeatureView, run: str, width: int) -> str:
    lines = [f"feature {v.feature}   (run {run})"]
    if v.dead:
        lines.append("  dead: never active on this run's rows")
    else:
        lines.append(
            f"  active in {v.count:,} rows   density {100 * v.density:.3g}%   "
            f"log10 density {v.log10_density:.2f}"
        )
        lines.append(
            f"  max act {v.max_act:.4g}   mean active act {v.mean_active_act:.4g}   "
            f"mean act (all rows) {v.mean_act:.4g}"
        )
    if v.keywords:
        lines.append("  keywords: " + _clip(", ".join(v.keywords), width - 12))
    if v.explanation:
        lines.append("  explanation: " + _clip(v.explanation, width - 15))
    for name, s in v.scores.items():
        shuffled = f"   (shuffled {s['shuffled_score']:.3f})" if "shuffled_score" in s else ""
        lines.append(f"  score {name}: {s['score']:.3f}{shuffled}")
    if v.top:
        row_w = max(3, len(str(max(e.row for e in v.top))))
        lines += ["", "top examples", f"  {'#':>3}  {'act':>8}  {'row':>{row_w}}  text"]
        for i, e in enumerate(v.top, 1):
            left = f"  {i:>3}  {e.act:>8.4g}  {e.row:>{row_w}}  "
            lines.append(left + _clip(e.text, width - len(left)))
    return "\n".join(lines)


def format_hits(hits: list[TextHit], text: str, width: int) -> str:
    lines = [f"features of: {_clip(text, width - 14)}"]
    if not hits:
        return lines[0] + "\n  (no feature is active on this text)"
    lines.append(f"  {'feature':>7}  {'act':>8}  {'density':>8}  top text (or keywords)")
    for h in hits:
        left = f"  {h.feature:>7}  {h.act:>8.4g}  {h.density:>8.2%}  "
        about = "[" + ", ".join(h.keywords[:5]) + "] " + h.top_text if h.keywords else h.top_text
        lines.append(left + _clip(about, width - len(left)))
    return "\n".join(lines)


def main(ns: argparse.Namespace) -> int:
    width = ns.width or max(60, shutil.get_terminal_size((100, 24)).columns)
    if ns.text is not None:
        hits = text_features(ns.run, ns.text, ns.n)
        out = (
            json.dumps([asdict(h) for h in hits], indent=2)
            if ns.json
            else format_hits(hits, ns.text, width)
        )
    elif ns.feature is None:
        raise SaescopeError("give a FEATURE id or --text TEXT (see `saescope inspect --help`)")
    else:
        v = feature_view(ns.run, ns.feature, ns.n)
        out = json.dumps(asdict(v), indent=2) if ns.json else format_feature(v, ns.run, width)
    print(out)
    return 0
