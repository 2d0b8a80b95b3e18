"""Latent caching speed and memory: the latents stage against a bare `sae.encode` loop.

Builds synthetic stores (random normal rows, d_in 384) of each size in `--rows` under
`bench/out/latents/`, with a TopK SAE (default d_sae 3072, k 32: random unit decoder
rows, tied encoder). For each size, in fresh subprocesses on 2 torch threads:

  bare     stream the store (`iter_batches(shuffle=False)`) and `sae.encode` every batch
  latents  `saescope.latents.run` (encode pass + features + co-occurrence + plots); TopK
           SAEs take the sparse path (top-k indices straight into triples)
  latents-dense  the same stage forced onto the path of other architectures:
           dense `sae.encode` codes, then a scan for the non-zeros

and prints rows/s of the encode pass, the ratio of the latent encode pass to the bare
loop (target <= 1.3), the other phases' seconds, and each subprocess's peak RSS
(`ru_maxrss`). Peak RSS should not grow with rows (compare the sizes).

    python bench/latents.py                      # 200,000 and 50,000 rows
    python bench/latents.py --rows 50000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "latents"
MODES = ("bare", "latents", "latents-dense")
D_IN = 384


def build(rows: int, d_sae: int, k: int) -> Path:
    import torch

    from saescope.sae import SAE, SAEConfig
    from saescope.store import StoreWriter

    run = OUT / f"run-{rows}-{d_sae}-{k}"
    if (run / "acts" / "manifest.json").exists() and (run / "sae" / "sae.safetensors").exists():
        return run
    shutil.rmtree(run, ignore_errors=True)
    g = torch.Generator().manual_seed(0)
    writer = StoreWriter(run / "acts", D_IN, "float32", 16384, {"source": "bench"})
    for lo in range(0, rows, 16384):
        writer.append(torch.randn(min(16384, rows - lo), D_IN, generator=g))
    writer.close()
    sae = SAE(SAEConfig("topk", D_IN, d_sae, k=k))
    with torch.no_grad():
        w = torch.nn.functional.normalize(torch.randn(d_sae, D_IN, generator=g), dim=1)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
    sae.save(run / "sae")
    return run


def child(mode: str, run: Path, batch_size: int) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    torch.set_num_threads(2)
    from saescope.latents import LatentsConfig
    from saescope.latents import run as latents
    from saescope.sae import SAE
    from saescope.store import ActivationStore

    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "bare":
        store = ActivationStore(run / "acts")
        sae = SAE.load(run / "sae").eval()
        n = 0
        with torch.inference_mode():
            for x in store.iter_batches(batch_size, shuffle=False):
                sae.encode(x)
                n += len(x)
        out = {
            "encode": time.perf_counter() - t0,
            "encode_cpu": time.process_time() - c0,
            "rows": n,
        }
    else:
        if mode == "latents-dense":  # the path of non-TopK SAEs: dense codes, then a scan
            from saescope import latents as stage

            def dense_scan(sae, x):
                codes = sae.encode(x)
                with stage.one_thread():
                    r, f = codes.nonzero(as_tuple=True)
                    return r, f, codes[r, f]

            stage.encode_sparse = dense_scan
        shutil.rmtree(run / "latents", ignore_errors=True)
        cfg = LatentsConfig(run=str(run), batch_size=batch_size, device="cpu")
        latents(cfg)
        saved = json.loads((run / "latents" / "config.json").read_text())
        manifest = json.loads((run / "latents" / "manifest.json").read_text())
        out = dict(saved["seconds"], rows=manifest["n_rows"], nnz=manifest["nnz"])
        out["encode_cpu"] = saved["cpu_seconds"]["encode"]
        out["total"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def measure(mode: str, run: Path, batch_size: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(run), "--batch-size", str(batch_size)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} on {run} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", default="200000,50000", help="store sizes, comma-separated")
    ap.add_argument("--d-sae", type=int, default=3072)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs of each mode (interleaved); the fastest counts"
    )
    ap.add_argument("--child", nargs=2, metavar=("MODE", "RUN"), help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        print(json.dumps(child(ns.child[0], Path(ns.child[1]), ns.batch_size)))
        return
    results = []
    for rows in [int(r) for r in ns.rows.split(",")]:
        run = build(rows, ns.d_sae, ns.k)
        # modes interleaved, fastest of the repeats kept: other jobs on the machine shift
        # wall times by several x over minutes, and this spreads that evenly
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for _ in range(ns.repeats):
            for mode in MODES:
                runs[mode].append(measure(mode, run, ns.batch_size))
        bare, lat, dense = (min(runs[m], key=lambda r: r["encode"]) for m in MODES)
        ratio = lat["encode"] / bare["encode"]
        cpu_ratio = lat["encode_cpu"] / bare["encode_cpu"]
        results.append({"rows": rows, "ratio": ratio, "cpu_ratio": cpu_ratio, "runs": runs})
        print(
            f"rows {rows:>8,}  d_sae {ns.d_sae} k {ns.k}  nnz {lat['nnz']:,}"
            f"  (fastest of {ns.repeats})\n"
            f"  bare encode loop     {bare['encode']:7.2f} s  {rows / bare['encode']:9,.0f} rows/s"
            f"  cpu {bare['encode_cpu']:6.2f} s  peak RSS {bare['peak_rss_mb']:5.0f} MB\n"
            f"  latents encode pass  {lat['encode']:7.2f} s  {rows / lat['encode']:9,.0f} rows/s"
            f"  cpu {lat['encode_cpu']:6.2f} s  ratio {ratio:.2f} wall, {cpu_ratio:.2f} cpu"
            f" (target <= 1.3: {'PASS' if ratio <= 1.3 else 'FAIL'})\n"
            f"  non-TopK path (dense codes + scan) {dense['encode']:7.2f} s"
            f"  ratio {dense['encode'] / bare['encode']:.2f} wall,"
            f" {dense['encode_cpu'] / bare['encode_cpu']:.2f} cpu\n"
            f"  then features {lat['features']:.2f} s, co-occurrence {lat['cooccurrence']:.2f} s;"
            f" whole stage {lat['total']:.2f} s ({rows / lat['total']:,.0f} rows/s)"
            f"  peak RSS {lat['peak_rss_mb']:5.0f} MB",
            flush=True,
        )
    if len(results) > 1:
        rss = [max(x["peak_rss_mb"] for x in r["runs"]["latents"]) for r in results]
        print(
            f"latents peak RSS by rows: {dict(zip([r['rows'] for r in results], rss, strict=True))}"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
