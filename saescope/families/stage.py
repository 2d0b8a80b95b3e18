"""Families stage: group features into families from their co-occurrence, and match
features across SAE widths.

In: the latent cache (`latents/cooccurrence.safetensors`, `latents/features.parquet`),
the names when they exist (`interp/keywords.parquet`, `interp/explanations.jsonl`),
and for splitting the store and the run's other SAEs (`sae-<d_sae>-k<k>/`, or
`--split-saes`). Out, under `families/`: families.parquet, members.parquet,
tree.json, splits.parquet, summary.json, config.json, provenance.json (see
`saescope.families.tables`; docs/families.md).

Method (`--method saerch`, seed 004): co-occurrence counts normalised by the sparser
feature's count (+ 1), edges below 0.1 dropped, a maximum spanning tree whose edges
point from the denser feature (parent) to the sparser (child); a family is a parent
with at least 3 children and its descendants (at least 4), nested ones too; 4 rounds,
each on a tree rebuilt without the parents found so far; duplicates (Jaccard of the
members above 0.6) merged. `--method thesis` is seeds 000/001's variant. Each family
gets statistics (size, depth, parent-child versus child-child co-occurrence), the run
a block-diagonal co-occurrence ratio against random permutations and a coverage, and
each family a name from its parent's and children's keywords (or explanations).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from saescope import provenance
from saescope.config import config_to_dict
from saescope.errors import SaescopeError
from saescope.families import splits as splitting
from saescope.families.methods import Rules, rules
from saescope.families.naming import family_name
from saescope.families.pairs import Pairs
from saescope.families.stats import family_stats, summary
from saescope.families.tables import FORMAT, families_frame, members_frame, tree_json
from saescope.families.trees import Family, find_families
from saescope.features import read_cooccurrence
from saescope.io import atomic_path, sha256_file, write_json
from saescope.options.families import FamiliesConfig
from saescope.paths import RunPaths
from saescope.report.data import Annotations, load_annotations

if TYPE_CHECKING:
    from saescope.families.naming import FamilyName
    from saescope.latents import LatentCache

# options that change no output
_IGNORED = ("run", "overwrite", "progress", "batch_size")


def joinable(features: pd.DataFrame, r: Rules, ann: Annotations) -> np.ndarray:
    """(d_sae,) bool: the features that may join a tree under the rules `r`."""
    count = features["count"].to_numpy()
    keep = (count >= r.min_count) & (features["density"].to_numpy() <= r.max_density)
    if r.keyword_percentile is not None:
        if not ann.keywords:
            raise SaescopeError(
                f"the {r.method} method keeps features by their keyword score; run "
                "`saescope keywords` first (or pass --keyword-percentile 0)"
            )
        top = np.zeros(len(count))  # a feature without keywords scores 0, as in the thesis
        for f, kw in ann.keywords.items():
            if kw.scores:
                top[f] = kw.scores[0]
        alive = count > 0
        cut = np.percentile(top[alive], r.keyword_percentile) if alive.any() else 0.0
        keep &= top >= cut
    return keep


def _order(families: list[Family]) -> list[Family]:
    """Largest family first (then the earlier round, then the lower parent id)."""
    return sorted(families, key=lambda f: (-len(f.tree), f.round, f.parent))


def _upstream(rp: RunPaths, others: list[splitting.OtherSAE]) -> dict[str, str]:
    up = {
        "latents": provenance.artifact_id(rp.latents_manifest),
        "features": sha256_file(rp.features),
        "cooccurrence": sha256_file(rp.cooccurrence),
    }
    for name, path in (("keywords", rp.keywords), ("explanations", rp.explanations)):
        if path.exists():
            up[name] = sha256_file(path)
    if others:
        up |= {"acts": provenance.artifact_id(rp.acts_manifest)} | splitting.upstream(others)
    return up


def _check_inputs(rp: RunPaths, run: str) -> None:
    from saescope.latents import LatentCache

    LatentCache(run)  # a run without a (finished) latent cache: one clear error
    if not rp.features.exists():
        raise SaescopeError(f"{rp.features} is missing; re-run `saescope latents --run {run}`")
    if not rp.cooccurrence.exists():
        raise SaescopeError(
            f"no co-occurrence table at {rp.cooccurrence}: the latent cache was made with "
            f"--cooccurrence false; re-run `saescope latents --run {run} --cooccurrence true "
            "--overwrite`"
        )


@provenance.locked("families")
def run(cfg: FamiliesConfig) -> Path:
    """Write `families/` for `cfg`; skip when it is already there. Returns the folder."""
    from saescope.latents import LatentCache

    rp = RunPaths(cfg.run)
    r = rules(cfg)
    _check_inputs(rp, cfg.run)
    cache = LatentCache(cfg.run)
    cache_sae = cache.sae_dir()
    others = (
        splitting.other_saes(rp, cache_sae, cache.sae_sha256, cfg.split_saes) if cfg.splits else []
    )
    record = provenance.Record.make(
        rp.families_record, "families", cfg, _upstream(rp, others), _IGNORED
    )
    parts = (rp.family_members, rp.family_splits, rp.families_summary)
    if record.decide(cfg.overwrite, rp.families_table, whole=parts) is provenance.Decision.SKIP:
        return rp.families
    features = cache.features()
    pairs = Pairs(read_cooccurrence(rp.cooccurrence))
    ann = load_annotations(cfg.run)
    nodes = joinable(features, r, ann)
    found, _ = find_families(pairs, nodes, r)
    families = _order(found)
    stats = [family_stats(f, pairs) for f in families]
    names = [family_name(f, ann) for f in families]
    alive = features["count"].to_numpy() > 0
    summ = summary(families, stats, pairs, nodes, alive)
    del pairs  # the co-occurrence table is done with before the splits encode the store
    split_df, split_pairs = _splits(cfg, rp, cache, cache_sae, others)
    summ = {
        "format": FORMAT,
        **summ,
        "rules": r.to_json(),
        "cache_sae": splitting.sae_name(rp, cache_sae),
        "split_pairs": split_pairs,
    }
    record.start()
    rp.families.mkdir(parents=True, exist_ok=True)
    for frame, path in (
        (families_frame(families, stats, names), rp.families_table),
        (members_frame(families), rp.family_members),
        (split_df, rp.family_splits),
    ):
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
    write_json(rp.family_tree, tree_json(families, names, r.method))
    write_json(rp.families_summary, summ)
    write_json(rp.families_config, config_to_dict(cfg))
    record.finish({"n_families": len(families), "rules": r.to_json()})
    _print_summary(summ, families, names)
    return rp.families


def _splits(
    cfg: FamiliesConfig,
    rp: RunPaths,
    cache: LatentCache,
    cache_sae: Path,
    others: list[splitting.OtherSAE],
) -> tuple[pd.DataFrame, list[dict[str, object]]]:
    """The split table of the cache's SAE with every other SAE, and each pair's summary."""
    if not others:
        return splitting.empty_table(), []
    from saescope.sae import SAE
    from saescope.store import ActivationStore

    store = ActivationStore(rp.acts, verify=False)
    own = SAE.load(cache_sae)
    codes = splitting.cache_codes(cache.triples(), cache.d_sae)
    frames: list[pd.DataFrame] = []
    pairs: list[dict[str, object]] = []
    name = splitting.sae_name(rp, cache_sae)
    for other in others:
        df = splitting.pair_table(
            name, own, codes, other, store, cfg.batch_size, cfg.split_min_cosine, cfg.progress
        )
        if df is None:
            pairs.append({"sae": other.name, "skipped": "same width as the latent cache's SAE"})
            continue
        frames.append(df)
        pairs.append({"sae": other.name, **(splitting.pair_summary(df) if len(df) else {})})
    table = pd.concat(frames) if frames else splitting.empty_table()
    return splitting.typed(table), pairs


def _print_summary(summ: dict[str, Any], families: list[Family], names: list[FamilyName]) -> None:
    cov = summ["coverage"]
    lift = summ["block_ratio_lift"]
    lift_text = f", block-diagonal co-occurrence {lift:.1f}x random" if lift else ""
    print(
        f"found {summ['n_families']} families covering {cov:.1%} of the alive features{lift_text}"
    )
    for fam, name in list(zip(families, names, strict=True))[:5]:
        label = name.name or "(no names: run `saescope keywords`)"
        print(f"  family of feature {fam.parent} ({len(fam.members)} features): {label}")
    for p in summ["split_pairs"]:
        if "parents" in p:
            print(
                f"  splits {p['small_d_sae']} -> {p['large_d_sae']}: {p['parents_split_in_2_or_more']}"
                f" of {p['parents']} features split in 2 or more (mean cosine {p['mean_cosine']:.2f})"
            )
