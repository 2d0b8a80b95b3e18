"""Report stage: a run directory in, a static HTML report out (`report/index.html` + `report/plots/`).

The page opens offline (no network resource): a run summary (corpus, model, SAE
config and metrics, latent cache), the plots, and a searchable, sortable list of
features whose cards open to show top and quantile examples with the active span
highlighted by activation. Keywords, explanations and scores are shown when their
stages have run. Re-running with the same options and unchanged inputs skips.

Families (`saescope families`): the largest family trees, each node a feature that
opens its card, and on every card the families the feature belongs to and the
features of other SAE widths it splits into or was split from.

Token runs: an example is its token's context window, every token coloured by the
feature's activation on it (from the latent cache), and a card shows the tokens
the feature's decoder direction promotes and suppresses (the logit lens columns
of features.parquet).
"""

from __future__ import annotations

import html
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from saescope import provenance
from saescope.config import changed_options, config_to_dict
from saescope.corpus import corpus_sha256
from saescope.errors import SaescopeError, SaescopeWarning
from saescope.examples import Activations, from_features_row, load_activations
from saescope.examples.tokens import Window, values_at
from saescope.families.tables import FamilyTables, read_families
from saescope.io import atomic_path, read_json, sha256_file, sha256_text, write_json
from saescope.options.report import ReportConfig
from saescope.paths import RunPaths, SAEPaths
from saescope.report.assets import CSS, HTML, JS
from saescope.report.data import (
    Annotations,
    RowTexts,
    load_annotations,
    logit_lens,
    read_features,
    sae_metrics,
    score_plots,
)

MAX_FAMILIES = 300  # family trees on the page (the largest); cards name every family
MAX_SPLITS = 8  # split partners listed on a card

PLOT_TITLES = {
    "density.png": "Feature density",
    "l0.png": "Active features per row",
    "activations.png": "Activation distributions",
}


def page_inputs(rp: RunPaths, sae_dir: Path) -> dict[str, str]:
    """sha256 of every file the page is made from (a change re-makes the page), by its
    name relative to the run; `saescope status` compares them too."""
    files = [
        rp.features,
        rp.latents_manifest,
        rp.keywords,
        rp.keywords_record,  # which activations the names describe
        rp.explanations,
        SAEPaths(sae_dir).metrics,
    ]
    files += [rp.plots / name for name in PLOT_TITLES]
    files += [rp.families_table, rp.family_members, rp.family_splits, rp.families_summary]
    files += [rp.families_record]  # which latent cache the families describe
    # the texts the page shows: the corpus, and for token runs the contexts
    files += [rp.corpus, rp.acts_tokens, rp.acts_index]
    if rp.scores.exists():
        files += sorted(rp.scores.glob("*.parquet")) + sorted(rp.scores.glob("*.png"))
        files += sorted(rp.scores.glob("*.provenance.json"))  # which names they scored
    # the corpus's hash is remembered from the store check (`corpus_sha256`)
    out = {
        _name(p, rp.root): corpus_sha256(p) if p == rp.corpus else sha256_file(p)
        for p in files
        if p.exists()
    }
    return out | {"page template": sha256_text(HTML + CSS + JS)}


