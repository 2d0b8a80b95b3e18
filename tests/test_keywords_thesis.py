"""The thesis procedure, one step at a time, on vectors with known cosines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saescope.interp.candidates import make_analyzer, text_candidates
from saescope.interp.thesis import (
    ThesisOptions,
    candidate_pairs,
    cluster_top,
    feature_name,
    keep_pairs,
    keybert_rank,
    merge_similar,
    term_scores,
)


def unit_at(cos: float) -> np.ndarray:
    """A unit vector in 2-d whose cosine to (1, 0) is `cos`."""
    return np.array([cos, math.sqrt(1 - cos * cos)])


def test_candidates_are_count_vectorizer_ngrams_without_stop_words():
    an = make_analyzer((1, 2), "english")
    (c,) = text_candidates(["The striker scored the late goal."], an)
    assert c == sorted(
        {"striker", "scored", "late", "goal", "striker scored", "scored late", "late goal"}
    )


def test_keybert_rank_orders_by_cosine_to_text():
    cands = ["a", "b", "c"]
    vecs = np.stack([unit_at(0.2), unit_at(0.9), unit_at(0.5)])
    assert keybert_rank(cands, vecs, np.array([1.0, 0.0]), top_n=2) == [
        ("b", pytest.approx(0.9)),
        ("c", pytest.approx(0.5)),
    ]


def test_merge_drops_keywords_at_cosine_0_9_to_a_better_one():
    kws = [("stock", 0.8), ("stocks", 0.7), ("bond", 0.6)]
    # stocks: cosine 0.9 to stock (merged); bond: cosine 0.89 to stock (kept)
    vecs = np.stack([unit_at(1.0), unit_at(0.9), unit_at(0.89)])
    vecs[2, 1] *= -1  # bond sits on the other side, so its cosine to stocks is small
    assert merge_similar(kws, vecs, 0.9) == [("stock", 0.8), ("bond", 0.6)]


def test_pairs_from_top_five_kept_when_cosine_to_text_is_at_least_0_4():
    kws = [(w, 1.0 - i / 10) for i, w in enumerate("abcdef")]
    pairs = candidate_pairs(kws, top=5)
    assert len(pairs) == 10 and pairs[0] == "a b" and all("f" not in p for p in pairs)
    vecs = np.stack([unit_at(0.4), unit_at(0.39)] + [unit_at(0.1)] * 8)
    kept = keep_pairs(pairs, vecs, np.array([1.0, 0.0]), 0.4)
    assert [p for p, _ in kept] == ["a b"] and kept[0][1] == pytest.approx(0.4)


def test_term_score_is_mean_score_times_log_one_plus_n():
    per_text = [[("goal", 0.6), ("ball", 0.5)], [("goal", 0.4)], [("goal", 0.5), ("goal", 0.2)]]
    got = dict(term_scores(per_text))
    assert got["goal"] == pytest.approx((0.6 + 0.4 + 0.5) / 3 * math.log(4))
    assert got["ball"] == pytest.approx(0.5 * math.log(2))
    assert [t for t, _ in term_scores(per_text)] == ["goal", "ball"]


def test_cluster_at_0_8_keeps_the_best_three_heads():
    terms = [("t0", 5.0), ("t1", 4.0), ("t2", 3.0), ("t3", 2.0), ("t4", 1.0)]
    # t1 is within 0.8 of t0 (joins its cluster); t2, t3, t4 are far from everyone
    angles = [0.0, math.acos(0.8), 1.6, 3.2, 4.8]
    vecs = np.stack([[math.cos(a), math.sin(a)] for a in angles])
    assert [t for t, _ in cluster_top(terms, vecs, 0.8, top=3)] == ["t0", "t2", "t3"]


def test_feature_name_combines_term_scores_and_clusters():
    vec = {"goal": unit_at(1.0), "goals": unit_at(0.95), "ball": unit_at(0.0)}

    def embed(ws):
        return np.stack([vec[w] for w in ws])

    per_text = [[("goal", 0.5), ("ball", 0.3)], [("goals", 0.9)], [("goal", 0.5)]]
    named = feature_name(per_text, embed, ThesisOptions(cluster_threshold=0.8, n_keywords=3))
    # goals: 0.9 * ln 2 = 0.62 beats goal: 0.5 * ln 3 = 0.55, and absorbs it (cosine 0.95)
    assert [t for t, _ in named] == ["goals", "ball"]
