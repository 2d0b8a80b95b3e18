"""Score stage: how good are the names (keywords or LLM explanations)? With a shuffled control.

In: the names (`interp/keywords.parquet` or `interp/explanations.jsonl`, with the
naming/scoring split their record gives), `acts/`, `corpus.parquet`, and the latent
cache (or the SAE with `--activations sae`). The LLM scorers (detection, fuzzing,
intruder, simulation, surprisal) live in `saescope.scoring.llm`; `run` hands them
over. Out, for `--scorer NAME` (KEY = NAME, or NAME-<names> when not the scorer's
default names; see `score_key`):
  scores/KEY.parquet       feature, score, shuffled_score, n_pos, n_neg, method,
                            source (the keywords method), status, reason
  scores/KEY.summary.json  mean/median of score and shuffled_score
  scores/KEY.png           their distributions
  scores/KEY.config.json   options, version
  scores/KEY.provenance.json  provenance record: the sha256 of every input, keywords included

Scorers: `embedding` (ROC AUC of the name, embedded as a query, ranking held-out
activating texts above held-out non-activating ones) and `keyword-relevance`
(the thesis's mean keyword-to-text cosine). Every feature is also scored with
another feature's keywords (a seeded derangement): `shuffled_score`, the level a
name that says nothing about this feature reaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from saescope import provenance
from saescope.config import config_to_dict
from saescope.errors import SaescopeError
from saescope.examples import Examples, open_examples, run_model_name, store_is_text_embedding
from saescope.examples.activations import activation_source
from saescope.examples.tokens import row_texts
from saescope.interp.candidates import PhraseEmbedder, unit_rows
from saescope.io import atomic_path, write_json
from saescope.options.score import (
    EMBEDDING_SCORERS,
    LLM_ONLY_OPTIONS,
    LLM_SCORERS,
    ScoreConfig,
    default_names,
    score_key,
)
from saescope.paths import RunPaths
from saescope.scoring import embedding, keyword_relevance
from saescope.scoring.base import FeatureScore, derangement, held_out, summarize
from saescope.scoring.names import read_names, same_activations
from saescope.store import ActivationStore

SCHEMA = pa.schema(
    [
        ("feature", pa.int32()),
        ("score", pa.float64()),
        ("shuffled_score", pa.float64()),
        ("n_pos", pa.int64()),
        ("n_neg", pa.int64()),
        ("method", pa.string()),
        ("source", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)


class _TextVectors:
    """Unit vectors of corpus rows: store rows when they are the model's, else embedded.

    `prepare(rows)` reads (or embeds) the rows once, replacing the rows prepared
    before; calls then look them up (sorted ids, no n_rows-long index).
    """

    def __init__(
        self, store: ActivationStore, texts: Sequence[str], model_name: str, embedder
    ) -> None:
        self.from_store = store_is_text_embedding(store, model_name)
        self.store, self.texts, self.embedder = store, texts, embedder
        self.rows = np.zeros(0, dtype=np.int64)
        self.mat = np.zeros((0, 1), dtype=np.float32)

    def prepare(self, rows: np.ndarray) -> None:
        self.rows = np.unique(np.asarray(rows, dtype=np.int64))
        if self.from_store:
            self.mat = unit_rows(self.store.rows(self.rows).numpy())  # (n, d)
        else:
            self.mat = self.embedder.unit([self.texts[int(r)] for r in self.rows])

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self.mat[np.searchsorted(self.rows, rows)]


_VECTOR_CHUNK = 256  # features whose example vectors are held at once


def score_features(
    cfg: ScoreConfig,
    keywords: dict[int, list[str]],
    ex: Examples,
    vectors,
    embedder: PhraseEmbedder,
) -> dict[int, FeatureScore]:
    """Score every feature with keywords (and with a deranged feature's keywords)."""
    if cfg.scorer not in EMBEDDING_SCORERS:
        raise SaescopeError(
            f"unknown embedding scorer {cfg.scorer!r}; choose {', '.join(EMBEDDING_SCORERS)}"
        )
    feats = sorted(keywords)
    half = "scoring" if cfg.scorer == embedding.NAME else cfg.examples
    max_pos = cfg.max_pos if cfg.scorer == embedding.NAME else cfg.n_texts
    n_neg = cfg.n_neg if cfg.scorer == embedding.NAME else 0
    held = {f: held_out(ex, f, half, max_pos, n_neg, cfg.seed) for f in feats}
    other = dict(zip(feats, [feats[i] for i in derangement(len(feats), cfg.seed)], strict=True))
    if cfg.scorer == embedding.NAME:
        queries = {f: embedding.explanation_text(keywords[f]) for f in feats}
        embedder.embed(list(queries.values()), desc="score: queries")
    else:
        embedder.embed([k for f in feats for k in keywords[f]], desc="score: keywords")

    def one(f: int, explain: int) -> float:
        h = held[f]
        if cfg.scorer == embedding.NAME:
            q = embedder.unit([queries[explain]])[0]
            return embedding.auc(q, h, vectors)
        return keyword_relevance.relevance(embedder.unit(keywords[explain]), vectors(h.pos))

    out = {}
    for i, f in enumerate(
        tqdm(feats, desc=f"score: {cfg.scorer}", unit="feature", disable=not cfg.progress)
    ):
        if i % _VECTOR_CHUNK == 0:  # the held-out rows of the next features, in one go
            chunk = [held[g] for g in feats[i : i + _VECTOR_CHUNK]]
            vectors.prepare(np.concatenate([np.r_[h.pos, h.neg] for h in chunk]))
        h = held[f]
        if len(h.pos) < cfg.min_pos or (n_neg and len(h.neg) == 0):
            reason = f"{len(h.pos)} activating and {len(h.neg)} other held-out texts"
            out[f] = FeatureScore(
                np.nan, np.nan, len(h.pos), len(h.neg), "too_few_examples", reason
            )
            continue
        shuffled = one(f, other[f]) if other[f] != f else np.nan
        out[f] = FeatureScore(one(f, f), shuffled, len(h.pos), len(h.neg), "ok", "")
    return out


# options that change no output (nor do the LLM client's and LLM scorers' options)
_IGNORED = ("overwrite", "run", "progress", "batch_size", *LLM_ONLY_OPTIONS)


def run(cfg: ScoreConfig) -> Path:
    """Write `scores/<key>.parquet` (+ summary and plot) for `cfg` (see the module docstring)."""
    if cfg.scorer in LLM_SCORERS:
        from saescope.scoring.llm import stage as llm_stage

        return llm_stage.run(cfg)
    return _run_embedding(cfg)


@provenance.locked("score")
def _run_embedding(cfg: ScoreConfig) -> Path:
    from saescope.embed import load_query_model

    rp = RunPaths(cfg.run)
    names_kind = cfg.names or default_names(cfg.scorer)
    key = score_key(cfg.scorer, cfg.names)
    out_path, cfg_path = rp.score(key), rp.score_config(key)
    names = read_names(cfg.run, names_kind)
    _, upstream = activation_source(rp, cfg.activations)
    same_activations(names, upstream)
    upstream |= provenance.upstream_ids({names_kind: names.path})
    record = provenance.Record.make(rp.score_record(key), "score", cfg, upstream, ignore=_IGNORED)
    if record.decide(cfg.overwrite, out_path) is provenance.Decision.SKIP:
        return out_path
    store = ActivationStore(rp.acts, verify=False)
    ex = open_examples(cfg.run, cfg.activations, *names.split)  # the names' naming/scoring split
    texts = row_texts(cfg.run, ex.n_rows)  # corpus texts, or token windows for LM runs
    ex.acts.check_features(sorted(names.phrases) + sorted(names.not_named))
    model_name = run_model_name(store, cfg.model)
    embedder = PhraseEmbedder(
        load_query_model(model_name, store.meta), cfg.batch_size, cfg.progress
    )
    vectors = _TextVectors(store, texts, model_name, embedder)
    scores = score_features(cfg, names.phrases, ex, vectors, embedder)
    source = names.method if names_kind == "keywords" else f"{names_kind}:{names.method}"
    for f, why in names.not_named.items():
        scores[f] = FeatureScore(np.nan, np.nan, 0, 0, "no_keywords", why)
    fs = sorted(scores)
    tbl = pa.table(
        {
            "feature": fs,
            "score": [scores[f].score for f in fs],
            "shuffled_score": [scores[f].shuffled_score for f in fs],
            "n_pos": [scores[f].n_pos for f in fs],
            "n_neg": [scores[f].n_neg for f in fs],
            "method": [cfg.scorer] * len(fs),
            "source": [source] * len(fs),
            "status": [scores[f].status for f in fs],
            "reason": [scores[f].reason for f in fs],
        },
        schema=SCHEMA,
    )
    record.start()
    with atomic_path(out_path) as tmp:
        pq.write_table(tbl, tmp)
    real = np.array([scores[f].score for f in fs], dtype=float)
    shuf = np.array([scores[f].shuffled_score for f in fs], dtype=float)
    # the names' own model re-uses the space the SAE re-rank picked phrases in: say so
    named_with = (provenance.read_record(names.record) or {}).get("config", {}).get("model")
    namer_model = run_model_name(store, named_with)
    summary: dict[str, Any] = {"scorer": cfg.scorer, "source": source, "model": model_name}
    summary["independent_model"] = names_kind != "keywords" or model_name != namer_model
    summary |= {"n_features": len(fs)} | summarize(real, shuf)
    write_json(rp.score_summary(key), summary)
    plot_scores(real, shuf, key, source, rp.score_plot(key))
    write_json(cfg_path, config_to_dict(cfg))
    record.finish()
    _print_summary(summary)
    return out_path


def _names_label(source: str) -> str:
    """ "contrastive keywords" or "default explanations", from a score table's source."""
    kind, _, method = source.partition(":")
    return f"{method} {kind}" if method else f"{source} keywords"


def _print_summary(s: dict) -> None:
    def fmt(x) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    print(
        f"{s['scorer']} ({_names_label(s['source'])}), {s['n_scored']} of {s['n_features']} "
        "features: "
        f"mean {fmt(s['mean'])} (shuffled {fmt(s['shuffled_mean'])}), "
        f"median {fmt(s['median'])} (shuffled {fmt(s['shuffled_median'])}); "
        f"scored with {s['model']}"
    )
    if not s["independent_model"]:
        print(
            "  (the model the names were made with; `--model all-mpnet-base-v2` scores them "
            "with a model the namer did not use)"
        )


def plot_scores(
    real: np.ndarray, shuffled: np.ndarray, scorer: str, source: str, path: Path
) -> None:
    """Histogram of real versus shuffled-control scores, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    both = np.r_[real, shuffled]
    both = both[~np.isnan(both)]
    bins: Any = (
        np.linspace(both.min(), both.max(), 31) if len(both) and both.min() < both.max() else 30
    )
    ax.hist(shuffled[~np.isnan(shuffled)], bins=bins, alpha=0.6, label="shuffled names (control)")
    ax.hist(real[~np.isnan(real)], bins=bins, alpha=0.6, label="the feature's own names")
    ax.set_xlabel(f"{scorer} score")
    ax.set_ylabel("features")
    ax.set_title(f"{scorer} scores of {_names_label(source)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
