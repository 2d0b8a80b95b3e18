"""search-eval stage: how well do search edits work, measured with no LLM judge?

In: a sentence-embedding run with `index/`, `latents/` (which rows each feature fires on,
and the features' largest activations) and its SAE; optionally a file of query texts.
Queries are `n_queries` corpus rows left out of the index (never returned as results),
or the texts of `--queries`. For each query two features are drawn at random among those
firing on at least `min_count` rows: one inactive on the query, to boost, and one active
on it, to suppress. At each strength s of the sweep (units of the feature's largest
activation) the query is edited (boost: + s; suppress: - s; the SAE's error kept) and
searched again. Measured per query, edit and strength:
  fires      fraction of the top k results on which the edited feature fires
             (strength 0: before the edit)
  cosine     cosine(query, edited query)
  overlap    fraction of the unedited top k still in the top k
  relevance  mean cosine between the unedited query and the results
Out, under `search/`: eval.parquet (those rows), eval.summary.json (means per strength,
success = the mean of the boost gain and the suppress drop in `fires`, drift =
1 - cosine, and the recommended strength: the knee of success against drift, the
strength where normalised success minus normalised drift is largest), eval.png (the
curves), eval.config.json and eval.provenance.json. `saescope search` takes the
recommended strength as its default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from saescope import provenance
from saescope.config import config_to_dict
from saescope.edits import Edit, apply_edits, resolve
from saescope.errors import SaescopeError
from saescope.io import atomic_path, write_json
from saescope.options.search import SearchEvalConfig
from saescope.paths import RunPaths
from saescope.search.index import ExactIndex, choose_kind, normalise
from saescope.search.query import SearchSession

OPS = ("boost", "suppress")
N_NEAR = 50  # --boost-from near: the nearest rows whose features may be boosted


@dataclass(frozen=True)
class Queries:
    x: torch.Tensor  # (n_q, d_in) raw query vectors
    rows: np.ndarray  # (n_q,) store rows of the queries (-1: texts from a file)
    exclude: np.ndarray | None  # store rows left out of the results (the query rows)


def _check(cfg: SearchEvalConfig) -> None:
    if cfg.k < 1 or cfg.n_queries < 1 or cfg.min_count < 1:
        raise SaescopeError("--k, --n-queries and --min-count must be >= 1")
    if not cfg.strengths:
        raise SaescopeError("give at least one --strengths value")
    bad = [s for s in cfg.strengths if not (math.isfinite(s) and s > 0)]
    if bad:
        raise SaescopeError(f"--strengths must be positive numbers, got {bad}")


def read_query_texts(path: str | Path) -> list[str]:
    """Texts of a .txt file (one a line) or of the `text` column of .parquet/.csv/.jsonl."""
    p = Path(path)
    if not p.is_file():
        raise SaescopeError(f"query file {p} does not exist")
    if p.suffix == ".txt":
        texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    else:
        readers = {".parquet": pd.read_parquet, ".csv": pd.read_csv}
        try:
            if p.suffix == ".jsonl":
                df = pd.read_json(p, lines=True)
            elif p.suffix in readers:
                df = readers[p.suffix](p)
            else:
                raise SaescopeError(f"query file {p}: use .txt, .parquet, .csv or .jsonl")
        except (OSError, ValueError) as exc:
            raise SaescopeError(f"cannot read query file {p}: {exc}") from exc
        if "text" not in df.columns:
            raise SaescopeError(f"query file {p} has no 'text' column")
        texts = [str(t).strip() for t in df["text"].dropna()]
    texts = [t for t in texts if t]
    if not texts:
        raise SaescopeError(f"query file {p} holds no text")
    return texts


def draw_queries(s: SearchSession, cfg: SearchEvalConfig, rng: np.random.Generator) -> Queries:
    if cfg.queries is not None:
        texts = read_query_texts(cfg.queries)
        pick = np.sort(rng.choice(len(texts), min(cfg.n_queries, len(texts)), replace=False))
        x = s.embed_texts([texts[i] for i in pick])
        return Queries(x, np.full(len(pick), -1, np.int64), None)
    n = s.store.count
    if cfg.n_queries >= n:
        raise SaescopeError(
            f"--n-queries {cfg.n_queries} leaves no row to search: the store has {n} rows"
        )
    rows = np.sort(rng.choice(n, cfg.n_queries, replace=False))
    return Queries(s.store.rows(rows), rows, rows)


def draw_features(
    active: np.ndarray,
    eligible: np.ndarray,
    rng: np.random.Generator,
    near: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per query a random eligible feature inactive on it (boost) and one active (suppress).

    active: (n_q, d_sae) bool; eligible: (d_sae,) bool; near: (n_q, d_sae) bool, when given
    the boosted feature must be one of these (features of the query's neighbours).
    -1 where there is none."""
    out = {op: np.full(active.shape[0], -1, np.int64) for op in OPS}
    for i, act in enumerate(active):
        boost_pool = eligible & ~act & (near[i] if near is not None else True)
        for op, pool in (("boost", boost_pool), ("suppress", eligible & act)):
            ids = np.flatnonzero(pool)
            if len(ids):
                out[op][i] = int(rng.choice(ids))
    return out


