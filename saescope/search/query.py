"""Steered semantic search over a run: query -> SAE codes -> edits -> query vector -> top k.

In: a sentence-embedding run with an index (`saescope index`), a latent cache (its SAE,
`latents/features.parquet` for the typical-activation unit) and optionally feature names.
Out: `SearchResult`: the results of the query before and after its edits, each with its
text, its cosine similarity, the features it shares with the query and the activation
on it of every edited feature.

The edited query keeps the SAE's reconstruction error (`saescope.edits.apply_edits`):

    x' = x + decode(z') - decode(z)        z = encode(x), z' = z edited

so a query with no edit searches with the plain embedding and gets exactly its results.

    s = SearchSession("runs/demo")
    r = s.search("The central bank raised rates.", edits=[boost("football", 0.5)])
    r.before, r.after            # lists of Hit
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope import provenance
from saescope.corpus import corpus_column
from saescope.edits import Edit, apply_edits, resolve, typical_activation
from saescope.errors import SaescopeError
from saescope.io import read_json, sha256_file
from saescope.options.search import DEFAULT_STRENGTH, UNITS
from saescope.paths import RunPaths
from saescope.report.data import Annotations, RowTexts, load_annotations, read_features
from saescope.sae.fit import check_fits_store
from saescope.search.index import ExactIndex, Hits, IvfIndex, open_index
from saescope.search.select import EditRequest, FeatureNames, to_edit
from saescope.search.stage import refuse_token_runs
from saescope.store import ActivationStore

N_SHARED = 3  # features shared with the query shown per result


@dataclass(frozen=True)
class ChosenEdit:
    """An edit request resolved to a feature, as given and in absolute units."""

    op: str  # boost | suppress | clamp | zero
    target: int | str  # as asked: an id, or the word its name was found by
    feature: int
    label: str  # the feature's name (first keywords), '' when it has none
    strength: float  # as given (units of `unit`)
    unit: str
    absolute: float  # the value added (boost, suppress) or set (clamp); 0 for zero
    edit: Edit  # the absolute edit applied


@dataclass(frozen=True)
class SharedFeature:
    feature: int
    label: str
    query_act: float
    row_act: float


@dataclass(frozen=True)
class Hit:
    rank: int
    row: int
    id: str | None  # the corpus id of the row
    score: float  # cosine similarity to the vector searched with
    text: str
    shared: list[SharedFeature] = field(default_factory=list)  # strongest first
    edited: dict[int, float] = field(default_factory=dict)  # edited feature -> act on the row


@dataclass(frozen=True)
class SearchResult:
    query: str  # the text, or the text of the query row
    row: int | None  # the store row queried with, if any
    index: str  # exact | ivf
    edits: list[ChosenEdit]
    before: list[Hit]  # results of the query as it is
    after: list[Hit] | None  # results of the edited query (None: no edit)
    cosine: float | None  # cosine(query, edited query)
    overlap: float | None  # fraction of `before` rows also in `after`


def recommended_strength(run: str | Path, sae_id: str | None = None) -> float | None:
    """search-eval's recommended strength for the run (None when it has not run, or ran
    with another SAE than `sae_id`, the sha256 of its weights)."""
    rp = RunPaths(run)
    if not rp.search_eval_summary.exists():
        return None
    saved = provenance.read_record(rp.search_eval_record)
    if saved is None or saved.get("status") != "complete":
        return None
    if sae_id is not None and saved.get("upstream", {}).get("sae") != sae_id:
        return None
    value = read_json(rp.search_eval_summary).get("recommended_strength")
    return float(value) if value is not None else None


class SearchSession:
    """A run opened for steered search: the index, the SAE, the feature table and names.

    run: a sentence-embedding run with `index/` and `latents/`.
    index: auto | exact | ivf;  nprobe: ivf lists visited per query.
    sae: an SAE folder (any format `load_sae` reads) instead of the latent cache's; its
    features have names and typical activations only when the cache was made with it.
    model: sentence model for query texts (default: the store's).
    """

    def __init__(
        self,
        run: str | Path,
        index: str = "auto",
        nprobe: int | None = None,
        sae: str | Path | None = None,
        model: str | None = None,
    ) -> None:
        from saescope.latents import LatentCache, cache_describes
        from saescope.sae import SAE, detect_format, load_sae

        self.run = str(run)
        rp = RunPaths(run)
        self.paths = rp
        refuse_token_runs(run)
        self.store = ActivationStore(rp.acts, verify=False)
        self.index: ExactIndex | IvfIndex = open_index(run, index, nprobe)
        if sae is None:
            cache = LatentCache(run)  # names a missing latent cache
            self.sae = SAE.load(cache.sae_dir()).eval()
            self.sae_id: str | None = cache.sae_sha256
            described = True
        else:
            self.sae = load_sae(sae)
            self.sae_id = sha256_file(detect_format(sae).weights)
            described = cache_describes(run, self.sae_id)
        check_fits_store(self.sae, self.store.meta, self.store.d_in, str(sae or "the run's SAE"))
        # typical activations and names describe the latent cache's SAE only
        self.typical: np.ndarray | None = None
        self.names = FeatureNames(Annotations())
        if described:
            table = read_features(run)
            self.typical = typical_activation(table)
            density = table.sort_values("feature")["density"].to_numpy()
            self.names = FeatureNames(load_annotations(run), density)
        self.default_strength = recommended_strength(run, self.sae_id) or DEFAULT_STRENGTH
        self._model_name = model
        self._model: Any = None
        self._texts: RowTexts | None = None
        self._ids: np.ndarray | None = None

    # --- the query ---------------------------------------------------------------
    def embed(self, text: str) -> torch.Tensor:
        """(d_in,) the text embedded as the corpus was (the store's model and normalisation)."""
        if not text or not text.strip():
            raise SaescopeError("the query text is empty; give a text or --row")
        return self.embed_texts([text])[0]

    def drive(self, word: str) -> np.ndarray:
        """(d_sae,) the SAE's pre-activations on the word's own embedding: how much the
        word itself drives each feature (which of the features named by it to edit)."""
        with torch.no_grad():
            x = self.embed(word).unsqueeze(0).to(self.sae.W_enc.device)
            return self.sae.encode_full(x).pre_acts[0].float().cpu().numpy()

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, d_in) texts embedded as the corpus was."""
        from saescope.embed import encode_texts, load_query_model

        meta = self.store.meta
        name = self._model_name or meta.get("model")
        if not name:
            raise SaescopeError(
                f"the store at {self.paths.acts} names no sentence model (its vectors were "
                "imported); pass --model, the model that made them, or query with --row"
            )
        if self._model is None:
            self._model = load_query_model(str(name), meta)
        x = encode_texts(self._model, list(texts), 64, bool(meta.get("normalize", False)))
        if x.shape[1] != self.store.d_in:
            raise SaescopeError(
                f"the query model {name!r} makes {x.shape[1]}-d vectors but the store at "
                f"{self.paths.acts} holds {self.store.d_in}-d rows; use the model that embedded "
                f"it ({meta.get('model') or 'see acts/manifest.json'})"
            )
        return x

    def find_row(self, row: int | str) -> int:
        """A store row by number, or by corpus id."""
        if isinstance(row, str) and not row.strip().lstrip("-").isdigit():
            ids = self._corpus_ids()
            hit = np.flatnonzero(ids == row) if ids is not None else np.empty(0, np.int64)
            if not len(hit):
                raise SaescopeError(f"no row of {self.run} has the corpus id {row!r}")
            return int(hit[0])
        r = int(row)
        if not 0 <= r < self.store.count:
            raise SaescopeError(
                f"row {r} is out of range: the store of {self.run} has rows 0..{self.store.count - 1}"
            )
        return r

    # --- edits -------------------------------------------------------------------
    def choose(
        self,
        requests: Sequence[EditRequest],
        strength: float | None = None,
        unit: str = "typical",
    ) -> list[ChosenEdit]:
        """The features and absolute values of `requests` (strength: their default)."""
        if unit not in UNITS:
            raise SaescopeError(f"unknown unit {unit!r}; choose {' or '.join(UNITS)}")
        default = self.default_strength if strength is None else float(strength)
        if unit == "absolute" and strength is None:
            bare = [r for r in requests if r.strength is None and r.op != "zero"]
            if bare:
                raise SaescopeError(
                    f"{bare[0].op} {bare[0].target} has no strength: the default one "
                    f"({default:g}) is in units of each feature's typical activation; with "
                    "--unit absolute give one (--strength S, or FEATURE:STRENGTH)"
                )
        out = []
        for req in requests:
            f = (
                req.target
                if isinstance(req.target, int)
                else self.names.choose(req.target, self.run, self.drive)
            )
            edit = to_edit(req, f, default, unit)
            (absolute,) = resolve([edit], self.typical, self.sae.cfg.d_sae)
            out.append(
                ChosenEdit(
                    req.op,
                    req.target,
                    f,
                    self.names.label(f),
                    abs(edit.value),
                    unit,
                    absolute.value,
                    absolute,
                )
            )
        return out

    def edited(self, x: torch.Tensor, edits: Sequence[ChosenEdit]) -> torch.Tensor:
        """x (.., d_in) with the edits applied; the SAE's error term is kept."""
        return apply_edits(self.sae, x, [e.edit for e in edits])

    # --- search ------------------------------------------------------------------
    def search(
        self,
        query: str | None = None,
        *,
        row: int | str | None = None,
        edits: Sequence[EditRequest] = (),
        k: int = 10,
        strength: float | None = None,
        unit: str = "typical",
        exclude: Sequence[int] | None = None,
    ) -> SearchResult:
        """Results of `query` (a text) or `row`, before and after `edits`."""
        if (query is None) == (row is None):
            raise SaescopeError("give a query text or a --row (one of them)")
        if k < 1:
            raise SaescopeError(f"-k must be >= 1, got {k}")
        chosen = self.choose(edits, strength, unit)
        if row is not None:
            r = self.find_row(row)
            x, text = self.store.rows([r])[0], self._text(r)
        else:
            r, x, text = None, self.embed(str(query)), str(query)
        before = self._hits(x, k, exclude)
        if not chosen:
            return SearchResult(
                text, r, self.index.kind, [], self._explain(x, before, []), None, None, None
            )
        x2 = self.edited(x.unsqueeze(0), chosen)[0]
        after = self._hits(x2, k, exclude)
        cos = float(torch.nn.functional.cosine_similarity(x, x2, dim=0))
        overlap = len({h for h, _ in before} & {h for h, _ in after}) / max(len(before), 1)
        return SearchResult(
            text,
            r,
            self.index.kind,
            chosen,
            self._explain(x, before, chosen),
            self._explain(x, after, chosen),
            cos,
            overlap,
        )

    def _hits(
        self, x: torch.Tensor, k: int, exclude: Sequence[int] | None
    ) -> list[tuple[int, float]]:
        hits: Hits = self.index.search(x, k, exclude)
        out = hits.of(0)
        if not out:
            left = f", {len(exclude)} left out" if exclude is not None else ""
            raise SaescopeError(
                f"the search returned no results (the {self.index.kind} index holds "
                f"{self.index.count} rows{left}); try more --nprobe or another query"
            )
        return out

    @torch.inference_mode()
    def _explain(
        self, x: torch.Tensor, hits: list[tuple[int, float]], edits: Sequence[ChosenEdit]
    ) -> list[Hit]:
        rows = [r for r, _ in hits]
        z_q = self.sae.encode(x.unsqueeze(0))[0]  # (d_sae,) the query's own codes
        z_r = self.sae.encode(self.store.rows(rows))  # (n, d_sae)
        ids = self._corpus_ids()
        out = []
        for rank, ((r, score), z) in enumerate(zip(hits, z_r, strict=True), 1):
            both = torch.nonzero((z_q > 0) & (z > 0)).squeeze(1)
            strength = (z_q[both] * z[both]).argsort(descending=True)[:N_SHARED]
            shared = [
                SharedFeature(int(f), self.names.label(int(f)), float(z_q[f]), float(z[f]))
                for f in both[strength].tolist()
            ]
            edited = {e.feature: float(z[e.feature]) for e in edits}
            rid = str(ids[r]) if ids is not None else None
            out.append(Hit(rank, r, rid, score, self._text(r), shared, edited))
        return out

    def _text(self, row: int) -> str:
        if self._texts is None:
            self._texts = RowTexts(self.run, self.store.count)
        return self._texts(row)

    def _corpus_ids(self) -> np.ndarray | None:
        if self._ids is None and self.paths.corpus.exists():
            ids = corpus_column(self.run, "id").astype(str).to_numpy()
            self._ids = ids if len(ids) == self.store.count else None
        return self._ids
