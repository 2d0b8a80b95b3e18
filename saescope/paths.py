"""Every file and folder name of a run directory, in one place.

No other module spells a file name of the run directory; they ask `RunPaths`.

    runs/<name>/
      .lock                  the writer lock (saescope.provenance.run_lock)
      corpus.parquet, corpus.config.json, corpus.provenance.json
      acts/manifest.json, acts/config.json, acts/provenance.json, acts/shard-00000.safetensors ...
      acts/tokens.safetensors, acts/index.parquet, acts/parts/rank-NNNNN/   (LM runs)
      sae/config.json, sae/sae.safetensors, sae/provenance.json, sae/metrics.json,
      sae/metrics.provenance.json, sae/metrics.jsonl, sae/checkpoints/
      latents/manifest.json, latents/config.json, latents/provenance.json,
      latents/shard-*.safetensors, latents/features.parquet, latents/cooccurrence.safetensors,
      latents/plots/
      interp/keywords.parquet, interp/keywords.config.json, interp/keywords.provenance.json,
      interp/explanations.jsonl, interp/explanations.config.json,
      interp/explanations.provenance.json, interp/explanations.usage.json
      llm-cache/<sha256>.json   (the LLM response cache of explain and score)
      scores/<scorer>.parquet, scores/<scorer>.config.json, scores/<scorer>.provenance.json,
      scores/<scorer>.summary.json, scores/<scorer>.png,
      scores/<scorer>.jsonl, scores/<scorer>.usage.json   (LLM scorers: per-feature results)
      steer/generations.parquet, steer/ranking.parquet, steer/sweep.parquet, steer/summary.json,
      steer/sweep.png, steer/config.json, steer/provenance.json   (LM runs)
      families/families.parquet, families/members.parquet, families/tree.json,
      families/splits.parquet, families/summary.json, families/config.json,
      families/provenance.json
      index/exact/manifest.json, index/exact/block-00000.safetensors ...,
      index/ivf/manifest.json, index/ivf/index.faiss (trained.faiss, part-NNNNN.faiss while built),
      index/<kind>/config.json, index/<kind>/provenance.json
      search/eval.parquet, search/eval.summary.json, search/eval.png, search/eval.config.json,
      search/eval.provenance.json
      report/index.html, report/config.json, report/provenance.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The run directory of every stage when no --run is given (`saescope demo` uses runs/demo).
DEFAULT_RUN = "runs/default"
HUB_PREFIX = "hf:"  # an SAE (or dataset) on the Hugging Face hub: hf:OWNER/REPO/PATH
MANIFEST = "manifest.json"
STAGE_CONFIG = "config.json"
SHARD_PATTERN = "shard-{:05d}.safetensors"
# LM runs: beside the store, the token contexts and the store row -> token index
TOKEN_CONTEXTS = "tokens.safetensors"
TOKEN_INDEX = "index.parquet"

# Foreign SAE formats (see shared/FORMATS.md).
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"
BATCHTOPK_CFG = "config.json"
BATCHTOPK_WEIGHTS = "sae.pt"
SAELENS_SCALER = "activation_scaler.json"  # SAELens trainer checkpoints: norm scaling factor
SAELENS_WHITENING = "activation_whitening.safetensors"
NATIVE_SAE_CONFIG = "config.json"  # saescope's own SAE folder (SAE.save / SAE.load)
NATIVE_SAE_WEIGHTS = "sae.safetensors"
CONVERT_RECORD = "convert.json"  # `saescope convert`: options and source of a converted SAE
PROVENANCE = "provenance.json"  # a stage's provenance record (saescope.provenance)


# Files inside one SAE folder (sae/ or sae-<d_sae>-k<k>/).
SAE_WEIGHTS = "sae.safetensors"
SAE_METRICS = "metrics.json"
TRAIN_LOG = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PATTERN = "step-{:08d}.pt"


@dataclass(frozen=True)
class SAEPaths:
    """Paths inside one SAE folder (the first SAE of a run is `sae/`)."""

    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / STAGE_CONFIG

    @property
    def weights(self) -> Path:
        return self.dir / SAE_WEIGHTS

    @property
    def metrics(self) -> Path:
        return self.dir / SAE_METRICS

    @property
    def train_log(self) -> Path:
        return self.dir / TRAIN_LOG

    @property
    def checkpoints(self) -> Path:
        return self.dir / CHECKPOINTS

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / CHECKPOINT_PATTERN.format(step)

    @property
    def train_record(self) -> Path:
        """Provenance of the training that made this SAE."""
        return self.dir / PROVENANCE

    @property
    def eval_record(self) -> Path:
        """Provenance of metrics.json."""
        return self.dir / "metrics.provenance.json"


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index)


@dataclass(frozen=True)
class RunPaths:
    """Paths inside one run directory."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # corpus
    @property
    def corpus(self) -> Path:
        return self.root / "corpus.parquet"

    @property
    def corpus_config(self) -> Path:
        return self.root / "corpus.config.json"

    @property
    def corpus_record(self) -> Path:
        return self.root / "corpus.provenance.json"

    # activation store
    @property
    def acts(self) -> Path:
        return self.root / "acts"

    @property
    def acts_manifest(self) -> Path:
        return self.acts / MANIFEST

    @property
    def acts_record(self) -> Path:
        return self.acts / PROVENANCE

    @property
    def acts_tokens(self) -> Path:
        """LM runs: the token contexts (input_ids, attention_mask, text_row, keep)."""
        return self.acts / TOKEN_CONTEXTS

    @property
    def acts_index(self) -> Path:
        """LM runs: store row -> context, position, token, corpus row, doc."""
        return self.acts / TOKEN_INDEX

    def acts_part(self, rank: int) -> Path:
        """LM runs under torchrun: the shards one rank wrote (merged into acts/manifest.json)."""
        return self.acts / "parts" / f"rank-{rank:05d}"

    # sae
    @property
    def sae(self) -> Path:
        return self.root / "sae"

    def sae_folder(self, name: str | None) -> Path:
        """The SAE folder an `--sae` option names: a folder inside the run (`sae`,
        `sae-4096-k16`) when there is one, else a path; none given: the run's `sae/`."""
        if not name:
            return self.sae
        if name.startswith(HUB_PREFIX):  # a hub name, fetched by whoever reads it
            return Path(name)
        inside = self.root / name
        return inside if inside.exists() or not Path(name).exists() else Path(name)

    @property
    def sae_config(self) -> Path:
        return self.sae / "config.json"

    @property
    def sae_weights(self) -> Path:
        return self.sae / "sae.safetensors"

    @property
    def sae_metrics(self) -> Path:
        return self.sae / "metrics.json"

    @property
    def train_log(self) -> Path:
        return self.sae / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.sae / "checkpoints"

    def sae_variant(self, d_sae: int, k: int | None) -> Path:
        """Folder of a further SAE trained in the same pass: sae-<d_sae>-k<k> (or sae-<d_sae>)."""
        return self.root / (f"sae-{d_sae}-k{k}" if k is not None else f"sae-{d_sae}")

    def sae_folders(self) -> list[Path]:
        """Every SAE folder of the run that holds an SAE: sae/, then the sae-*/ of a sweep."""
        found = [self.sae, *sorted(self.root.glob("sae-*"))]
        return [p for p in found if (p / STAGE_CONFIG).is_file() and (p / SAE_WEIGHTS).is_file()]

    # latents
    @property
    def latents(self) -> Path:
        return self.root / "latents"

    @property
    def features(self) -> Path:
        return self.latents / "features.parquet"

    @property
    def cooccurrence(self) -> Path:
        return self.latents / "cooccurrence.safetensors"

    @property
    def plots(self) -> Path:
        return self.latents / "plots"

    @property
    def latents_manifest(self) -> Path:
        return self.latents / MANIFEST

    @property
    def latents_config(self) -> Path:
        return self.latents / STAGE_CONFIG

    @property
    def latents_record(self) -> Path:
        return self.latents / PROVENANCE

    @property
    def latent_index(self) -> Path:
        """Row of the store -> doc and token position."""
        return self.latents / "index.parquet"

    # interpretation and scores
    @property
    def interp(self) -> Path:
        return self.root / "interp"

    @property
    def keywords(self) -> Path:
        return self.interp / "keywords.parquet"

    @property
    def keywords_config(self) -> Path:
        return self.interp / "keywords.config.json"

    @property
    def keywords_record(self) -> Path:
        return self.interp / "keywords.provenance.json"

    @property
    def explanations(self) -> Path:
        """One JSON line per explained feature, appended as features finish."""
        return self.interp / "explanations.jsonl"

    @property
    def explanations_config(self) -> Path:
        return self.interp / "explanations.config.json"

    @property
    def explanations_record(self) -> Path:
        return self.interp / "explanations.provenance.json"

    @property
    def explanations_usage(self) -> Path:
        """Requests and tokens the explain stage spent."""
        return self.interp / "explanations.usage.json"

    @property
    def llm_cache(self) -> Path:
        """LLM responses keyed by (model, messages, parameters): a re-run costs nothing twice."""
        return self.root / "llm-cache"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    def score(self, scorer: str) -> Path:
        return self.scores / f"{scorer}.parquet"

    def score_config(self, scorer: str) -> Path:
        return self.scores / f"{scorer}.config.json"

    def score_record(self, scorer: str) -> Path:
        return self.scores / f"{scorer}.provenance.json"

    def score_summary(self, scorer: str) -> Path:
        """Mean/median of real and shuffled-control scores."""
        return self.scores / f"{scorer}.summary.json"

    def score_plot(self, scorer: str) -> Path:
        """Histogram of real versus shuffled-control scores."""
        return self.scores / f"{scorer}.png"

    def score_results(self, scorer: str) -> Path:
        """LLM scorers: one JSON line per scored feature, appended as features finish."""
        return self.scores / f"{scorer}.jsonl"

    def score_usage(self, scorer: str) -> Path:
        """LLM scorers: requests and tokens spent."""
        return self.scores / f"{scorer}.usage.json"

    # generation steering (LM runs)
    @property
    def steer(self) -> Path:
        return self.root / "steer"

    @property
    def steer_generations(self) -> Path:
        """Unsteered and steered continuations side by side, with their measures."""
        return self.steer / "generations.parquet"

    @property
    def steer_ranking(self) -> Path:
        """Features ranked by output score."""
        return self.steer / "ranking.parquet"

    @property
    def steer_sweep(self) -> Path:
        return self.steer / "sweep.parquet"

    @property
    def steer_summary(self) -> Path:
        return self.steer / "summary.json"

    @property
    def steer_plot(self) -> Path:
        return self.steer / "sweep.png"

    @property
    def steer_record(self) -> Path:
        return self.steer / PROVENANCE

    # feature families (saescope.families)
    @property
    def families(self) -> Path:
        return self.root / "families"

    @property
    def families_table(self) -> Path:
        """One row per family: parent, members, statistics, name."""
        return self.families / "families.parquet"

    @property
    def family_members(self) -> Path:
        """One row per (family, feature): its parent in the family tree and its depth."""
        return self.families / "members.parquet"

    @property
    def family_tree(self) -> Path:
        return self.families / "tree.json"

    @property
    def family_splits(self) -> Path:
        """Feature splitting across SAE widths."""
        return self.families / "splits.parquet"

    @property
    def families_summary(self) -> Path:
        return self.families / "summary.json"

    @property
    def families_config(self) -> Path:
        return self.families / STAGE_CONFIG

    @property
    def families_record(self) -> Path:
        return self.families / PROVENANCE

    # search index over acts/ (one folder per kind: exact, ivf) and its evaluation
    @property
    def index(self) -> Path:
        return self.root / "index"

    def index_dir(self, kind: str) -> Path:
        return self.index / kind

    def index_manifest(self, kind: str) -> Path:
        return self.index_dir(kind) / MANIFEST

    def index_config(self, kind: str) -> Path:
        return self.index_dir(kind) / STAGE_CONFIG

    def index_record(self, kind: str) -> Path:
        return self.index_dir(kind) / PROVENANCE

    def index_block(self, kind: str, i: int) -> Path:
        """Exact index: the normalised rows of store shard i."""
        return self.index_dir(kind) / f"block-{i:05d}.safetensors"

    def ivf_trained(self) -> Path:
        """Approximate index: the trained, empty faiss index."""
        return self.index_dir("ivf") / "trained.faiss"

    def ivf_part(self, i: int) -> Path:
        """Approximate index while it is built: the rows of store shard i."""
        return self.index_dir("ivf") / f"part-{i:05d}.faiss"

    def ivf_index(self) -> Path:
        return self.index_dir("ivf") / "index.faiss"

    @property
    def search(self) -> Path:
        return self.root / "search"

    @property
    def search_eval(self) -> Path:
        """search-eval: one row per query, edit and strength."""
        return self.search / "eval.parquet"

    @property
    def search_eval_summary(self) -> Path:
        return self.search / "eval.summary.json"

    @property
    def search_eval_plot(self) -> Path:
        return self.search / "eval.png"

    @property
    def search_eval_config(self) -> Path:
        return self.search / "eval.config.json"

    @property
    def search_eval_record(self) -> Path:
        return self.search / "eval.provenance.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_index(self) -> Path:
        return self.report / "index.html"

    @property
    def report_plots(self) -> Path:
        return self.report / "plots"

    @property
    def report_config(self) -> Path:
        return self.report / STAGE_CONFIG

    @property
    def report_record(self) -> Path:
        return self.report / PROVENANCE