@torch.inference_mode()
def neighbour_features(s: SearchSession, q: Queries, n_near: int) -> np.ndarray:
    """(n_q, d_sae) bool: features firing on any of each query's `n_near` nearest rows."""
    hits = s.index.search(q.x, n_near, q.exclude)
    out = np.zeros((len(q.rows), s.sae.cfg.d_sae), dtype=bool)
    for i in range(len(q.rows)):
        rows = hits.rows[i][hits.rows[i] >= 0]
        if len(rows):
            out[i] = (s.sae.encode(s.store.rows(rows)) > 0).any(dim=0).numpy()
    return out


class _Fires:
    """Whether a feature fires on rows, from the latent cache (columns read once each)."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.columns: dict[int, np.ndarray] = {}

    def fraction(self, feature: int, rows: np.ndarray) -> float:
        if feature not in self.columns:
            self.columns[feature] = self.cache.feature_values(feature)[0]
        rows = rows[rows >= 0]
        return float(np.isin(rows, self.columns[feature]).mean()) if len(rows) else float("nan")


def _vectors(s: SearchSession, rows: np.ndarray) -> torch.Tensor:
    """(n, d_in) normalised rows (from the exact index when it is the one searched)."""
    if isinstance(s.index, ExactIndex):
        return s.index.vectors[torch.from_numpy(rows)]
    return normalise(s.store.rows(rows))


def edit_queries(
    s: SearchSession, x: torch.Tensor, features: np.ndarray, strength: float
) -> torch.Tensor:
    """(n, d_in): query i with its own feature added at `strength` (units of the feature's
    largest activation; negative: subtracted), the SAE's error term kept."""
    out = []
    for xi, f in zip(x, features, strict=True):
        edits = resolve([Edit(int(f), "add", strength)], s.typical, s.sae.cfg.d_sae)
        out.append(apply_edits(s.sae, xi.unsqueeze(0), edits)[0])
    return torch.stack(out)


def measure(
    s: SearchSession,
    q: Queries,
    base_rows: np.ndarray,
    op: str,
    features: np.ndarray,
    strength: float,
    x_edit: torch.Tensor,
    live: np.ndarray,
    fires: _Fires,
    k: int,
) -> list[dict[str, Any]]:
    """The table rows of queries `live` edited into `x_edit` (n_live, d_in) and searched."""
    hits = s.index.search(x_edit, k, q.exclude).rows  # (n_live, k)
    unique = np.unique(hits[hits >= 0])
    vecs = _vectors(s, unique)  # (n_unique, d_in)
    at = {int(r): j for j, r in enumerate(unique)}
    q_unit = normalise(q.x[live])  # (n_live, d_in)
    cos = torch.nn.functional.cosine_similarity(q.x[live], x_edit, dim=1)
    out = []
    for j, i in enumerate(live):
        rows = hits[j][hits[j] >= 0]
        before = base_rows[i][base_rows[i] >= 0]
        out.append(
            {
                "query": int(i),
                "query_row": int(q.rows[i]),
                "op": op,
                "feature": int(features[i]),
                "strength": float(strength),
                "fires": fires.fraction(int(features[i]), rows),
                "cosine": float(cos[j]),
                "overlap": len(np.intersect1d(rows, before)) / k,
                "relevance": float((vecs[[at[int(r)] for r in rows]] @ q_unit[j]).mean()),
            }
        )
    return out