def _name(path: Path, root: Path) -> str:
    """`path` relative to the run when it lies inside it (an SAE may live elsewhere)."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path.resolve())


def _warn_trimmed(cfg: ReportConfig, lat_cfg: dict[str, Any]) -> None:
    """Say so when the cards are asked for more examples than the latent cache keeps
    (asked: set away from the default)."""
    asked = changed_options(cfg, ("top_examples", "quantile_examples"))
    for ours, theirs, flag in (
        ("top_examples", "top_n", "--top-n"),
        ("quantile_examples", "examples_per_quantile", "--examples-per-quantile"),
    ):
        kept = lat_cfg.get(theirs)
        if ours in asked and kept is not None and getattr(cfg, ours) > kept:
            warnings.warn(
                f"--{ours.replace('_', '-')} {getattr(cfg, ours)}: the latent cache keeps "
                f"{kept}, so cards show at most {kept} (`saescope latents {flag} N "
                "--overwrite` keeps more)",
                SaescopeWarning,
                stacklevel=3,
            )


@provenance.locked("report")
def run(cfg: ReportConfig) -> Path:
    """Write `report/index.html` for `cfg`; return its path."""
    rp = RunPaths(cfg.run)
    df = read_features(cfg.run)
    if not rp.latents_config.exists():
        raise SaescopeError(
            f"the latent cache of {cfg.run} is unfinished; re-run `saescope latents`"
        )
    lat_cfg = read_json(rp.latents_config)
    _warn_trimmed(cfg, lat_cfg)
    from saescope.latents import LatentCache

    sae_dir = LatentCache(cfg.run).sae_dir()  # the SAE the cache was encoded with
    inputs = page_inputs(rp, sae_dir)
    record = provenance.Record.make(rp.report_record, "report", cfg, inputs, ignore=("run",))
    # a page is a view: re-made whenever what it shows changed (overwrite)
    if record.decide(True, rp.report_index) is provenance.Decision.SKIP:
        return rp.report_index
    record.start()
    manifest = read_json(rp.latents_manifest)
    ann = load_annotations(cfg.run)
    texts = RowTexts(cfg.run, int(manifest["n_rows"]))
    acts = load_activations(cfg.run, "latents") if texts.tokens is not None else None
    fams = read_families(cfg.run)  # None until `saescope families` ran on this cache
    data = page_data(cfg, df, ann, texts, acts, fams)
    plots = _copy_plots(rp, ann)
    title = cfg.title or f"saescope report: {rp.root.resolve().name}"
    summary = _summary(rp, sae_dir, df, manifest, lat_cfg, ann, len(data["features"]), fams)
    page = (
        HTML.replace("__CSS__", CSS)
        .replace("__JS__", JS)
        .replace("__TITLE__", html.escape(title))
        .replace("__SUBTITLE__", html.escape(str(rp.root.resolve())))
        .replace("__SUMMARY__", summary)
        .replace("__PLOTS__", plots)
        .replace("__DATA__", _json_for_script(data))
    )
    with atomic_path(rp.report_index) as tmp:
        tmp.write_text(page, encoding="utf-8")
    write_json(rp.report_config, config_to_dict(cfg))
    record.finish()
    return rp.report_index


def _json_for_script(data: Any) -> str:
    # "<" never appears outside JSON strings, and "\u003c" inside one decodes to "<",
    # so no text can close the <script> element
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).replace(
        "<", "\\u003c"
    )


def _f(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 6)


def page_data(
    cfg: ReportConfig,
    df: pd.DataFrame,
    ann: Annotations,
    texts: RowTexts,
    acts: Activations | None = None,
    fams: FamilyTables | None = None,
) -> dict[str, Any]:
    """The JSON blob the page renders: features with examples, and the texts they cite.

    Token runs (`texts.tokens`, with the run's `acts`): the windows of the rows cited
    (`tokens`) and, per feature, its non-zero activations on each window's tokens.
    With families: `families` (the largest trees, nested [feature, [children...]])
    and per feature `families` ([family, depth] pairs) and `splits`
    ([sae, relation, feature, cosine, share, inside, d_sae]).
    """
    in_families, split_refs = _family_refs(fams)
    windows: dict[int, Window] = {}  # token runs only
    alive = df[~df["dead"]].sort_values(["count", "feature"], ascending=[False, True])
    alive = alive.head(cfg.max_features)
    rows_used: set[int] = set()
    features = []
    for r in alive.itertuples(index=False):
        f = int(r.feature)
        ex = from_features_row(r._asdict()).limit(cfg.top_examples, cfg.quantile_examples)
        top = [[int(row), _f(act)] for row, act in zip(ex.top_rows, ex.top_acts, strict=True)]
        quant: list[list[Any]] = [
            [int(row), _f(act), int(b)]
            for row, act, b in zip(
                ex.quantile_rows, ex.quantile_acts, ex.quantile_bins, strict=True
            )
        ]
        rows_used.update(e[0] for e in top + quant)
        lens = logit_lens(r._asdict())
        item: dict[str, Any] = {
            "id": f,
            "count": int(r.count),
            "density": _f(r.density),
            "log10_density": _f(r.log10_density),
            "max_act": _f(r.max_act),
            "mean_active_act": _f(r.mean_active_act),
            "top": top,
            "quant": quant,
        }
        if f in ann.keywords:
            kw = ann.keywords[f]
            item |= {
                "keywords": kw.words,
                "kw_scores": [_f(s) for s in kw.scores],
                "kw_method": kw.method,
            }
        if f in ann.explanations:
            item["explanation"] = ann.explanations[f].text
        scores = {name: s[f] for name, s in ann.scores.items() if f in s}
        if scores:
            item["scores"] = {n: {k: _f(v) for k, v in s.items()} for n, s in scores.items()}
        if f in in_families:
            item["families"] = in_families[f]
        if f in split_refs:
            item["splits"] = split_refs[f]
        if lens is not None:
            item["promoted"] = [[t, _f(x)] for t, x in lens.promoted]
            item["suppressed"] = [[t, _f(x)] for t, x in lens.suppressed]
        if texts.tokens is not None and acts is not None:
            column = acts.column(f)
            item["tok_acts"] = {}
            for row in dict.fromkeys(e[0] for e in top + quant):
                if row not in windows:
                    windows[row] = texts.tokens.window(row)
                vals = values_at(column, windows[row].rows)
                item["tok_acts"][str(row)] = [[int(i), _f(vals[i])] for i in np.flatnonzero(vals)]
        features.append(item)
    data: dict[str, Any] = {"features": features, "scorers": sorted(ann.scores)}
    data["families"] = _family_trees(fams) if fams is not None else []
    if windows:
        data["tokens"] = {
            str(row): {"tokens": w.tokens, "pos": w.center} for row, w in sorted(windows.items())
        }
        data["texts"] = {}
    else:
        data["texts"] = {str(row): texts(row, cfg.max_text_chars) for row in sorted(rows_used)}
    return data


def _family_refs(
    fams: FamilyTables | None,
) -> tuple[dict[int, list[list[int]]], dict[int, list[list[Any]]]]:
    """feature -> its [family, depth] pairs; feature -> its splits (cache's SAE side)."""
    if fams is None:
        return {}, {}
    refs: dict[int, list[list[int]]] = {}
    m = fams.members
    for fam, feat, depth in zip(m["family"], m["feature"], m["depth"], strict=True):
        refs.setdefault(int(feat), []).append([int(fam), int(depth)])
    splits: dict[int, list[list[Any]]] = {}
    s = fams.splits
    for relation, own, other, sae, d_sae in (
        ("splits into", "parent", "child", "large_sae", "large_d_sae"),
        ("split from", "child", "parent", "small_sae", "small_d_sae"),
    ):
        side = "small_sae" if relation == "splits into" else "large_sae"
        rows = s[s[side] == fams.cache_sae].sort_values("cosine", ascending=False)
        for r in rows.itertuples(index=False):
            out = splits.setdefault(int(getattr(r, own)), [])
            if len(out) < MAX_SPLITS:
                out.append(
                    [
                        str(getattr(r, sae)), relation, int(getattr(r, other)), _f(r.cosine),
                        _f(r.share), _f(r.inside), int(getattr(r, d_sae)),
                    ]
                )  # fmt: skip
    return refs, splits


def _family_trees(fams: FamilyTables) -> list[dict[str, Any]]:
    """The largest MAX_FAMILIES families, each tree as nested [feature, [children...]]."""
    out = []
    members = fams.members[fams.members["family"] < MAX_FAMILIES]
    by_family = {int(k): g for k, g in members.groupby("family", sort=True)}
    for r in fams.families.head(MAX_FAMILIES).itertuples(index=False):
        rows = by_family.get(int(r.family))
        if rows is None:
            continue
        nodes: dict[int, list[Any]] = {}
        root: list[Any] = []
        for feat, up in zip(rows["feature"], rows["tree_parent"], strict=True):
            node: list[Any] = [int(feat), []]
            if up < 0:
                root = node
            else:
                nodes[int(up)][1].append(node)
            nodes[int(feat)] = node
        name = None if r.name is None or pd.isna(r.name) else str(r.name)
        out.append(
            {"id": int(r.family), "name": name, "size": int(r.size), "depth": int(r.depth),
             "tree": root}
        )  # fmt: skip
    return out


def _copy_plots(rp: RunPaths, ann: Annotations) -> str:
    """Copy the PNGs beside the page; return their <figure> elements."""
    sources = [(rp.plots / name, name, title) for name, title in PLOT_TITLES.items()]
    sources += [(p, f"score-{p.name}", f"Scores: {p.stem}") for p in score_plots(rp, ann)]
    if rp.report_plots.exists():
        shutil.rmtree(rp.report_plots)
    figures = []
    for src, name, title in sources:
        if not src.exists():
            continue
        with atomic_path(rp.report_plots / name) as tmp:
            shutil.copyfile(src, tmp)
        wide = ' class="wide"' if name == "activations.png" else ""
        figures.append(
            f'<figure{wide}><img src="plots/{html.escape(name)}" alt="{html.escape(title)}" '
            f'title="{html.escape(title)}"></figure>'
        )
    return (
        "\n".join(figures) or '<div class="empty">No plots (latents ran with --plots false).</div>'
    )


def _box(title: str, items: dict[str, Any]) -> str:
    cells = "".join(
        f'<div class="k">{html.escape(str(k))}</div><div class="v">{html.escape(_show(v))}</div>'
        for k, v in items.items()
        if v is not None
    )
    return f'<div class="box"><h3>{html.escape(title)}</h3><div class="kv">{cells}</div></div>'


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _summary(
    rp: RunPaths,
    sae_dir: Path,
    df: pd.DataFrame,
    manifest: dict[str, Any],
    lat_cfg: dict[str, Any],
    ann: Annotations,
    n_shown: int,
    fams: FamilyTables | None = None,
) -> str:
    boxes = []
    corpus_cfg = read_json(rp.corpus_config) if rp.corpus_config.exists() else {}
    acts = read_json(rp.acts / "manifest.json") if (rp.acts / "manifest.json").exists() else {}
    meta = acts.get("meta", {})
    boxes.append(
        _box(
            "Data",
            {
                "corpus": corpus_cfg.get("source"),
                "texts": corpus_cfg.get("n_rows"),
                "activation source": meta.get("source"),
                "model": Path(str(meta["model"])).name if meta.get("model") else None,
                "hookpoint": meta.get("hookpoint"),  # token runs only, as the two below
                "context length": meta.get("ctx_len"),
                "rows are": meta.get("rows") if meta.get("rows") == "tokens" else None,
                "rows in store": acts.get("count"),
                "d_in": acts.get("d_in"),
            },
        )
    )
    sp = SAEPaths(sae_dir)
    sae_cfg = read_json(sp.config) if sp.config.exists() else {}
    boxes.append(
        _box(
            "SAE",
            {
                "folder": sae_dir.name,
                "architecture": sae_cfg.get("architecture"),
                "d_in": sae_cfg.get("d_in"),
                "d_sae": sae_cfg.get("d_sae"),
                "k": sae_cfg.get("k"),
                "input norm": sae_cfg.get("input_norm"),
            },
        )
    )
    metrics, left_out = sae_metrics(rp.root, sae_dir)
    if left_out:
        own = "" if sae_dir.resolve() == rp.sae.resolve() else f" --sae {sae_dir}"
        note = f"{left_out}; `saescope eval --run {rp.root}{own}` measures them on this run"
        boxes.append(_box("SAE metrics", {"left out": note}))
    if metrics:
        flat = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, int | float | str) and len(str(v)) < 60
        }
        boxes.append(_box("SAE metrics (held out)", dict(list(flat.items())[:14])))
        lm = metrics.get("lm")
        if isinstance(lm, dict):  # token runs: the model's loss with the SAE spliced in
            keys = (
                "ce_loss_score", "kl_div_score", "delta_loss", "ce_loss_without_sae",
                "ce_loss_with_sae", "ce_loss_with_ablation", "ce_loss_with_error",
                "kl_div_with_sae", "n_contexts", "n_tokens", "split",
            )  # fmt: skip
            boxes.append(
                _box("Language model with the SAE spliced in", {k: lm.get(k) for k in keys})
            )
    n_rows = int(manifest["n_rows"])
    dead = int(df["dead"].sum())
    boxes.append(
        _box(
            "Latents",
            {
                "rows": n_rows,
                "non-zeros": int(manifest["nnz"]),
                "mean L0": float(manifest["nnz"]) / max(n_rows, 1),
                "alive features": len(df) - dead,
                "dead features": dead,
                "features listed": n_shown,
                "top / quantile examples": f"{lat_cfg.get('top_n')} / {lat_cfg.get('n_quantiles')} bins",
            },
        )
    )
    interp: dict[str, Any] = {}
    if ann.keywords:
        methods = sorted({k.method for k in ann.keywords.values()})
        interp["keywords"] = f"{len(ann.keywords):,} features ({', '.join(methods)})"
    if ann.explanations:
        interp["explanations"] = f"{len(ann.explanations):,} features"
    for name, s in sorted(ann.scores.items()):
        real = [v["score"] for v in s.values()]
        shuf = [v["shuffled_score"] for v in s.values() if "shuffled_score" in v]
        line = f"mean {np.mean(real):.3f}" if real else "no scores"
        if shuf:
            line += f" (shuffled {np.mean(shuf):.3f})"
        interp[f"{name} score"] = line
    if ann.stale:
        interp["left out"] = "; ".join(ann.stale) + ": re-run the stages that made them"
    if interp:
        boxes.append(_box("Names and scores", interp))
    if fams is not None:
        boxes.append(_families_box(fams))
    return "\n".join(boxes)


def _families_box(fams: FamilyTables) -> str:
    s = fams.summary
    items: dict[str, Any] = {
        "method": s.get("rules", {}).get("method"),
        "families": s.get("n_families"),
        "coverage": f"{s['coverage']:.1%} of alive features" if "coverage" in s else None,
        "mean size": s.get("mean_size"),
        "largest": s.get("max_size"),
        "mean depth": s.get("mean_depth"),
    }
    if s.get("block_ratio_lift"):
        items["block-diagonal co-occurrence"] = (
            f"{s['block_ratio']:.3g} ({s['block_ratio_lift']:.1f}x random)"
        )
    for p in s.get("split_pairs", []):
        if "parents" in p:
            items[f"splits {p['small_d_sae']} -> {p['large_d_sae']}"] = (
                f"{p['parents_split_in_2_or_more']} of {p['parents']} split in 2+, "
                f"mean cosine {p['mean_cosine']:.2f}"
            )
    return _box("Families", items)
