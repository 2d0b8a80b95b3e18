"""What the report and `saescope inspect` show about features, read from the run directory.

In: `latents/features.parquet`, `corpus.parquet` (or, for token runs, the token
contexts under `acts/`), and when present the later stages' `interp/keywords.parquet`,
`interp/explanations.jsonl` and `scores/<scorer>.parquet`. Out: `Annotations`
(keywords, explanations and scores by feature), row texts (`RowTexts`) and the
logit lens of token runs (`logit_lens`). Missing optional files simply give empty
annotations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from saescope import provenance
from saescope.corpus import corpus_column
from saescope.errors import SaescopeError
from saescope.examples.tokens import TokenRows, store_rows_kind
from saescope.families.tables import stale_note
from saescope.io import read_frame, read_json
from saescope.paths import RunPaths, SAEPaths


@dataclass(frozen=True)
class Keywords:
    words: list[str]
    scores: list[float]
    method: str


@dataclass(frozen=True)
class Explanation:
    text: str
    method: str
    model: str


@dataclass(frozen=True)
class Annotations:
    keywords: dict[int, Keywords] = field(default_factory=dict)
    explanations: dict[int, Explanation] = field(default_factory=dict)
    # scorer -> feature -> {"score": x, "shuffled_score": y}
    scores: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    # files left out because they describe other activations or other names than these
    # (the families made from other names too: `families.tables.stale_note`)
    stale: list[str] = field(default_factory=list)


def _made_from_this_cache(rp: RunPaths, record: Path) -> bool:
    """True when names (keywords or explanations; `record` is their provenance record)
    were made from the SAE and store of the current latent cache."""
    from saescope.latents import LatentCache

    named_from = provenance.saved_upstream(record)
    cache = LatentCache(rp.root)
    acts = provenance.artifact_id(rp.acts_manifest)
    return named_from.get("sae") == cache.sae_sha256 and named_from.get("acts") == acts


def _scored_these_names(rp: RunPaths, key: str, current: dict[str, bool]) -> bool:
    """True when scores/<key> scored the names file (keywords or explanations) that is
    there now, and those names describe the current latent cache (`current`)."""
    upstream = provenance.saved_upstream(rp.score_record(key))
    files = {"keywords": rp.keywords, "explanations": rp.explanations}
    for kind, path in files.items():
        if kind in upstream:
            return (
                current[kind] and path.exists() and upstream[kind] == provenance.artifact_id(path)
            )
    return False


def _ok(row: dict[str, Any]) -> bool:
    """Rows that record a failure (status other than ok) carry no name to show."""
    return row.get("status") in (None, "ok")


def score_plots(rp: RunPaths, ann: Annotations) -> list[Path]:
    """The plots of `scores/` whose scores are current (in `ann.scores`): a plot of scores
    of other names is left out with them."""
    if not rp.scores.exists():
        return []
    return [p for p in sorted(rp.scores.glob("*.png")) if p.stem in ann.scores]


def sae_metrics(run: str | Path, sae_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The SAE's held-out metrics (`metrics.json`) when they describe this run's store; ({},
    a note for the left-out list) when `saescope eval` of another run wrote them since."""
    sp, acts = SAEPaths(sae_dir), RunPaths(run).acts_manifest
    if not sp.metrics.exists():
        return {}, None
    metrics = read_json(sp.metrics)
    said = metrics.get("store_id")  # absent in files of older saescopes: taken as they are
    if said is None or not acts.exists() or said == provenance.artifact_id(acts):
        return metrics, None
    other = (metrics.get("config") or {}).get("run") or "another run"
    if Path(other).resolve() == Path(run).resolve():
        return (
            {},
            f"{sp.dir.name}/{sp.metrics.name} (measured on this run's store before it was re-made)",
        )
    return {}, f"{sp.dir.name}/{sp.metrics.name} (measured on the store of {other})"


