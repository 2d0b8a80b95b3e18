"""The thesis's KeyBERT-style naming procedure (seed 000), re-implemented and batched.

In: for each feature, the ids of its top activating NAMING texts (highest first),
the corpus texts, their unit text vectors, and a `PhraseEmbedder`. Out: per
feature a `FeatureKeywords` with up to `n_keywords` terms and their term scores.

The procedure, step by step (each step is a small pure function below):
1. per text, candidates = the text's unique n-grams (CountVectorizer analyzer,
   English stop words out); each candidate's score is cos(candidate, text);
   the `top_n` best are the text's keywords (KeyBERT's plain ranking);
2. `merge_similar`: within a text, a keyword whose embedding has cosine >=
   `merge_threshold` (0.9) to a better-scoring one is dropped;
3. `candidate_pairs` / `keep_pairs`: pairs "a b" of the text's top `pair_top` (5)
   keywords, kept as extra terms when cos(pair, text) >= `pair_threshold` (0.4);
4. `term_scores`: per term, S = summed score over the N texts it appears in,
   term score = (S / N) * ln(1 + N);
5. `cluster_top`: terms in descending score; one joins an earlier term's cluster
   when their cosine >= `cluster_threshold` (0.8); the best `n_keywords` (3)
   cluster heads are the name.

Batching: the candidates of every text of every feature are collected first,
each distinct phrase (candidate, pair, term) is embedded once, and per-text
work is shared by all features whose top texts include that text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from saescope.interp.candidates import (
    FeatureKeywords,
    PhraseEmbedder,
    failed,
    make_analyzer,
    text_candidates,
)

Scored = list[tuple[str, float]]


@dataclass(frozen=True)
class ThesisOptions:
    n_texts: int = 10
    top_n: int = 5
    ngram_range: tuple[int, int] = (1, 1)
    merge_threshold: float = 0.9
    pair_top: int = 5
    pair_threshold: float = 0.4
    cluster_threshold: float = 0.8
    n_keywords: int = 3


def keybert_rank(
    cands: Sequence[str], cand_unit: np.ndarray, text_unit: np.ndarray, top_n: int
) -> Scored:
    """The `top_n` candidates by cosine to the text; cand_unit (n, d), text_unit (d,)."""
    if not len(cands):
        return []
    sims = cand_unit @ text_unit  # (n,)
    order = np.argsort(-sims, kind="stable")[:top_n]
    return [(cands[i], float(sims[i])) for i in order]


def merge_similar(keywords: Scored, unit: np.ndarray, threshold: float = 0.9) -> Scored:
    """Drop each keyword whose cosine to a better-scoring kept one is >= threshold.

    keywords are in descending score; unit (n, d) their unit vectors.
    """
    kept: list[int] = []
    for i in range(len(keywords)):
        if all(float(unit[i] @ unit[j]) < threshold for j in kept):
            kept.append(i)
    return [keywords[i] for i in kept]


def candidate_pairs(keywords: Scored, top: int = 5) -> list[str]:
    """Phrases "a b" for every pair of the `top` best keywords (better one first)."""
    words = [k for k, _ in keywords[:top]]
    return [f"{a} {b}" for i, a in enumerate(words) for b in words[i + 1 :]]


def keep_pairs(
    pairs: Sequence[str], pair_unit: np.ndarray, text_unit: np.ndarray, threshold: float = 0.4
) -> Scored:
    """Pairs whose cosine to the text is >= threshold, with that cosine as score."""
    if not len(pairs):
        return []
    sims = pair_unit @ text_unit
    return [(p, float(s)) for p, s in zip(pairs, sims, strict=True) if s >= threshold]


def term_scores(per_text: Sequence[Scored]) -> Scored:
    """(S / N) * ln(1 + N) per term over the texts it appears in, best first.

    S is the summed score of the term over those texts, N how many texts have it
    (a term listed twice in one text counts once, with its best score).
    """
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for terms in per_text:
        best: dict[str, float] = {}
        for t, s in terms:
            best[t] = max(s, best.get(t, -math.inf))
        for t, s in best.items():
            total[t] = total.get(t, 0.0) + s
            count[t] = count.get(t, 0) + 1
    out = [(t, (total[t] / count[t]) * math.log1p(count[t])) for t in total]
    return sorted(out, key=lambda ts: (-ts[1], ts[0]))


def cluster_top(terms: Scored, unit: np.ndarray, threshold: float = 0.8, top: int = 3) -> Scored:
    """Heads of greedy clusters (cosine >= threshold joins a better term), the best `top`.

    terms in descending score; unit (n, d) their unit vectors.
    """
    heads: list[int] = []
    for i in range(len(terms)):
        if all(float(unit[i] @ unit[j]) < threshold for j in heads):
            heads.append(i)
            if len(heads) == top:
                break
    return [terms[i] for i in heads]


def text_terms(
    cands: Sequence[str],
    embed_unit: Callable[[Sequence[str]], np.ndarray],
    text_unit: np.ndarray,
    opts: ThesisOptions,
) -> Scored:
    """Steps 1-3 for one text: its keywords plus the kept keyword pairs."""
    if not len(cands):
        return []
    kws = keybert_rank(cands, embed_unit(cands), text_unit, opts.top_n)
    kws = merge_similar(kws, embed_unit([k for k, _ in kws]), opts.merge_threshold)
    pairs = candidate_pairs(kws, opts.pair_top)
    kept = keep_pairs(pairs, embed_unit(pairs), text_unit, opts.pair_threshold) if pairs else []
    return kws + kept


def feature_name(
    per_text: Sequence[Scored],
    embed_unit: Callable[[Sequence[str]], np.ndarray],
    opts: ThesisOptions,
) -> Scored:
    """Steps 4-5 for one feature: term scores, then the best cluster heads."""
    terms = term_scores(per_text)
    if not terms:
        return []
    return cluster_top(
        terms, embed_unit([t for t, _ in terms]), opts.cluster_threshold, opts.n_keywords
    )


def thesis_keywords(
    feature_rows: dict[int, np.ndarray],
    texts: Sequence[str],
    text_unit: Callable[[np.ndarray], np.ndarray],
    embedder: PhraseEmbedder,
    opts: ThesisOptions = ThesisOptions(),
    progress: bool = True,
) -> dict[int, FeatureKeywords]:
    """Name every feature of `feature_rows` (feature -> naming row ids, best first)."""
    top = {f: np.asarray(r[: opts.n_texts], dtype=np.int64) for f, r in feature_rows.items()}
    rows = np.unique(np.concatenate([r for r in top.values()] or [np.zeros(0, np.int64)]))
    analyzer = make_analyzer(opts.ngram_range, "english", token_pattern=r"(?u)\b\w\w+\b")
    cands = dict(
        zip(rows.tolist(), text_candidates([texts[int(r)] for r in rows], analyzer), strict=True)
    )
    tvec = dict(zip(rows.tolist(), text_unit(rows), strict=True)) if len(rows) else {}
    embedder.embed((c for cs in cands.values() for c in cs), desc="thesis: candidates")
    # steps 1-2 for every text, then all pairs embedded in one batch, then step 3
    kws: dict[int, Scored] = {}
    for r in tqdm(rows.tolist(), desc="thesis: keywords", unit="text", disable=not progress):
        if cands[r]:
            ranked = keybert_rank(cands[r], embedder.unit(cands[r]), tvec[r], opts.top_n)
            kws[r] = merge_similar(
                ranked, embedder.unit([k for k, _ in ranked]), opts.merge_threshold
            )
        else:
            kws[r] = []
    pairs = {r: candidate_pairs(k, opts.pair_top) for r, k in kws.items()}
    embedder.embed((p for ps in pairs.values() for p in ps), desc="thesis: pairs")
    terms = {
        r: kws[r]
        + (
            keep_pairs(pairs[r], embedder.unit(pairs[r]), tvec[r], opts.pair_threshold)
            if pairs[r]
            else []
        )
        for r in kws
    }
    out: dict[int, FeatureKeywords] = {}
    for f, fr in tqdm(top.items(), desc="thesis: features", unit="feature", disable=not progress):
        if len(fr) == 0:
            out[f] = failed("too_few_texts", "no activating texts in the naming split", 0)
            continue
        named = feature_name([terms[int(r)] for r in fr], embedder.unit, opts)
        if not named:
            out[f] = failed(
                "no_candidates", "its texts have no words left after stop words", len(fr)
            )
            continue
        out[f] = FeatureKeywords([t for t, _ in named], [s for _, s in named], len(fr), "ok", "")
    return out
