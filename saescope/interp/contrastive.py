"""saescope's own keyword method: contrast, then ask the SAE, then diversify.

In: for each feature, its activating NAMING rows (best first), the ids of all
naming rows, the corpus texts, a `PhraseEmbedder` and (optionally) the SAE.
Out: per feature a `FeatureKeywords` with up to `n_keywords` phrases.

1. Candidates: 1-2-grams that occur verbatim and neither start nor end with an
   English stop word (`phrase_analyzer`; words start with a letter), present in
   at least `min_df` naming texts; one binary text x phrase matrix
   (CountVectorizer) for the whole naming half.
2. Contrast: per phrase, the log-odds ratio of appearing in the feature's
   activating texts versus every other naming text (the background), with an
   informative Dirichlet prior of strength `prior` centred on the phrase's corpus
   rate (Monroe et al. 2008) and a pseudo-count floor, minus `confidence` standard
   errors (`log_odds_lower`). The `shortlist` phrases with the highest positive
   bound go on.
3. SAE re-rank: each shortlisted phrase is embedded (once for all features) and
   pushed through the SAE encoder; the feature's pre-activation on the phrase
   says how much the phrase alone looks like the feature in embedding space.
   relevance = (1 - sae_weight) * minmax(z) + sae_weight * minmax(pre-activation).
4. MMR: pick phrases by mmr_lambda * relevance - (1 - mmr_lambda) * (max cosine
   to a phrase already picked), so near-synonyms do not fill the name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.feature_extraction.text import CountVectorizer
from tqdm.auto import tqdm

from saescope.interp.candidates import FeatureKeywords, PhraseEmbedder, failed, phrase_analyzer


@dataclass(frozen=True)
class ContrastiveOptions:
    ngram_range: tuple[int, int] = (1, 2)
    min_df: int = 2
    max_df: float = 0.5
    max_texts: int = 200
    prior: float = 10.0
    floor: float = 0.5
    confidence: float = 2.0
    shortlist: int = 30
    sae_weight: float = 0.7
    mmr_lambda: float = 0.7
    n_keywords: int = 5


def log_odds_lower(
    y_a: np.ndarray,
    n_a: int,
    y_all: np.ndarray,
    n_all: int,
    prior: float,
    floor: float = 0.5,
    confidence: float = 2.0,
) -> np.ndarray:
    """Lower confidence bound of a phrase's log-odds ratio of text rate in A versus the rest.

    y_a, y_all: texts containing each phrase in A and overall; n_a, n_all: text counts.
    The rates are smoothed by a Dirichlet prior of strength `prior` centred on the
    phrase's corpus rate (Monroe et al. 2008), and every cell holds at least `floor`
    pseudo-texts: a phrase absent from the background would otherwise get a
    pseudo-count near prior * y_all / n_all there, whose 1/count variance buries the
    phrases that only the feature's texts contain, which name it best. Ranking by
    delta - confidence * se rather than by the z-score delta / se keeps the size
    of the contrast: a z-score prefers a weak contrast seen often (a phrase in 3 of
    20 feature texts and 10 of 53,000 others) to a strong one (6 of 20 and no other).
    """
    p = np.clip(y_all / max(n_all, 1), 1e-9, 1 - 1e-9)
    y_b, n_b = y_all - y_a, n_all - n_a
    a_in = np.maximum(y_a + prior * p, floor)
    a_out = np.maximum((n_a - y_a) + prior * (1 - p), floor)
    b_in = np.maximum(y_b + prior * p, floor)
    b_out = np.maximum((n_b - y_b) + prior * (1 - p), floor)
    delta = np.log(a_in / a_out) - np.log(b_in / b_out)
    se = np.sqrt(1 / a_in + 1 / a_out + 1 / b_in + 1 / b_out)
    return delta - confidence * se


def minmax(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min()) if len(x) else 0.0
    return np.ones_like(x) if span <= 1e-12 else (x - x.min()) / span


def mmr(relevance: np.ndarray, unit: np.ndarray, k: int, lam: float) -> list[int]:
    """Indices picked by maximal marginal relevance; unit (n, d) unit vectors."""
    picked: list[int] = []
    if not len(relevance):
        return picked
    sims = unit @ unit.T  # (n, n)
    best_sim = np.full(len(relevance), -np.inf)
    while len(picked) < min(k, len(relevance)):
        score = relevance.copy() if not picked else lam * relevance - (1 - lam) * best_sim
        score[picked] = -np.inf
        i = int(np.argmax(score))
        picked.append(i)
        best_sim = np.maximum(best_sim, sims[i]) if len(picked) > 1 else sims[i].copy()
    return picked


def sae_pre_acts(sae, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centred phrase inputs (n, d_in), W_enc (d_in, d_sae), b_enc) for per-feature dots."""
    with torch.inference_mode():
        x = torch.from_numpy(raw).to(sae.W_enc.dtype)
        xs, _, _ = sae._standardize(x)
        centred = (xs - sae.b_dec).float().numpy()
        return centred, sae.W_enc.float().numpy(), sae.b_enc.float().numpy()


