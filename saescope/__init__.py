"""saescope: sparse autoencoders that open dense representations into readable features.

The public Python API; every stage is `run(config) -> Path` over a run directory.
"""

import os as _os

# Two OpenMP threads that spin-wait for each other lose most of a step when the
# machine is busy (610 ms vs 82 ms per training step measured on 2 cores); a
# passive wait costs nothing when it is idle. Must be set before torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from saescope._version import __version__  # noqa: E402
from saescope.corpus import CorpusConfig, build_corpus, read_corpus
from saescope.corpus import run as make_corpus
from saescope.embed import EmbedConfig
from saescope.embed import run as embed
from saescope.errors import SaescopeError
from saescope.evaluate import EvalConfig
from saescope.interp.keywords import KeywordsConfig
from saescope.interp.keywords import run as name_features_with_keywords
from saescope.latents import LatentCache, LatentsConfig
from saescope.latents import run as cache_latents
from saescope.paths import RunPaths
from saescope.report import ReportConfig
from saescope.report import run as make_report
from saescope.sae import SAE, SAEConfig, export_saelens, load_sae
from saescope.scoring.stage import ScoreConfig
from saescope.scoring.stage import run as score_names
from saescope.store import ActivationStore, StoreWriter
from saescope.train import TrainConfig, TrainResult, train_on_batches

__all__ = [
    "__version__",
    "ActivationStore",
    "CorpusConfig",
    "EmbedConfig",
    "EvalConfig",
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
    "export_saelens",
    "load_sae",
    "embed",
    "make_corpus",
    "make_report",
    "name_features_with_keywords",
    "read_corpus",
    "score_names",
    "train_on_batches",
]
