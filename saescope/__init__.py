"""saescope: sparse autoencoders that open dense representations into readable features.

The public Python API; every stage is `run(config) -> Path` over a run directory,
re-exported under a name that says what it makes (`make_corpus`, `embed_corpus`,
`cache_latents`...); `saescope.embed` and the other stage names are the modules.
Names are imported on first use, so `import saescope` is fast.
"""

import os as _os
from typing import TYPE_CHECKING

# Two OpenMP threads that spin-wait for each other lose most of a step when the
# machine is busy (610 ms vs 82 ms per training step measured on 2 cores); a
# passive wait costs nothing when it is idle. Must be set before torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from saescope._lazy import lazy_exports  # noqa: E402
from saescope._version import __version__  # noqa: E402

# public name -> (module, attribute), imported on first use (saescope/_lazy.py)
_EXPORTS: dict[str, tuple[str, str]] = {
    "ActivationStore": ("saescope.store", "ActivationStore"),
    "CorpusConfig": ("saescope.options.corpus", "CorpusConfig"),
    "EmbedConfig": ("saescope.options.embed", "EmbedConfig"),
    "EvalConfig": ("saescope.options.evaluate", "EvalConfig"),
    "FamiliesConfig": ("saescope.options.families", "FamiliesConfig"),
    "KeywordsConfig": ("saescope.options.keywords", "KeywordsConfig"),
    "LatentCache": ("saescope.latents", "LatentCache"),
    "LatentsConfig": ("saescope.options.latents", "LatentsConfig"),
    "ReportConfig": ("saescope.options.report", "ReportConfig"),
    "RunPaths": ("saescope.paths", "RunPaths"),
    "SAE": ("saescope.sae", "SAE"),
    "SAEConfig": ("saescope.sae.config", "SAEConfig"),
    "SaescopeError": ("saescope.errors", "SaescopeError"),
    "ScoreConfig": ("saescope.options.score", "ScoreConfig"),
    "StoreWriter": ("saescope.store", "StoreWriter"),
    "TrainConfig": ("saescope.train.config", "TrainConfig"),
    "TrainResult": ("saescope.train", "TrainResult"),
    "build_corpus": ("saescope.corpus", "build_corpus"),
    "cache_latents": ("saescope.latents", "run"),
    "embed_corpus": ("saescope.embed", "run"),
    "evaluate_sae": ("saescope.evaluate", "run"),
    "export_saelens": ("saescope.sae", "export_saelens"),
    "export_sparsify": ("saescope.sae", "export_sparsify"),
    "find_families": ("saescope.families.stage", "run"),
    "load_sae": ("saescope.sae", "load_sae"),
    "make_corpus": ("saescope.corpus", "run"),
    "make_report": ("saescope.report", "run"),
    "name_features_with_keywords": ("saescope.interp.keywords", "run"),
    "read_corpus": ("saescope.corpus", "read_corpus"),
    "read_families": ("saescope.families.tables", "read_families"),
    "run_status": ("saescope.status", "status"),
    "score_names": ("saescope.scoring.stage", "run"),
    "train_on_batches": ("saescope.train", "train_on_batches"),
    "train_sae": ("saescope.train.stage", "run"),
    # steerable semantic search (saescope/search/)
    "EditRequest": ("saescope.search.select", "EditRequest"),
    "IndexConfig": ("saescope.options.search", "IndexConfig"),
    "SearchEvalConfig": ("saescope.options.search", "SearchEvalConfig"),
    "SearchSession": ("saescope.search.query", "SearchSession"),
    "build_search_index": ("saescope.search.stage", "run"),
    "evaluate_search": ("saescope.search.evaluate", "run"),
    "open_index": ("saescope.search.index", "open_index"),
    # the served dashboard (saescope/serve/)
    "create_dashboard": ("saescope.serve.app", "create_app"),
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from saescope.corpus import CorpusConfig, build_corpus, read_corpus
    from saescope.corpus import run as make_corpus
    from saescope.embed import EmbedConfig
    from saescope.embed import run as embed_corpus
    from saescope.errors import SaescopeError
    from saescope.evaluate import EvalConfig
    from saescope.evaluate import run as evaluate_sae
    from saescope.families.stage import run as find_families
    from saescope.families.tables import read_families
    from saescope.interp.keywords import KeywordsConfig
    from saescope.interp.keywords import run as name_features_with_keywords
    from saescope.latents import LatentCache, LatentsConfig
    from saescope.latents import run as cache_latents
    from saescope.options.families import FamiliesConfig
    from saescope.options.search import IndexConfig, SearchEvalConfig
    from saescope.paths import RunPaths
    from saescope.report import ReportConfig
    from saescope.report import run as make_report
    from saescope.sae import SAE, SAEConfig, export_saelens, export_sparsify, load_sae
    from saescope.scoring.stage import ScoreConfig
    from saescope.scoring.stage import run as score_names
    from saescope.search.evaluate import run as evaluate_search
    from saescope.search.index import open_index
    from saescope.search.query import SearchSession
    from saescope.search.select import EditRequest
    from saescope.search.stage import run as build_search_index
    from saescope.serve.app import create_app as create_dashboard
    from saescope.status import status as run_status
    from saescope.store import ActivationStore, StoreWriter
    from saescope.train import TrainConfig, TrainResult, train_on_batches
    from saescope.train.stage import run as train_sae

__all__ = [
    "__version__",
    "ActivationStore",
    "CorpusConfig",
    "EmbedConfig",
    "EvalConfig",
    "FamiliesConfig",
    "KeywordsConfig",
    "LatentCache",
    "LatentsConfig",
    "ReportConfig",
    "RunPaths",
    "SAE",
    "SAEConfig",
    "SaescopeError",
    "ScoreConfig",
    "StoreWriter",
    "TrainConfig",
    "TrainResult",
    "build_corpus",
    "cache_latents",
    "create_dashboard",
    "export_saelens",
    "export_sparsify",
    "embed_corpus",
    "evaluate_sae",
    "find_families",
    "load_sae",
    "make_corpus",
    "make_report",
    "name_features_with_keywords",
    "read_corpus",
    "read_families",
    "run_status",
    "score_names",
    "train_on_batches",
    "train_sae",
    "EditRequest",
    "IndexConfig",
    "SearchEvalConfig",
    "SearchSession",
    "build_search_index",
    "evaluate_search",
    "open_index",
]
