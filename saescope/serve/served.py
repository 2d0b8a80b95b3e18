"""One run opened for serving: its tables built once, and the answers the API gives about it.

In: a run directory with a finished latent cache (`latents/`); whatever later stages
made (names, scores, families, a search index) is used when it is current. Out:
`ServedRun`, read-only: `summary()`, `page()` of the feature browser, `feature(f)`
(everything the feature page shows), `families_list()`. The inspector and the
steering pages load models on first use (`saescope.serve.models`).

Start-up reads features.parquet, the SAE's metrics, the names (`load_annotations`, only those made
from this latent cache), the families (`read_families`), the row texts
(`RowTexts`, or the token contexts of an LM run) and the SAE's decoder once; a feature page is then array look-ups, a
matrix-vector product for its nearest features and, for LM runs, a few reads of
the memory-mapped latent shards for the activations around each example.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saescope.errors import SaescopeError
from saescope.examples import from_features_row
from saescope.examples.tokens import NAME_AFTER, NAME_BEFORE, TokenRows, store_rows_kind
from saescope.families.tables import read_families
from saescope.inspect import Example, FeatureView
from saescope.io import read_json
from saescope.options.search import KINDS
from saescope.paths import RunPaths, SAEPaths
from saescope.report.data import (
    RowTexts,
    load_annotations,
    logit_lens,
    sae_metrics,
    score_plots,
)
from saescope.report.stage import PLOT_TITLES
from saescope.search.select import FeatureNames
from saescope.serve.decoder import Decoder
from saescope.serve.errors import NotFound
from saescope.serve.histograms import Histograms
from saescope.serve.limits import Limits
from saescope.serve.rows import LatentRows
from saescope.serve.tables import FeatureTable, finite

N_NEIGHBOURS = 10
N_TOP = 20  # top examples on a feature page
PER_QUANTILE = 3  # examples of each activation quantile on a feature page
MAX_TEXT_CHARS = 4000  # longer corpus texts are cut on the page
SEARCH_TEXT_EXAMPLES = 3  # top examples whose text the browser's search covers
SEARCH_TEXT_CHARS = 300


def plain(x: Any) -> Any:
    """A dataclass (and the dataclasses in its lists and dicts) as dicts, without copying
    the lists of numbers and strings inside (`asdict` deep-copies every token list)."""
    if is_dataclass(x) and not isinstance(x, type):
        return {f.name: plain(getattr(x, f.name)) for f in fields(x)}
    if isinstance(x, list) and x and is_dataclass(x[0]):
        return [plain(v) for v in x]
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    return x


class ServedRun:
    """A run opened read-only for the dashboard (see the module docstring)."""

    def __init__(
        self, rid: str, path: str | Path, limits: Limits | None = None, device: str = "cpu"
    ) -> None:
        from saescope.latents import LatentCache

        self.id = rid
        self.path = Path(path)
        self.paths = rp = RunPaths(path)
        self.limits = limits or Limits()
        if not rp.root.is_dir():
            raise SaescopeError(f"run directory {rp.root} does not exist")
        self.cache = LatentCache(path)  # names a missing or unfinished latent cache
        self.kind = store_rows_kind(path)
        self.meta: dict[str, Any] = (
            read_json(rp.acts_manifest).get("meta", {}) if rp.acts_manifest.exists() else {}
        )
        self.table = FeatureTable(rp.features)
        if self.table.d_sae != self.cache.d_sae:
            raise SaescopeError(
                f"{rp.features} lists {self.table.d_sae} features but the latent cache has "
                f"{self.cache.d_sae}; re-run `saescope latents --run {path}`"
            )
        self.sae_dir = self.cache.sae_dir()  # refuses an SAE changed since the cache
        self.decoder = Decoder.load(self.sae_dir)
        self.ann = load_annotations(path)
        self.names = FeatureNames(self.ann, self.table.num["density"])
        self.table.set_scores(self.ann)
        self.families = read_families(path)
        if self.families is not None:
            fam = self.families.members
            for k, g in fam.groupby("family", sort=True)["feature"]:
                self.table.family_members[int(k)] = g.to_numpy(dtype=np.int64)
        # the text of a row: a corpus text, or (LM runs) a token in its context window
        self.texts: RowTexts | None = None
        self.tokens: TokenRows | None = None
        self.rows: LatentRows | None = None  # LM runs: activations around an example
        if self.kind == "tokens":
            self.tokens = TokenRows(path)  # names missing token contexts
            if len(self.tokens) != self.cache.n_rows:
                raise SaescopeError(
                    f"{rp.acts_index} lists {len(self.tokens)} tokens but the latent cache has "
                    f"{self.cache.n_rows} rows; re-run `saescope latents --run {path}`"
                )
            self.rows = LatentRows(self.cache)
        else:
            self.texts = RowTexts(path, self.cache.n_rows)
        self._token_lock = threading.Lock()  # a tokenizer is not safe to share across threads
        self.table.set_text(self._search_texts())
        self.hist = Histograms(self.cache, self.table.num["max_act"])
        from saescope.serve.models import RunModels

        self.models = RunModels(self, device)
        # the SAE's metrics as the other tables: read once, for the cache's own SAE
        self.metrics, self.metrics_left_out = sae_metrics(rp.root, self.sae_dir)
        self.started = self.on_disk()

    # --- what the run has ------------------------------------------------------------

    def index_kinds(self) -> list[str]:
        return [k for k in KINDS if self.paths.index_manifest(k).exists()]

    def missing(self) -> dict[str, str | None]:
        """Per page that needs more than the latent cache: None when it works, else why not."""
        run = str(self.path)
        search: str | None = None
        if self.kind == "tokens":
            search = "semantic search is for sentence-embedding runs; this run's rows are LM tokens"
        elif not self.index_kinds():
            search = f"this run has no search index: run `saescope index --run {run}`"
        generate: str | None = None
        if self.kind != "tokens":
            generate = (
                "generation steering needs an LM run (`saescope acts`); this run's rows are "
                "sentence embeddings"
            )
        elif not self.meta.get("model") or not self.meta.get("hookpoint"):
            generate = (
                f"the token store of {run} names no model or hookpoint; re-run `saescope acts`"
            )
        inspect: str | None = None
        if self.kind != "tokens" and (
            self.meta.get("source") != "sentence-transformers" or not self.meta.get("model")
        ):
            inspect = (
                "the store was not made by a sentence-transformers model (its vectors were "
                "imported), so a new text cannot be embedded the same way"
            )
        return {"search": search, "generate": generate, "inspect": inspect}

    def label(self, f: int) -> str:
        return self.names.label(f)

    def on_disk(self) -> dict[str, tuple[int, int]]:
        """(size, mtime) of every file the start-up read that a stage may make again."""
        rp = self.paths
        files = [rp.latents_manifest, rp.features, rp.keywords, rp.explanations]
        files += [rp.families_table, rp.family_members, SAEPaths(self.sae_dir).weights]
        files += [SAEPaths(self.sae_dir).metrics, *sorted(rp.scores.glob("*.parquet"))]
        out: dict[str, tuple[int, int]] = {}
        for p in filter(Path.exists, files):
            name = p.relative_to(rp.root).as_posix() if p.is_relative_to(rp.root) else str(p)
            out[name] = (p.stat().st_size, p.stat().st_mtime_ns)
        return out

    def changed(self) -> list[str]:
        """Files made again (or added, or removed) since the dashboard read the run."""
        now = self.on_disk()
        return sorted(n for n in set(now) | set(self.started) if now.get(n) != self.started.get(n))

    def summary(self) -> dict[str, Any]:
        rp, t = self.paths, self.table
        sae_cfg = {k: self.decoder.config.get(k) for k in ("architecture", "d_in", "d_sae", "k")}
        metrics, left_out = self.metrics, self.metrics_left_out
        plots = [
            {"title": title, "url": self.file_url(rp.plots / name)}
            for name, title in PLOT_TITLES.items()
            if (rp.plots / name).exists()
        ]
        plots += [
            {"title": f"Scores: {p.stem}", "url": self.file_url(p)}
            for p in score_plots(rp, self.ann)
        ]
        return {
            "id": self.id,
            "name": self.path.resolve().name,
            "kind": self.kind,
            "model": self.meta.get("model"),
            "hookpoint": self.meta.get("hookpoint"),
            "n_rows": self.cache.n_rows,
            "d_sae": t.d_sae,
            "n_alive": int((~t.dead).sum()),
            "sae": sae_cfg,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
            "scorers": sorted(t.scores),
            "n_keywords": len(self.ann.keywords),
            "n_explanations": len(self.ann.explanations),
            "stale": [*self.ann.stale, *filter(None, [left_out])],
            "changed": self.changed(),  # shown after a restart of the dashboard
            "families": len(self.families.families) if self.families is not None else 0,
            "index": self.index_kinds(),
            "missing": self.missing(),
            "histograms": self.hist.status,
            "histogram_seconds": self.hist.seconds,
            "plots": plots,
            "report": self.file_url(rp.report_index) if rp.report_index.exists() else None,
            "limits": asdict(self.limits),
        }

    def file_url(self, path: Path) -> str:
        return f"/runs/{self.id}/files/{path.relative_to(self.paths.root).as_posix()}"

    # --- texts -------------------------------------------------------------------------

    def _search_texts(self) -> list[str]:
        """Per feature the text the browser's search looks in: its keywords, explanation,
        logit-lens tokens and the start of its top examples' texts."""
        t = self.table
        top = t.lists.get("top_rows")
        lens = t.lists.get("promoted_tokens")
        out = []
        for f in range(t.d_sae):
            parts = [" ".join(self.ann.keywords[f].words)] if f in self.ann.keywords else []
            if f in self.ann.explanations:
                parts.append(self.ann.explanations[f].text)
            if lens is not None:
                parts.append(" ".join(str(x) for x in lens(f)))
            if top is not None:
                parts += [self.short_text(int(r)) for r in top(f)[:SEARCH_TEXT_EXAMPLES]]
            out.append(" \u0001 ".join(parts))
        return out

    def short_text(self, row: int) -> str:
        """A row's text for lists and search: the start of a text, or a token's short window."""
        if self.tokens is not None:
            with self._token_lock:
                return self.tokens.text(row, NAME_BEFORE, NAME_AFTER).strip()
        assert self.texts is not None
        return self.texts(row, SEARCH_TEXT_CHARS)

    def example(self, feature: int, row: int, act: float, b: int | None = None) -> Example:
        """An example row: its text, or (LM runs) its window with the feature's activation
        on every token, read from the mapped latent shards."""
        if self.tokens is None or self.rows is None:
            assert self.texts is not None
            return Example(int(row), float(act), self.texts(int(row), MAX_TEXT_CHARS), b)
        with self._token_lock:
            w = self.tokens.window(int(row))
        acts = self.rows.values(feature, w.rows)
        parts = list(w.tokens)
        parts[w.center] = f"<<{parts[w.center]}>>"
        return Example(
            int(row), float(act), "".join(parts), b, w.tokens,
            acts.tolist(), w.center,
        )  # fmt: skip

    # --- answers -------------------------------------------------------------------------

    def check_feature(self, f: int) -> None:
        if not 0 <= f < self.table.d_sae:
            raise NotFound(
                f"feature {f} is out of range: the SAE of run {self.id} has features "
                f"0..{self.table.d_sae - 1}"
            )

    def item(self, f: int) -> dict[str, Any]:
        """One feature as a line of the browser."""
        t = self.table
        top = t.lists["top_rows"](f) if "top_rows" in t.lists else np.empty(0, np.int64)
        kw = self.ann.keywords.get(f)
        ex = self.ann.explanations.get(f)
        return {
            "id": f,
            "count": int(t.num["count"][f]),
            "density": finite(t.num["density"][f]),
            "max_act": finite(t.num["max_act"][f]),
            "dead": bool(t.dead[f]),
            "keywords": kw.words[:8] if kw else [],
            "explanation": ex.text if ex else None,
            "scores": {s: finite(v[f]) for s, v in t.scores.items() if not np.isnan(v[f])},
            "top_text": self.short_text(int(top[0])) if len(top) else None,
        }

    def page(self, **query: Any) -> dict[str, Any]:
        p = self.table.query(**query)
        return {"total": p.total, "offset": p.offset, "items": [self.item(f) for f in p.ids]}

    def feature(self, f: int, n_top: int = N_TOP) -> dict[str, Any]:
        """Everything the feature page shows: `saescope inspect --json`'s fields and more."""
        self.check_feature(f)
        row = self.table.row(f)
        fe = from_features_row(row).limit(n_top, PER_QUANTILE)
        top = [self.example(f, r, a) for r, a in zip(fe.top_rows, fe.top_acts, strict=True)]
        quant = [
            self.example(f, r, a, int(b))
            for r, a, b in zip(fe.quantile_rows, fe.quantile_acts, fe.quantile_bins, strict=True)
        ]
        kw = self.ann.keywords.get(f)
        ex = self.ann.explanations.get(f)
        fams = self.families
        view = FeatureView(
            feature=f,
            count=int(row["count"]),
            density=float(row["density"]),
            log10_density=finite(row["log10_density"]),
            max_act=float(row["max_act"]),
            mean_act=float(row["mean_act"]),
            mean_active_act=finite(row["mean_active_act"]),
            dead=bool(row["dead"]),
            keywords=kw.words if kw else [],
            explanation=ex.text if ex else None,
            scores={s: v[f] for s, v in self.ann.scores.items() if f in v},
            top=top,
            quantiles=quant,
            logit_lens=logit_lens(row),
            families=fams.families_of(f) if fams is not None else [],
            splits=fams.splits_of(f) if fams is not None else [],
        )
        out = plain(view)
        if out["logit_lens"] is None:
            del out["logit_lens"]  # as in `inspect --json`: only LM runs have one
        out |= {
            "run": self.id,
            "kind": self.kind,
            "d_sae": self.table.d_sae,
            "n_rows": self.cache.n_rows,
            "label": self.label(f),
            "keyword_scores": kw.scores if kw else [],
            "keyword_method": kw.method if kw else None,
            "explanation_source": {"method": ex.method, "model": ex.model} if ex else None,
            "histogram": self.hist.of(f),
            "histogram_status": self.hist.status,
            "neighbours": [
                {
                    "feature": g,
                    "cosine": round(c, 6),
                    "label": self.label(g),
                    "density": finite(self.table.num["density"][g]),
                }
                for g, c in self.decoder.nearest(f, N_NEIGHBOURS)
            ],  # fmt: skip
        }
        for ref in out["families"]:
            ref["parent_label"] = self.label(ref["parent"])
        return out

    def families_list(self) -> list[dict[str, Any]]:
        if self.families is None:
            return []
        fam = self.families.families
        return [
            {"family": int(r.family), "parent": int(r.parent), "size": int(r.size),
             "depth": int(r.depth),
             "name": r.name if isinstance(r.name, str) else self.label(int(r.parent))}
            for r in fam.itertuples(index=False)
        ]  # fmt: skip
