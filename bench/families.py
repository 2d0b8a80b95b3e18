"""Families at scale: 12,288 features from a 100,000-row latent cache in under a minute.

Builds once, under `bench/out/families/`:
  base     `--unique-texts` news chunks embedded with the packaged MiniLM
  run      `--rows` rows: each a base text's embedding plus Gaussian noise (cosine ~0.9 to
           it), so every row is a distinct vector near a real text
  sae      TopK SAEs trained in one sweep pass on the run (`saescope train --d-sae 12288
           3072 --k 64`, `--epochs` epochs): sae/ (12288) and sae-3072-k64/
  latents  the latent cache of sae/ with its co-occurrence table (`saescope latents`)
then runs `saescope families` in fresh subprocesses on 2 torch threads and prints
for each: wall time of the stage, peak RSS (`ru_maxrss` of that subprocess), the
co-occurring pairs it read, families found, coverage and the block-diagonal lift.

  families          `--splits false`: the co-occurrence families alone (target < 60 s)
  families+splits   the same plus splitting of the 3072 SAE's features by the 12288's
                    (the 3072 SAE encodes the store once)

    python bench/families.py                    # 100,000 rows, 12,288 features
    python bench/families.py --rows 20000       # a quick look

Results go to bench/out/families/results.json.
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

OUT = Path(__file__).resolve().parent / "out" / "families"
TARGET_S = 60.0
MODES = ("families", "families+splits")


def build(rows: int, base: Path, epochs: float) -> Path:
    """The run (see the module docstring); each part is reused when already built."""
    import numpy as np
    import torch

    from saescope.latents import LatentsConfig
    from saescope.latents import run as latents
    from saescope.paths import RunPaths
    from saescope.store import ActivationStore, StoreWriter
    from saescope.train import TrainConfig
    from saescope.train import run as train

    run = OUT / f"run-{rows}"
    rp = RunPaths(run)
    if not rp.acts_manifest.exists():
        shutil.rmtree(run, ignore_errors=True)
        bstore = ActivationStore(base / "acts")
        emb = bstore.rows(np.arange(bstore.count)).float()  # (n_texts, d_in)
        which = np.random.default_rng(rows).integers(0, len(emb), size=rows)
        g = torch.Generator().manual_seed(rows)
        d_in = emb.shape[1]
        scale = emb.norm(dim=1).mean() * 0.5 / math.sqrt(d_in)
        writer = StoreWriter(rp.acts, d_in, "float32", 16384, dict(bstore.meta))
        for lo in range(0, rows, 16384):
            idx = torch.from_numpy(which[lo : lo + 16384])
            writer.append(emb[idx] + scale * torch.randn(len(idx), d_in, generator=g))
        writer.close()
    cfg = TrainConfig(run=str(run), d_sae=[12288, 3072], k=[64], batch_size=4096, epochs=epochs)
    train(cfg)
    if not rp.cooccurrence.exists():
        latents(LatentsConfig(run=str(run), device="cpu", plots=False))
    return run


def child(mode: str, job: dict) -> dict:
    """One step in this (fresh) process; its peak RSS is this process's alone."""
    import torch

    if mode == "build":
        t0 = time.perf_counter()
        run = build(job["rows"], news_base_run(OUT, job["unique_texts"]), job["epochs"])
        return {"run": str(run), "seconds": time.perf_counter() - t0}
    from saescope.families.stage import run as families
    from saescope.families.tables import read_families
    from saescope.options.families import FamiliesConfig

    torch.set_num_threads(2)
    from saescope.paths import RunPaths

    run = job["run"]
    shutil.rmtree(RunPaths(run).families, ignore_errors=True)  # a re-run would skip
    cfg = FamiliesConfig(run=run, splits=mode == "families+splits", progress=False)
    t0 = time.perf_counter()
    families(cfg)
    seconds = time.perf_counter() - t0
    found = read_families(run)
    assert found is not None
    s = found.summary
    return {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pairs": s["cooccurring_pairs"],
        "families": s["n_families"],
        "coverage": s["coverage"],
        "block_ratio_lift": s["block_ratio_lift"],
        "mean_size": s["mean_size"],
        "max_size": s["max_size"],
        "split_pairs": s["split_pairs"],
    }


def measure(mode: str, job: dict) -> dict:
    """`child(mode, job)` in a subprocess. The parent stays small (no torch, no data):
    Linux counts the memory of the process that forked into the child's ru_maxrss."""
    cmd = [sys.executable, __file__, "--child", mode, json.dumps(job)]
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - t0  # with the imports
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--unique-texts", type=int, default=10_000, help="news chunks reused as rows")
    ap.add_argument("--epochs", type=float, default=3.0, help="training epochs of the SAEs")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    ap.add_argument("--child", nargs=2, metavar=("MODE", "JOB"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]))))
        return
    job = {"rows": args.rows, "unique_texts": args.unique_texts, "epochs": args.epochs}
    built = measure("build", job)
    run = Path(built["run"])
    print(f"run {run} ready ({built['seconds']:.0f} s)", flush=True)
    manifest = json.loads((run / "latents" / "manifest.json").read_text())
    results = {"rows": manifest["n_rows"], "d_sae": manifest["d_sae"], "nnz": manifest["nnz"]}
    print(
        f"{results['rows']:,} rows, d_sae {results['d_sae']:,}, "
        f"{results['nnz'] / results['rows']:.1f} non-zeros a row; load {os.getloadavg()[0]:.1f}"
    )
    for mode in args.modes.split(","):
        r = measure(mode, {"run": str(run)})
        results[mode] = r
        verdict = "PASS" if r["seconds"] < TARGET_S else "FAIL"
        print(
            f"{mode:>16}: {r['seconds']:6.1f} s ({verdict}: target < {TARGET_S:.0f} s)  "
            f"peak RSS {r['peak_rss_mb']:,.0f} MB  {r['pairs']:,} co-occurring pairs  "
            f"{r['families']} families (mean {r['mean_size']:.1f}, largest {r['max_size']}), "
            f"coverage {r['coverage']:.1%}, block-diagonal {r['block_ratio_lift']:.1f}x random",
            flush=True,
        )
        for p in r["split_pairs"]:
            if "parents" in p:
                print(
                    f"{'':>18}splits {p['small_d_sae']} -> {p['large_d_sae']}: "
                    f"{p['parents_split_in_2_or_more']} of {p['parents']} split in 2+, "
                    f"mean cosine {p['mean_cosine']:.2f}"
                )
    results["loadavg"] = os.getloadavg()[0]
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
