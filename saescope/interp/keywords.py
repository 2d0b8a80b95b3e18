"""Keywords stage: name every alive feature with keywords, no LLM.

In: a run with `corpus.parquet`, `acts/`, and the latent cache (`latents/`, or
the SAE with `--activations sae`). Out: `interp/keywords.parquet` with one row per
feature: feature (int32), keywords (list<string>), scores (list<float32>),
method, n_texts (naming texts used), status ("ok" or why it has no name) and
reason; `interp/keywords.config.json` (options, version, SAE folder) and
`interp/keywords.provenance.json` (the provenance record: upstream sha256s).

Methods: `contrastive` (default; phrases that are more frequent in the
feature's texts than elsewhere, re-ranked by the SAE encoder, diversified) and
`thesis` (seed 000's KeyBERT-style procedure, batched). See docs/interp.md.

Only the NAMING half of the rows is read; the scorers use the other half. Which
rows those are (by document by default: `--split doc`) is decided by
`saescope.examples`, and the split kind and seed are saved in the config for them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from saescope import provenance
from saescope.config import changed_options, config_to_dict
from saescope.errors import SaescopeError
from saescope.examples import (
    ExampleOptions,
    Examples,
    open_examples,
    run_model_name,
    store_is_text_embedding,
    text_vectors,
)
from saescope.examples.activations import activation_source
from saescope.examples.tokens import row_texts
from saescope.interp.candidates import FeatureKeywords, PhraseEmbedder, failed
from saescope.interp.contrastive import ContrastiveOptions, contrastive_keywords
from saescope.interp.thesis import ThesisOptions, thesis_keywords
from saescope.io import atomic_path, read_frame, write_json
from saescope.options.keywords import METHODS, KeywordsConfig
from saescope.paths import RunPaths
from saescope.store import ActivationStore

SCHEMA = pa.schema(
    [
        ("feature", pa.int32()),
        ("keywords", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("method", pa.string()),
        ("n_texts", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)


# options that change no output
_IGNORED = ("overwrite", "run", "progress", "batch_size")


def table(results: dict[int, FeatureKeywords], method: str) -> pa.Table:
    fs = sorted(results)
    return pa.table(
        {
            "feature": [int(f) for f in fs],
            "keywords": [results[f].keywords for f in fs],
            "scores": [[float(s) for s in results[f].scores] for f in fs],
            "method": [method] * len(fs),
            "n_texts": [int(results[f].n_texts) for f in fs],
            "status": [results[f].status for f in fs],
            "reason": [results[f].reason for f in fs],
        },
        schema=SCHEMA,
    )


def name_features(
    cfg: KeywordsConfig,
    ex: Examples,
    texts: Sequence[str],
    store: ActivationStore,
    embedder: PhraseEmbedder,
    sae=None,
) -> dict[int, FeatureKeywords]:
    """Name the features of `cfg` (the stage without its files; used by bench/ too)."""
    if cfg.method not in METHODS:
        raise SaescopeError(f"unknown keywords method {cfg.method!r}; choose {', '.join(METHODS)}")
    features = ex.acts.check_features(cfg.features)
    counts = ex.acts.counts()
    dead = [f for f in features.tolist() if counts[f] == 0]
    n_top = cfg.n_texts if cfg.method == "thesis" else cfg.max_texts
    only_top = ExampleOptions(n_top=n_top, n_quantiles=0, n_random=0)
    # feature -> its top activating naming rows, highest activation first
    rows = {f: ex.of(f, "naming", only_top).top_rows for f in features.tolist() if counts[f]}
    if cfg.method == "thesis":
        opts = ThesisOptions(
            n_texts=cfg.n_texts,
            top_n=cfg.top_n,
            ngram_range=(1, cfg.ngram_max or 1),
            n_keywords=cfg.n_keywords or 3,
        )
        model_name = run_model_name(store, cfg.model)
        out = thesis_keywords(
            rows,
            texts,
            lambda r: text_vectors(store, texts, r, model_name, embedder),
            embedder,
            opts,
            cfg.progress,
        )
    else:
        copts = ContrastiveOptions(
            ngram_range=(1, cfg.ngram_max or 2),
            min_df=cfg.min_df,
            max_texts=cfg.max_texts,
            prior=cfg.prior,
            confidence=cfg.confidence,
            shortlist=cfg.shortlist,
            sae_weight=cfg.sae_weight,
            mmr_lambda=cfg.mmr_lambda,
            n_keywords=cfg.n_keywords or 5,
        )
        naming = ex.half_rows("naming")
        model_name = run_model_name(store, cfg.model)
        if sae is not None and not store_is_text_embedding(store, model_name):
            # the SAE reads the store's space; phrases embedded by another model (imported
            # vectors, an LM's residual stream, --model) would be read as if they were in it
            if changed_options(cfg, ("sae_weight",)) and cfg.sae_weight > 0:  # asked for
                print(
                    f"keywords: note: the store does not hold {model_name} sentence "
                    "embeddings, so phrases are ranked without the SAE (--sae-weight unused)",
                    file=sys.stderr,
                )
            sae = None
        out = contrastive_keywords(rows, naming, texts, embedder, sae, copts, cfg.progress)
    for f in dead:
        out[f] = failed("dead", "the feature never fires on this corpus", 0)
    return out


@provenance.locked("keywords")
def run(cfg: KeywordsConfig) -> Path:
    """Write `interp/keywords.parquet` for `cfg`; skip when it is already there."""
    from saescope.embed import load_query_model
    from saescope.sae import SAE

    rp = RunPaths(cfg.run)
    store = ActivationStore(rp.acts, verify=False)
    sae_dir, upstream = activation_source(rp, cfg.activations)
    record = provenance.Record.make(rp.keywords_record, "keywords", cfg, upstream, _IGNORED)
    if record.decide(cfg.overwrite, rp.keywords) is provenance.Decision.SKIP:
        return rp.keywords
    ex = open_examples(cfg.run, cfg.activations, cfg.split_seed, cfg.split)
    if ex.n_rows != store.count:
        raise SaescopeError(
            f"the activations ({ex.n_rows} rows) do not match the store ({store.count} rows); "
            "re-run `saescope latents`"
        )
    texts = row_texts(cfg.run, ex.n_rows)  # corpus texts, or token windows for LM runs
    sae = SAE.load(sae_dir)
    model = load_query_model(run_model_name(store, cfg.model), store.meta)
    embedder = PhraseEmbedder(model, cfg.batch_size, cfg.progress)
    results = name_features(cfg, ex, texts, store, embedder, sae)
    record.start()
    with atomic_path(rp.keywords) as tmp:
        pq.write_table(table(results, cfg.method), tmp)
    write_json(rp.keywords_config, config_to_dict(cfg) | {"sae_dir": str(sae_dir)})
    record.finish()
    _print_summary(read_frame(rp.keywords))
    return rp.keywords


def _print_summary(df: pd.DataFrame) -> None:
    ok = df[df["status"] == "ok"]
    print(f"named {len(ok)} of {len(df)} features ({len(df) - len(ok)} without a name)")
    for _, r in ok.head(5).iterrows():
        print(f"  feature {r['feature']}: {', '.join(r['keywords'])}")


def read_keywords(run: str | Path) -> pd.DataFrame:
    """`interp/keywords.parquet` of a run, or a clear error if there is none."""
    path = RunPaths(run).keywords
    if not path.exists():
        raise SaescopeError(f"no keywords at {path}; run `saescope keywords --run {run}` first")
    return read_frame(path)
