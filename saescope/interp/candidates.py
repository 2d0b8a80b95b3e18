"""Candidate phrases and a shared phrase-embedding cache.

In: texts. Out: per text, the unique candidate n-grams (lower-cased, English stop
words removed, the same tokens scikit-learn's `CountVectorizer` would give), and
`PhraseEmbedder`, which embeds every distinct phrase ONCE with the run's sentence
model, in length-sorted batches, and hands back rows of one growing matrix.

Both keyword methods and the scorers use this module, so a phrase seen by many
features (or by naming and by scoring) is never embedded twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer

# Words start with a letter: pure numbers ("2019", "10") make poor names.
WORD_PATTERN = r"(?u)\b[^\W\d_][\w'-]*\w\b"
_PHRASE_BREAK = re.compile(r"[.!?;:,()\[\]\"“”]+(?:\s|$)|[;:()\[\]\"“”]")


def make_analyzer(
    ngram_range: tuple[int, int] = (1, 1),
    stop_words: str | None = "english",
    token_pattern: str = WORD_PATTERN,
) -> Callable[[str], list[str]]:
    """The n-gram analyzer of a `CountVectorizer` with these options."""
    cv = CountVectorizer(
        ngram_range=tuple(ngram_range), stop_words=stop_words, token_pattern=token_pattern
    )
    return cv.build_analyzer()


def phrase_analyzer(ngram_range: tuple[int, int] = (1, 2)) -> Callable[[str], list[str]]:
    """n-grams that occur verbatim in the text and neither start nor end with a stop word.

    Unlike `CountVectorizer(stop_words=...)`, which drops stop words first and so
    makes "treated fever" out of "treated a fever", every phrase here is a real
    span of the text ("bank of england" is kept, "the bank" is not). The first
    and last word start with a letter and have 2+ characters.
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    tokens = re.compile(r"(?u)\b\w[\w'-]*\b")
    edge = re.compile(WORD_PATTERN)
    lo, hi = ngram_range

    def analyze(text: str) -> list[str]:
        out = []
        for part in _PHRASE_BREAK.split(text.lower()):  # no phrase spans punctuation
            toks = tokens.findall(part)
            ok = [t not in ENGLISH_STOP_WORDS and edge.fullmatch(t) is not None for t in toks]
            for n in range(lo, hi + 1):
                for i in range(len(toks) - n + 1):
                    if ok[i] and ok[i + n - 1]:
                        out.append(" ".join(toks[i : i + n]))
        return out

    return analyze


def text_candidates(texts: Sequence[str], analyzer: Callable[[str], list[str]]) -> list[list[str]]:
    """Unique candidate n-grams of each text, sorted (what `CountVectorizer.fit([text])` keeps)."""
    return [sorted(set(analyzer(t))) for t in texts]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class PhraseEmbedder:
    """Embed phrases with a sentence-transformers model, each distinct phrase once.

    `embed(phrases)` encodes the phrases not seen yet (batched, with a progress
    bar); `raw(phrases)` / `unit(phrases)` return their (n, d) vectors as the model
    gives them / scaled to unit norm. `n_encoded` counts model calls' inputs.
    """

    def __init__(self, model, batch_size: int = 256, progress: bool = True) -> None:
        self.model = model
        self.batch_size = batch_size
        self.progress = progress
        self.index: dict[str, int] = {}
        self._blocks: list[np.ndarray] = []
        self._raw: np.ndarray | None = None
        self._unit: np.ndarray | None = None
        self.n_encoded = 0

    def embed(self, phrases: Iterable[str], desc: str = "embed phrases") -> None:
        from tqdm.auto import tqdm

        from saescope.embed import encode_texts

        missing = list(dict.fromkeys(p for p in phrases if p not in self.index))
        if not missing:
            return
        bar = tqdm(total=len(missing), desc=desc, unit="phrase", disable=not self.progress)
        vecs = encode_texts(self.model, missing, self.batch_size, normalize=False, progress=bar)
        bar.close()
        start = len(self.index)
        for i, p in enumerate(missing):
            self.index[p] = start + i
        self._blocks.append(vecs.numpy().astype(np.float32))
        self._raw = self._unit = None
        self.n_encoded += len(missing)

    def _matrices(self) -> tuple[np.ndarray, np.ndarray]:
        if self._raw is None:
            self._raw = np.concatenate(self._blocks) if self._blocks else np.zeros((0, 1), "f4")
            self._blocks = [self._raw]
            self._unit = unit_rows(self._raw)
        assert self._unit is not None
        return self._raw, self._unit

    def ids(self, phrases: Sequence[str]) -> np.ndarray:
        self.embed(phrases)
        return np.fromiter((self.index[p] for p in phrases), dtype=np.int64, count=len(phrases))

    def raw(self, phrases: Sequence[str]) -> np.ndarray:
        """(len(phrases), d) vectors as the model outputs them."""
        ids = self.ids(phrases)
        return self._matrices()[0][ids]

    def unit(self, phrases: Sequence[str]) -> np.ndarray:
        """(len(phrases), d) unit-norm vectors."""
        ids = self.ids(phrases)
        return self._matrices()[1][ids]


class FeatureKeywords(NamedTuple):
    """The name of one feature, or why it has none (status != "ok", keywords empty)."""

    keywords: list[str]
    scores: list[float]
    n_texts: int
    status: str  # ok | too_few_texts | no_candidates
    reason: str


def failed(status: str, reason: str, n_texts: int) -> FeatureKeywords:
    return FeatureKeywords([], [], n_texts, status, reason)