def sweep(
    s: SearchSession, q: Queries, pairs: dict[str, np.ndarray], cfg: SearchEvalConfig, fires: _Fires
) -> pd.DataFrame:
    """One row per query, edit and strength (strength 0: the unedited query)."""
    base = s.index.search(q.x, cfg.k, q.exclude).rows  # (n_q, k)
    if (base < 0).all(axis=1).any():
        raise SaescopeError("the search returned no results for some queries; try more --nprobe")
    records: list[dict[str, Any]] = []
    steps = len(OPS) * (len(cfg.strengths) + 1)
    bar = tqdm(total=steps, desc="search-eval", disable=not cfg.progress)
    for op in OPS:
        live = np.flatnonzero(pairs[op] >= 0)
        sign = 1.0 if op == "boost" else -1.0
        for strength in [0.0, *cfg.strengths]:
            x_edit = edit_queries(s, q.x[live], pairs[op][live], sign * strength)
            args = (base, op, pairs[op], strength, x_edit, live, fires, cfg.k)
            records += measure(s, q, *args)
            bar.update()
    bar.close()
    return pd.DataFrame.from_records(records)


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Means per strength, success and drift, and the recommended strength (the knee)."""
    by = table.groupby(["op", "strength"])[["fires", "cosine", "overlap", "relevance"]].mean()
    strengths = sorted(table["strength"].unique())
    rows = []
    for s in strengths:
        row: dict[str, Any] = {"strength": float(s)}
        for op in OPS:
            if (op, s) in by.index:
                for col in ("fires", "cosine", "overlap", "relevance"):
                    row[f"{op}_{col}"] = float(by.loc[(op, s), col])
        rows.append(row)
    base = rows[0]
    # the most each edit can achieve: the boosted feature on every result, the suppressed on none
    reach = []
    if "boost_fires" in base:
        reach.append(1 - base["boost_fires"])
    if "suppress_fires" in base:
        reach.append(base["suppress_fires"])
    achievable = float(np.mean(reach)) if reach else float("nan")
    for row in rows:
        gains = []
        if "boost_fires" in row:
            gains.append(row["boost_fires"] - base["boost_fires"])
        if "suppress_fires" in row:
            gains.append(base["suppress_fires"] - row["suppress_fires"])
        row["success"] = float(np.mean(gains)) if gains else float("nan")
        row["success_share"] = row["success"] / achievable if achievable > 0 else float("nan")
        cosines = [row[f"{op}_cosine"] for op in OPS if f"{op}_cosine" in row]
        row["drift"] = float(1 - np.mean(cosines)) if cosines else float("nan")
    knee = knee_strength(rows)
    at = next((r for r in rows if r["strength"] == knee), None)
    edited = sorted(r["strength"] for r in rows if r["strength"] > 0)
    edge = None  # a knee at an end of the sweep may lie beyond it
    if knee is not None and knee == edited[-1]:
        edge = "largest"
    elif knee is not None and knee == edited[0]:
        edge = "smallest"
    return {
        "unit": "max_act",
        "n_queries": int(table["query"].nunique()),
        "achievable_success": achievable,
        "per_strength": rows,
        "recommended_strength": knee,
        "at_recommended": at,
        "recommended_at_edge": edge,
    }


def knee_strength(rows: list[dict[str, Any]]) -> float | None:
    """The knee of success against drift: the strength (> 0) where the share of the
    achievable success most exceeds the drift (both in [0, 1], so the answer does not
    depend on how far the sweep goes, once it covers the knee). None when no strength
    raised success."""
    edited = [r for r in rows if r["strength"] > 0 and np.isfinite(r["success_share"])]
    if not edited or max(r["success"] for r in edited) <= 0:
        return None
    score = [r["success_share"] - r["drift"] for r in edited]
    return float(edited[int(np.argmax(score))]["strength"])


def plot(summary: dict[str, Any], k: int, path: Path) -> Path:
    """Success against drift (one line per edit), and overlap/relevance against strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["per_strength"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for op, colour in (("boost", "#2a7f62"), ("suppress", "#b0413e")):
        pts = [
            (1 - r[f"{op}_cosine"], r[f"{op}_fires"], r["strength"])
            for r in rows
            if f"{op}_fires" in r
        ]
        if not pts:
            continue
        x, y, s = zip(*pts, strict=True)
        ax.plot(x, y, marker="o", color=colour, label=f"{op}ed feature")
        for xi, yi, si in zip(x, y, s, strict=True):
            ax.annotate(f"{si:g}", (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
    knee = summary["recommended_strength"]
    if knee is not None and summary["at_recommended"] is not None:
        ax.axvline(
            summary["at_recommended"]["drift"],
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"recommended strength {knee:g}",
        )
    ax.set_xlabel("query drift: 1 - cosine(query, edited query)")
    ax.set_ylabel(f"fraction of the top {k} where the feature fires")
    ax.set_title("edit success against drift (labels: strength)")
    ax.legend(fontsize=7)
    strengths = [r["strength"] for r in rows if r["strength"] > 0]
    for op, colour in (("boost", "#2a7f62"), ("suppress", "#b0413e")):
        ov = [r.get(f"{op}_overlap") for r in rows if r["strength"] > 0]
        rel = [r.get(f"{op}_relevance") for r in rows if r["strength"] > 0]
        if None in ov:
            continue
        ax2.plot(strengths, ov, marker="o", color=colour, label=f"{op}: overlap@{k} with unedited")
        ax2.plot(
            strengths,
            rel,
            marker="x",
            linestyle=":",
            color=colour,
            label=f"{op}: cosine of results to the query",
        )
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("strength (x the feature's largest activation)")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("what is kept of the original query")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


@provenance.locked("search-eval")
def run(cfg: SearchEvalConfig) -> Path:
    """Write `search/eval.*` for `cfg`; skip when they are already there."""
    from saescope.latents import LatentCache

    _check(cfg)
    rp = RunPaths(cfg.run)
    cache = LatentCache(cfg.run)  # names a missing latent cache
    kind = choose_kind(rp, cfg.index)
    up = provenance.upstream_ids(
        {
            "acts": rp.acts_manifest,
            "latents": rp.latents_manifest,
            "features": rp.features,
            "index": rp.index_manifest(kind),
            "queries": Path(cfg.queries) if cfg.queries else None,
        }
    ) | {"sae": cache.sae_sha256}
    options = config_to_dict(cfg) | {"index": kind}
    record = provenance.Record.make(
        rp.search_eval_record, "search-eval", options, up, ("run", "progress", "overwrite")
    )
    if record.decide(cfg.overwrite, rp.search_eval) is provenance.Decision.SKIP:
        return rp.search_eval
    s = SearchSession(cfg.run, kind, cfg.nprobe)
    rng = np.random.default_rng(cfg.seed)
    q = draw_queries(s, cfg, rng)
    table_counts = cache.features().sort_values("feature")["count"].to_numpy()
    eligible = table_counts >= cfg.min_count
    with torch.inference_mode():
        active = (s.sae.encode(q.x) > 0).numpy()  # (n_q, d_sae)
    near = neighbour_features(s, q, N_NEAR) if cfg.boost_from == "near" else None
    pairs = draw_features(active, eligible, rng, near)
    if (pairs["boost"] < 0).all() and (pairs["suppress"] < 0).all():
        raise SaescopeError(f"no feature fires on {cfg.min_count} rows or more; lower --min-count")
    table = sweep(s, q, pairs, cfg, _Fires(cache))
    summary = summarize(table) | {
        "k": cfg.k,
        "index": kind,
        "queries": cfg.queries or "held-out rows",
    }
    record.start()
    with atomic_path(rp.search_eval) as tmp:
        table.to_parquet(tmp, index=False)
    write_json(rp.search_eval_summary, summary)
    plot(summary, cfg.k, rp.search_eval_plot)
    write_json(rp.search_eval_config, options)
    record.finish({"recommended_strength": summary["recommended_strength"]})
    print(format_summary(summary))
    return rp.search_eval


def format_summary(summary: dict[str, Any]) -> str:
    k = summary.get("k", 10)
    lines = [
        f"search-eval: {summary['n_queries']} queries, top {k}, strengths in units of each "
        "feature's largest activation",
        f"  {'strength':>8}  {'boost fires':>11}  {'suppress fires':>14}  {'success':>7}  "
        f"{'cosine':>6}  {'overlap':>7}  {'relevance':>9}",
    ]
    for r in summary["per_strength"]:
        cos = 1 - r["drift"]
        ov = np.nanmean([r.get(f"{op}_overlap", np.nan) for op in OPS])
        rel = np.nanmean([r.get(f"{op}_relevance", np.nan) for op in OPS])
        lines.append(
            f"  {r['strength']:>8g}  {r.get('boost_fires', float('nan')):>11.3f}  "
            f"{r.get('suppress_fires', float('nan')):>14.3f}  {r['success']:>7.3f}  "
            f"{cos:>6.3f}  {ov:>7.3f}  {rel:>9.3f}"
        )
    knee = summary["recommended_strength"]
    lines.append(
        f"recommended strength: {knee:g} (the knee of success against drift)"
        if knee is not None
        else "no recommended strength: no strength raised success"
    )
    edge = summary.get("recommended_at_edge")
    if edge:
        beyond = "above" if edge == "largest" else "below"
        lines.append(
            f"  {knee:g} is the {edge} strength tried: the knee may lie {beyond} it; "
            "sweep wider --strengths to place it"
        )
    return "\n".join(lines)