def load_annotations(run: str | Path) -> Annotations:
    """Names, explanations and scores of a run's features: only those made from the
    activations of the current latent cache (and scores of the current names); the
    others, and families made from other names, are listed in `stale`, never shown as if
    they described these features."""
    rp = RunPaths(run)
    keywords: dict[int, Keywords] = {}
    stale: list[str] = []
    names_current = rp.keywords.exists() and _made_from_this_cache(rp, rp.keywords_record)
    if rp.keywords.exists() and not names_current:
        stale.append(f"{rp.keywords.name} (made from another SAE or store)")
    explained_current = rp.explanations.exists() and _made_from_this_cache(
        rp, rp.explanations_record
    )
    if rp.explanations.exists() and not explained_current:
        stale.append(f"{rp.explanations.name} (made from another SAE or store)")
    current = {"keywords": names_current, "explanations": explained_current}
    if names_current:
        for row in read_frame(rp.keywords).to_dict("records"):
            if _ok(row) and row.get("keywords") is not None and len(row["keywords"]):
                keywords[int(row["feature"])] = Keywords(
                    [str(w) for w in row["keywords"]],
                    [
                        float(s)
                        for s in (row.get("scores") if row.get("scores") is not None else [])
                    ],
                    str(row.get("method") or ""),
                )
    explanations: dict[int, Explanation] = {}
    if explained_current:
        for line in rp.explanations.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn last line of an interrupted run
            text = row.get("explanation")
            if isinstance(row, dict) and "feature" in row and text and _ok(row):
                explanations[int(row["feature"])] = Explanation(
                    str(text), str(row.get("method") or ""), str(row.get("model") or "")
                )
    scores: dict[str, dict[int, dict[str, float]]] = {}
    if rp.scores.exists():
        for path in sorted(rp.scores.glob("*.parquet")):
            if not _scored_these_names(rp, path.stem, current):
                stale.append(f"scores/{path.name} (scores of other names)")
                continue
            df = read_frame(path)
            if "feature" not in df.columns or "score" not in df.columns:
                continue
            by_feature: dict[int, dict[str, float]] = {}
            for row in df.to_dict("records"):
                if not _ok(row) or row["score"] is None or np.isnan(row["score"]):
                    continue
                entry = {"score": float(row["score"])}
                if row.get("shuffled_score") is not None and not np.isnan(row["shuffled_score"]):
                    entry["shuffled_score"] = float(row["shuffled_score"])
                by_feature[int(row["feature"])] = entry
            scores[path.stem] = by_feature
    stale += filter(None, [stale_note(rp)])
    return Annotations(keywords, explanations, scores, stale)


def read_features(run: str | Path) -> pd.DataFrame:
    """features.parquet of a run, or a clear error when the latents stage has not run."""
    rp = RunPaths(run)
    if not rp.features.exists():
        raise SaescopeError(
            f"no feature table at {rp.features}; run `saescope latents --run {run}` first"
        )
    return read_frame(rp.features)


class RowTexts:
    """The text of each store row: corpus text i for sentence-embedding runs (row i is
    text i), the token's context window for token runs (`saescope.examples.tokens`)."""

    def __init__(self, run: str | Path, n_rows: int) -> None:
        rp = RunPaths(run)
        self.texts: np.ndarray | None = None
        self.tokens: TokenRows | None = None  # set for token runs
        self.missing = "no text for this row in corpus.parquet"
        if store_rows_kind(run) == "tokens":
            if rp.acts_tokens.exists() and rp.acts_index.exists():
                tokens = TokenRows(run)
                if len(tokens) == n_rows:
                    self.tokens = tokens
            self.missing = "no token context for this row under acts/"
        elif rp.corpus.exists():
            texts = corpus_column(run, "text").to_numpy()
            if len(texts) == n_rows:
                self.texts = texts
            else:  # imported vectors, say: row i is not text i
                self.missing = (
                    f"no text: corpus.parquet holds {len(texts):,} texts and the store "
                    f"{n_rows:,} rows, so a row is not a text"
                )

    def __call__(self, row: int, max_chars: int | None = None) -> str:
        """The row's text; for a token row its window with the token marked <<like this>>."""
        if self.tokens is not None:
            text = self.tokens.text(row, mark=True)
        elif self.texts is not None:
            text = str(self.texts[row])
        else:
            return f"(row {row}: {self.missing})"
        if max_chars is not None and len(text) > max_chars:
            text = text[: max_chars - 1].rstrip() + "…"
        return text


@dataclass(frozen=True)
class LensTokens:
    """A feature's logit lens: the tokens its decoder direction promotes and suppresses."""

    promoted: list[tuple[str, float]]  # (token, logit), highest first
    suppressed: list[tuple[str, float]]  # (token, logit), lowest first


def logit_lens(row: Any) -> LensTokens | None:
    """The logit lens in one features.parquet row (a dict or a Series); None when the run
    has none (the lens columns are those of token runs)."""
    if row.get("promoted_tokens") is None:
        return None

    def pairs(side: str) -> list[tuple[str, float]]:
        toks, logits = row.get(f"{side}_tokens"), row.get(f"{side}_logits")
        return [(str(t), float(v)) for t, v in zip(toks, logits, strict=True)]

    return LensTokens(pairs("promoted"), pairs("suppressed"))
