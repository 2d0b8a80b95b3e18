"""Benchmark: naming features with KeyBERT per text (as seed 000 does) versus saescope.

On one run and the same sample of alive features, times
  1. the thesis procedure with the KeyBERT package called once per text
     (`KeyBERT(model).extract_keywords(text, ...)`, then the merge / pair / term-score /
     cluster steps, embedding what each step needs per text, as a per-text loop does),
  2. saescope's batched thesis implementation (every distinct phrase embedded once),
  3. saescope's contrastive method,
each from a cold phrase cache, and prints features/s, the speed ratios and the
keyword overlap between 1 and 2. Then scores the thesis and contrastive names of
those features with the embedding scorer (ROC AUC on held-out texts) next to
their shuffled controls.

    python bench/keywords.py --run runs/kwbench [--features 300] [--keybert-features 300]

Needs a run with corpus, acts and sae/ (latents/ is used when present).
Writes bench/out/keywords.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from saescope.corpus import read_corpus
from saescope.embed import load_sentence_model
from saescope.examples import ExampleOptions, open_examples, run_model_name
from saescope.interp.candidates import PhraseEmbedder, unit_rows
from saescope.interp.keywords import KeywordsConfig, name_features
from saescope.interp.thesis import (
    ThesisOptions,
    candidate_pairs,
    feature_name,
    keep_pairs,
    merge_similar,
)
from saescope.latents import LatentCache
from saescope.paths import MANIFEST, RunPaths
from saescope.sae import SAE
from saescope.scoring.base import summarize
from saescope.scoring.stage import ScoreConfig, _TextVectors, score_features
from saescope.store import ActivationStore


def keybert_thesis(kb, model, feature_rows, texts, opts: ThesisOptions) -> dict[int, list[str]]:
    """The thesis with KeyBERT called per text and per-step encoding, no shared cache."""

    def enc(phrases):
        return unit_rows(model.encode(list(phrases), show_progress_bar=False))

    out = {}
    for f, rows in feature_rows.items():
        per_text = []
        for r in rows[: opts.n_texts]:
            text = texts[int(r)]
            kws = kb.extract_keywords(
                text, keyphrase_ngram_range=opts.ngram_range, stop_words="english", top_n=opts.top_n
            )
            if not kws:
                per_text.append([])
                continue
            kws = merge_similar(
                [(k, float(s)) for k, s in kws], enc([k for k, _ in kws]), opts.merge_threshold
            )
            pairs = candidate_pairs(kws, opts.pair_top)
            kept = (
                keep_pairs(pairs, enc(pairs), enc([text])[0], opts.pair_threshold) if pairs else []
            )
            per_text.append(kws + kept)
        out[f] = [t for t, _ in feature_name(per_text, enc, opts)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", required=True)
    ap.add_argument("--features", type=int, default=300, help="alive features sampled (seeded)")
    ap.add_argument(
        "--keybert-features", type=int, default=None, help="of those, run KeyBERT on the first N"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/out/keywords.json")
    ns = ap.parse_args()

    rp = RunPaths(ns.run)
    source = "latents" if (rp.latents / MANIFEST).exists() else "sae"
    kcfg = KeywordsConfig()
    ex = open_examples(ns.run, source, kcfg.split_seed, kcfg.split)
    acts = ex.acts
    store = ActivationStore(rp.acts, verify=False)
    texts = read_corpus(ns.run)["text"].tolist()
    model_name = run_model_name(store)
    model = load_sentence_model(model_name)
    # the SAE whose codes the features are: the cache's own (recorded in it), else sae/
    sae = SAE.load(LatentCache(ns.run).sae_dir() if source == "latents" else rp.sae)
    alive = acts.alive()
    rng = np.random.default_rng(ns.seed)
    feats = np.sort(rng.choice(alive, size=min(ns.features, len(alive)), replace=False))
    print(
        f"run {ns.run}: {acts.n_rows} rows, d_sae={acts.d_sae}, {len(alive)} alive; {len(feats)} features sampled"
    )
    result: dict = {"run": ns.run, "n_features": len(feats), "activations": source}

    names, times = {}, {}
    for method in ("thesis", "contrastive"):
        cfg = KeywordsConfig(run=ns.run, method=method, features=feats.tolist(), progress=False)
        emb = PhraseEmbedder(model, progress=False)
        t0 = time.perf_counter()
        out = name_features(cfg, ex, texts, store, emb, sae)
        times[method] = time.perf_counter() - t0
        names[method] = out
        print(
            f"saescope {method:11s}: {times[method]:7.1f}s  {len(feats) / times[method]:7.2f} features/s  ({emb.n_encoded} phrases embedded)"
        )

    from keybert import KeyBERT

    n_kb = ns.keybert_features or len(feats)
    kb_feats = feats[:n_kb]
    top = ExampleOptions(n_top=ThesisOptions().n_texts, n_quantiles=0, n_random=0)
    rows = {f: ex.of(f, "naming", top).top_rows for f in kb_feats.tolist()}
    t0 = time.perf_counter()
    kb_names = keybert_thesis(KeyBERT(model=model), model, rows, texts, ThesisOptions())
    times["keybert"] = time.perf_counter() - t0
    kb_rate = n_kb / times["keybert"]
    print(
        f"KeyBERT per text     : {times['keybert']:7.1f}s  {kb_rate:7.2f} features/s  ({n_kb} features)"
    )
    rates = {m: len(feats) / times[m] for m in ("thesis", "contrastive")} | {"keybert": kb_rate}
    print(
        f"speed-up over KeyBERT per text: thesis x{rates['thesis'] / kb_rate:.1f}, contrastive x{rates['contrastive'] / kb_rate:.1f}"
    )
    if n_kb < len(feats):  # the same smaller feature set for saescope thesis too
        cfg = KeywordsConfig(
            run=ns.run, method="thesis", features=kb_feats.tolist(), progress=False
        )
        t0 = time.perf_counter()
        name_features(cfg, ex, texts, store, PhraseEmbedder(model, progress=False), sae)
        times["thesis_same_subset"] = time.perf_counter() - t0
        rates["thesis_same_subset"] = n_kb / times["thesis_same_subset"]
        print(
            f"saescope thesis on the same {n_kb} features: {times['thesis_same_subset']:.1f}s, "
            f"{rates['thesis_same_subset']:.2f} features/s, "
            f"x{rates['thesis_same_subset'] / kb_rate:.1f} KeyBERT per text"
        )

    jacc, same = [], []
    for f in kb_feats.tolist():
        a, b = set(kb_names[f]), set(names["thesis"][f].keywords)
        jacc.append(len(a & b) / len(a | b) if a | b else 1.0)
        same.append(a == b)
    print(
        f"keyword overlap KeyBERT-per-text vs saescope thesis: mean Jaccard {np.mean(jacc):.3f}, identical names {np.mean(same):.1%}"
    )
    result |= {
        "seconds": times,
        "features_per_s": rates,
        "overlap_jaccard": float(np.mean(jacc)),
        "identical": float(np.mean(same)),
    }

    # embedding-scorer AUC of both methods' names on held-out texts, with shuffled controls
    scfg = ScoreConfig(run=ns.run, progress=False)
    emb = PhraseEmbedder(model, progress=False)
    vectors = _TextVectors(store, texts, model_name, emb)
    result["auc"] = {}
    for method, out in names.items():
        kw = {f: r.keywords for f, r in out.items() if r.status == "ok"}
        sc = score_features(scfg, kw, ex, vectors, emb)
        real = np.array([s.score for s in sc.values()])
        shuf = np.array([s.shuffled_score for s in sc.values()])
        s = summarize(real, shuf)
        result["auc"][method] = s
        print(
            f"embedding AUC, {method:11s}: mean {s['mean']:.3f} (shuffled {s['shuffled_mean']:.3f}), "
            f"median {s['median']:.3f} (shuffled {s['shuffled_median']:.3f}), {s['n_scored']} features"
        )
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