def contrastive_keywords(
    feature_rows: dict[int, np.ndarray],
    naming_rows: np.ndarray,
    texts: Sequence[str],
    embedder: PhraseEmbedder,
    sae=None,
    opts: ContrastiveOptions = ContrastiveOptions(),
    progress: bool = True,
) -> dict[int, FeatureKeywords]:
    """Name every feature of `feature_rows` (feature -> naming row ids, best first)."""
    naming_rows = np.asarray(naming_rows, dtype=np.int64)
    vec = CountVectorizer(
        analyzer=phrase_analyzer((opts.ngram_range[0], opts.ngram_range[1])),
        min_df=opts.min_df,
        max_df=opts.max_df if len(naming_rows) * opts.max_df >= opts.min_df else 1.0,
        binary=True,
        dtype=np.float32,
    )
    try:
        X = vec.fit_transform([texts[int(r)] for r in naming_rows]).tocsr()  # (n_naming, V)
    except ValueError:  # empty vocabulary
        n = {f: len(r[: opts.max_texts]) for f, r in feature_rows.items()}
        return {
            f: failed("no_candidates", "no phrase is frequent enough in the naming texts", n[f])
            for f in feature_rows
        }
    vocab = vec.get_feature_names_out()
    y_all = np.asarray(X.sum(axis=0)).ravel()  # (V,)
    n_all = X.shape[0]
    where = np.full(int(naming_rows.max()) + 1 if len(naming_rows) else 1, -1, dtype=np.int64)
    where[naming_rows] = np.arange(len(naming_rows))

    shortlists: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    out: dict[int, FeatureKeywords] = {}
    for f, rows in tqdm(
        feature_rows.items(), desc="contrastive: contrast", unit="feature", disable=not progress
    ):
        rows = np.asarray(rows[: opts.max_texts], dtype=np.int64)
        pos = where[rows[rows < len(where)]]
        pos = pos[pos >= 0]
        if len(pos) == 0:
            out[f] = failed("too_few_texts", "no activating texts in the naming split", 0)
            continue
        y_a = np.asarray(X[pos].sum(axis=0)).ravel()
        need = 2 if len(pos) >= 4 else 1
        cand = np.nonzero(y_a >= need)[0]
        z = log_odds_lower(
            y_a[cand], len(pos), y_all[cand], n_all, opts.prior, opts.floor, opts.confidence
        )
        keep = z > 0
        cand, z = cand[keep], z[keep]
        if not len(cand):
            out[f] = failed(
                "no_candidates", "no phrase is more frequent in its texts than elsewhere", len(pos)
            )
            continue
        order = np.argsort(-z, kind="stable")[: opts.shortlist]
        shortlists[f] = (cand[order], z[order])

    phrases = sorted({vocab[i] for ids, _ in shortlists.values() for i in ids})
    embedder.embed(phrases, desc="contrastive: phrases")
    use_sae = (
        sae is not None
        and opts.sae_weight > 0
        and embedder.raw(phrases[:1]).shape[1] == sae.cfg.d_in
    )
    if use_sae and phrases:
        centred, W_enc, b_enc = sae_pre_acts(sae, embedder.raw(phrases))
        row_of = {p: i for i, p in enumerate(phrases)}
    for f, (ids, z) in tqdm(
        shortlists.items(), desc="contrastive: rank", unit="feature", disable=not progress
    ):
        words = [str(vocab[i]) for i in ids]
        rel = minmax(z)
        if use_sae:
            h = centred[[row_of[w] for w in words]] @ W_enc[:, f] + b_enc[f]  # (shortlist,)
            rel = (1 - opts.sae_weight) * rel + opts.sae_weight * minmax(h)
        picked = mmr(rel, embedder.unit(words), opts.n_keywords, opts.mmr_lambda)
        n_texts = int(min(len(feature_rows[f]), opts.max_texts))
        out[f] = FeatureKeywords(
            [words[i] for i in picked], [float(rel[i]) for i in picked], n_texts, "ok", ""
        )
    return {f: out[f] for f in feature_rows}
