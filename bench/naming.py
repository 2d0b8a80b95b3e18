"""Benchmark: how good are keyword names, judged by a scorer model the namer did not use?

On one finished run (corpus, acts, sae, latents: `make demo` gives one), names every
feature with each keyword variant and scores every variant with the embedding scorer
twice: with the run's own sentence model (MiniLM, the model the names were made
with) and with an independent one (the packaged all-mpnet-base-v2). Prints, per
variant, mean and median AUC and the shuffled control under both scorers, and the
share of "specific-word" features whose name carries that word:

  a feature has a specific word when a word of 4+ letters occurs in at least 4 of
  its top texts (latents/features.parquet `top_rows`) and at least two thirds of
  all corpus texts holding it are among those top texts ("jenner", "capone").

Each variant runs in its own run folder under --out that links the run's corpus,
acts, sae and latents, so the source run is never changed.

    python bench/naming.py --run runs/demo [--variants contrastive,contrastive-no-sae,thesis]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from saescope.corpus import read_corpus
from saescope.interp.keywords import KeywordsConfig
from saescope.interp.keywords import run as keywords
from saescope.paths import RunPaths
from saescope.scoring.stage import ScoreConfig
from saescope.scoring.stage import run as score

VARIANTS = {
    "contrastive": {"method": "contrastive"},
    "contrastive-row-split": {"method": "contrastive", "split": "row"},  # the split before
    "contrastive-no-sae": {"method": "contrastive", "sae_weight": 0.0},
    "thesis": {"method": "thesis"},
}
SCORERS = {"minilm": None, "mpnet": "all-mpnet-base-v2"}
WORD = re.compile(r"[a-z]{4,}")


def variant_run(src: Path, dest: Path) -> Path:
    """A run folder whose upstream artifacts are links to `src`'s."""
    dest.mkdir(parents=True, exist_ok=True)
    rs, rd = RunPaths(src), RunPaths(dest)
    for have, link in (
        (rs.corpus, rd.corpus),
        (rs.acts, rd.acts),
        (rs.sae, rd.sae),
        (rs.latents, rd.latents),
    ):
        if not link.exists() and have.exists():
            link.symlink_to(have.resolve())
    return dest


def specific_words(run: Path, min_texts: int = 4, share: float = 2 / 3) -> dict[int, set[str]]:
    """feature -> the words specific to its top texts (see the module docstring)."""
    texts = read_corpus(run)["text"].tolist()
    words = [set(WORD.findall(t.lower())) for t in texts]
    df = Counter(w for ws in words for w in ws)
    feats = pd.read_parquet(RunPaths(run).features, columns=["feature", "dead", "top_rows"])
    out = {}
    for f, dead, top in zip(feats["feature"], feats["dead"], feats["top_rows"], strict=True):
        if dead:
            continue
        counts = Counter(w for r in top for w in words[int(r)])
        spec = {w for w, c in counts.items() if c >= min_texts and c >= share * df[w]}
        if spec:
            out[int(f)] = spec
    return out


def carries(names: pd.DataFrame, spec: dict[int, set[str]]) -> tuple[int, int]:
    """(features with a specific word and a name, those whose name holds one of the words)."""
    ok = names[names["status"] == "ok"]
    named = {
        int(f): " ".join(k).lower() for f, k in zip(ok["feature"], ok["keywords"], strict=True)
    }
    have = [f for f in spec if f in named]
    hit = sum(1 for f in have if spec[f] & set(WORD.findall(named[f])))
    return len(have), hit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", default="runs/demo", help="a finished run (latents done)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="keyword variants to compare")
    ap.add_argument("--scorers", default=",".join(SCORERS), help="scorer models: minilm, mpnet")
    ap.add_argument("--out", default="bench/out/naming", help="variant runs and results go here")
    args = ap.parse_args()
    src = Path(args.run)
    out = Path(args.out)
    spec = specific_words(src)
    rows = []
    for variant in args.variants.split(","):
        rd = variant_run(src, out / variant)
        t0 = time.perf_counter()
        keywords(KeywordsConfig(run=str(rd), progress=False, **VARIANTS[variant]))
        kw_s = time.perf_counter() - t0
        n_spec, hit = carries(pd.read_parquet(RunPaths(rd).keywords), spec)
        for scorer in args.scorers.split(","):
            t0 = time.perf_counter()
            # one scores/ file per scorer model: score into a sub-run that links the names
            srd = variant_run(rd, out / f"{variant}@{scorer}")
            link = RunPaths(srd).interp
            if not link.exists():
                link.symlink_to(RunPaths(rd).interp.resolve())
            score(ScoreConfig(run=str(srd), model=SCORERS[scorer], progress=False))
            summary = json.loads(RunPaths(srd).score_summary("embedding").read_text())
            rows.append(
                {
                    "variant": variant,
                    "scorer": scorer,
                    "n_scored": summary["n_scored"],
                    "mean_auc": summary["mean"],
                    "median_auc": summary["median"],
                    "shuffled_mean": summary["shuffled_mean"],
                    "specific_features": n_spec,
                    "named_by_specific_word": hit,
                    "keywords_s": round(kw_s, 1),
                    "score_s": round(time.perf_counter() - t0, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(
        f"{'variant':<20} {'scorer':<7} {'mean AUC':>8} {'median':>7} {'shuffled':>8} {'specific word in name':>22}"
    )
    for r in rows:
        frac = r["named_by_specific_word"] / max(r["specific_features"], 1)
        print(
            f"{r['variant']:<20} {r['scorer']:<7} {r['mean_auc']:8.3f} {r['median_auc']:7.3f} "
            f"{r['shuffled_mean']:8.3f} {r['named_by_specific_word']:>6}/{r['specific_features']:<5} ({frac:5.1%})"
        )
    (out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
