"""Peak memory of streaming a large activation store through the shuffle buffer.

Builds (once) a 1,000,000 x 384 float32 store of random rows under bench/out/,
then, in a fresh process, streams every row in shuffled batches of 4096 through
a 65,536-row shuffle buffer and prints rows/s and peak RSS. Target: < 600 MB.

    python bench/store_memory.py [--rows 1000000] [--buffer 65536]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out" / "store_memory"
TARGET_MB = 600


def build(path: Path, rows: int, d_in: int) -> None:
    import torch

    from saescope import ActivationStore, SaescopeError, StoreWriter

    try:
        if len(ActivationStore(path, verify=False)) == rows:
            return
    except SaescopeError:
        pass
    gen = torch.Generator().manual_seed(0)
    w = StoreWriter(
        path, d_in, "float32", shard_rows=16384, meta={"bench": "store_memory"}, overwrite=True
    )
    for lo in range(0, rows, 16384):
        w.append(torch.randn(min(16384, rows - lo), d_in, generator=gen))
    w.close()


def stream(path: Path, buffer_rows: int) -> dict:
    from saescope import ActivationStore

    store = ActivationStore(path)
    t0 = time.perf_counter()
    n = 0
    for x in store.iter_batches(4096, buffer_rows=buffer_rows, seed=0):
        n += len(x)
    dt = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": n, "seconds": dt, "rows_per_s": n / dt, "peak_rss_mb": peak_mb}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--d-in", type=int, default=384)
    ap.add_argument("--buffer", type=int, default=65536)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = OUT / f"{args.rows}x{args.d_in}"
    if args.child:
        print(json.dumps(stream(path, args.buffer)))
        return 0
    print(f"building {args.rows:,} x {args.d_in} float32 store in {path} (once) ...", flush=True)
    build(path, args.rows, args.d_in)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--rows",
        str(args.rows),
        "--d-in",
        str(args.d_in),
        "--buffer",
        str(args.buffer),
    ]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    store_mb = args.rows * args.d_in * 4 / 2**20
    print(f"store size          {store_mb:10.0f} MB")
    print(
        f"shuffle buffer      {args.buffer:10,d} rows ({args.buffer * args.d_in * 4 / 2**20:.0f} MB)"
    )
    print(f"rows streamed       {res['rows']:10,d}")
    print(f"throughput          {res['rows_per_s']:10,.0f} rows/s")
    print(
        f"peak RSS            {res['peak_rss_mb']:10.0f} MB  (target < {TARGET_MB} MB: "
        f"{'PASS' if res['peak_rss_mb'] < TARGET_MB else 'FAIL'})"
    )
    return 0 if res["peak_rss_mb"] < TARGET_MB and res["rows"] == args.rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
