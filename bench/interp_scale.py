"""Do the interpretation stages scale? latents + keywords + score at 100k, 300k and 1M rows.

For each size in `--sizes`, builds a run under `bench/out/interp_scale/`:
  corpus   real texts: `--unique-texts` chunks of the packaged news corpus
           (`saescope corpus --source news`), reused to fill the rows; documents of
           12 consecutive rows (like an article cut into chunks), so the document
           split is exercised
  acts     each row is its text's MiniLM embedding plus Gaussian noise (cosine ~0.9
           to the text's), so every row is a distinct vector; the store's metadata
           says MiniLM, so the scorer reads held-out rows from the store as it would
           on a real run
  sae      a TopK SAE (d_sae 3072, k 32 by default): random unit decoder rows, tied
           encoder, and an encoder bias falling with the log of a random rank, so
           feature densities spread over orders of magnitude (Zipf-like), shifted so
           that nearly every row has k non-zeros (right-skewed activations)
then runs each stage in its own subprocess (2 torch threads) and prints its wall
time and peak RSS (`ru_maxrss` of that subprocess). `keywords` and `score` name and
score `--features` features (spread over the density ranks, the densest included):
embedding phrases with MiniLM on 2 cores is the slow part and does not grow with rows,
while every part that does (reading the cache into one CSC matrix, the document
split, the naming texts' phrase counts, the per-feature row selections, the
held-out rows' vectors) runs on all rows. Finally: the growth exponent of each
stage's time between consecutive sizes (1.0 = linear) and the peak RSS at the
largest size, against the targets (no faster than linear; under 2 GB at 1M rows).

    python bench/interp_scale.py                          # 100k, 300k, 1M rows
    python bench/interp_scale.py --sizes 20000,50000      # a quick look

The first run embeds the unique texts once (about a minute on 2 cores); runs are
rebuilt only when missing. Results go to bench/out/interp_scale/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _runs import news_base_run

OUT = Path(__file__).resolve().parent / "out" / "interp_scale"
STAGES = ("latents", "keywords", "score")
ROWS_PER_DOC = 12
RSS_TARGET_MB = 2048


def build(rows: int, base: Path, d_sae: int, k: int, chunk: int = 65536) -> Path:
    """The run of `rows` rows (see the module docstring); reused when already built."""
    import numpy as np
    import pandas as pd
    import torch

    from saescope.paths import RunPaths
    from saescope.sae import SAE, SAEConfig
    from saescope.store import ActivationStore, StoreWriter

    run = OUT / f"run-{rows}-{d_sae}-{k}"
    rp = RunPaths(run)
    if rp.sae_weights.exists() and rp.corpus.exists():
        return run
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    bstore = ActivationStore(base / "acts")
    emb = bstore.rows(np.arange(bstore.count)).float()  # (n_texts, d_in)
    texts = pd.read_parquet(base / "corpus.parquet")["text"].to_numpy()
    rng = np.random.default_rng(rows)
    which = rng.integers(0, len(texts), size=rows)  # text of each row
    pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(rows)],
            "doc": [f"doc-{i // ROWS_PER_DOC}" for i in range(rows)],
            "text": texts[which],
        }
    ).to_parquet(rp.corpus, index=False)
    g = torch.Generator().manual_seed(rows)
    d_in = emb.shape[1]
    writer = StoreWriter(rp.acts, d_in, "float32", 16384, dict(bstore.meta))
    scale = emb.norm(dim=1).mean() * 0.5 / math.sqrt(d_in)
    for lo in range(0, rows, chunk):
        idx = torch.from_numpy(which[lo : lo + chunk])
        writer.append(emb[idx] + scale * torch.randn(len(idx), d_in, generator=g))
    writer.close()
    sae = SAE(SAEConfig("topk", d_in, d_sae, k=k))
    with torch.no_grad():
        w = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_dec.copy_(emb.mean(0))
        # bias falling with log(rank): densities from ~0.5 down to ~1e-4 (Zipf-like); then
        # shifted so that 99% of rows have k positive pre-activations (k non-zeros a row)
        idx = torch.randint(0, len(emb), (20000,), generator=g)
        sample = emb[idx] + scale * torch.randn(len(idx), d_in, generator=g)
        h = (sample - emb.mean(0)) @ w.T  # (20000, d_sae)
        rank = torch.randperm(d_sae, generator=g).float() + 1
        bias = -0.35 * float(h.std()) * torch.log(rank)
        kth = torch.topk(h + bias, k, dim=1).values[:, -1]
        sae.b_enc.copy_(bias - float(torch.quantile(kth, 0.01)))
    sae.save(rp.sae)
    return run


def child(stage: str, job: dict) -> dict:
    """One step, in this (fresh) process; its peak RSS is this process's alone."""
    import torch

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    out: dict = {}
    run = Path(job["run"])
    if stage == "build":
        build(job["rows"], news_base_run(OUT, job["unique_texts"]), job["d_sae"], job["k"])
    elif stage == "latents":
        from saescope.latents import LatentsConfig
        from saescope.latents import run as latents

        latents(LatentsConfig(run=str(run), device="cpu", overwrite=True))
        out["nnz"] = json.loads((run / "latents" / "manifest.json").read_text())["nnz"]
    elif stage == "keywords":
        from saescope.interp.keywords import KeywordsConfig
        from saescope.interp.keywords import run as keywords

        feats, out["density"] = pick_features(run, job["features"])
        cfg = KeywordsConfig(run=str(run), features=feats, progress=False, overwrite=True)
        t0 = time.perf_counter()  # the stage alone
        keywords(cfg)
    else:
        from saescope.scoring.stage import ScoreConfig
        from saescope.scoring.stage import run as score

        score(ScoreConfig(run=str(run), progress=False, overwrite=True))
    return out | {
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(stage: str, job: dict) -> dict:
    """`child(stage, job)` in a subprocess. The parent stays small (no torch, no data):
    Linux counts the memory of the process that forked into the child's ru_maxrss."""
    cmd = [sys.executable, __file__, "--child", stage, json.dumps(job)]
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{stage} ({job}) failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - t0  # with imports and model loading
    return out


def pick_features(run: Path, n: int) -> tuple[list[int], dict]:
    """n alive features evenly spread over the density ranks, the densest first."""
    import numpy as np
    import pandas as pd

    df = pd.read_parquet(run / "latents" / "features.parquet", columns=["feature", "density"])
    alive = df[df["density"] > 0].sort_values(["density", "feature"], ascending=[False, True])
    at = np.unique(np.linspace(0, len(alive) - 1, min(n, len(alive))).round().astype(int))
    dens = alive["density"].to_numpy()
    stats = {
        "alive": len(alive),
        "density_max": float(dens[0]),
        "density_median": float(np.median(dens)),
        "density_min": float(dens[-1]),
    }
    return sorted(alive["feature"].to_numpy()[at].tolist()), stats


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="100000,300000,1000000", help="rows, comma-separated")
    ap.add_argument("--d-sae", type=int, default=3072)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument(
        "--features", type=int, default=300, help="features named and scored (latents: all)"
    )
    ap.add_argument("--unique-texts", type=int, default=2000, help="news chunks reused as rows")
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "JOB"), help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        print(json.dumps(child(ns.child[0], json.loads(ns.child[1]))))
        return
    sizes = sorted(int(s) for s in ns.sizes.split(","))
    print(
        f"d_sae {ns.d_sae}, k {ns.k}; rows reuse {ns.unique_texts} news chunks, "
        f"{ROWS_PER_DOC} rows per document; keywords and score on {ns.features} features "
        "spread over the density ranks (latents on all); each stage in its own process",
        flush=True,
    )
    results = []
    for rows in sizes:
        run = OUT / f"run-{rows}-{ns.d_sae}-{ns.k}"
        job = {"run": str(run), "rows": rows, "d_sae": ns.d_sae, "k": ns.k}
        job |= {"unique_texts": ns.unique_texts, "features": ns.features}
        built = measure("build", job)["seconds"]
        res: dict = {"rows": rows, "build_seconds": built}
        for stage in STAGES:
            res[stage] = measure(stage, job)
        res["nnz"], d = res["latents"]["nnz"], res["keywords"]["density"]
        results.append(res)
        print(
            f"rows {rows:>9,}  nnz {res['nnz']:>11,}  alive {d['alive']}  density "
            f"max {d['density_max']:.3f} median {d['density_median']:.2e} "
            f"min {d['density_min']:.1e}  (built in {built:.0f} s)",
            flush=True,
        )
        for stage in STAGES:
            m = res[stage]
            print(
                f"  {stage:8s} {m['seconds']:8.1f} s  ({m['process_seconds']:6.1f} s with start-up)"
                f"  {rows / m['seconds']:9,.0f} rows/s  peak RSS {m['peak_rss_mb']:6.0f} MB",
                flush=True,
            )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if len(results) < 2:
        return
    print("time growth exponent between sizes (1.0 = linear; target <= 1.0 within 15% noise)")
    ok_time = True
    for stage in STAGES:
        exps = []
        for a, b in zip(results, results[1:], strict=False):
            e = math.log(b[stage]["seconds"] / a[stage]["seconds"]) / math.log(
                b["rows"] / a["rows"]
            )
            exps.append(e)
        ok_time &= max(exps) <= 1.15
        pairs = ", ".join(
            f"{a['rows']:,}->{b['rows']:,}: {e:.2f}"
            for a, b, e in zip(results, results[1:], exps, strict=False)
        )
        print(f"  {stage:8s} {pairs}")
    last = results[-1]
    rss = {s: last[s]["peak_rss_mb"] for s in STAGES}
    ok_rss = max(rss.values()) < RSS_TARGET_MB
    print(
        f"time no faster than linear in rows: {'PASS' if ok_time else 'FAIL'}\n"
        f"peak RSS at {last['rows']:,} rows: "
        + ", ".join(f"{s} {v:.0f} MB" for s, v in rss.items())
        + f" (target < {RSS_TARGET_MB} MB: {'PASS' if ok_rss else 'FAIL'})"
    )


if __name__ == "__main__":
    main()
