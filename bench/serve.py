"""The dashboard's start-up and feature-page latency: `saescope serve` as a user starts it.

Three measurements, each against a real `saescope serve` subprocess on a free loopback
port, over HTTP (one keep-alive connection, like a browser's):

  startup   the demo run (`--demo`, default runs/demo): seconds from starting the process
            to its first answer (GET /api/runs), and the seconds its tables took (the
            server prints both); median of `--repeats` starts. Target < 3 s.
  synthetic a sentence run of 12,288 features over 1,000,000 rows, written straight in the
            run-directory formats under bench/out/serve/ (corpus.parquet of 1M short texts,
            a latent cache of 1M x 32 random (row, feature, value) triples in 8 shards,
            features.parquet with 20 top, 50 quantile and 20 random example rows a feature,
            keywords, a TopK SAE of d_in 768): start-up, then the time of
            GET /api/runs/R/features/F for `--requests` random features (p50, p95, max;
            target p95 < 100 ms) and of the browser's searches and sorts, taken once the
            histograms (counted in the background for a cache this large) are ready.
  lm        with --lm RUN (e.g. runs/demo-lm): the same feature-page timing on an LM run,
            whose examples are token windows coloured from the memory-mapped latent shards.

    python bench/serve.py --demo runs/demo --lm runs/demo-lm
    python bench/serve.py --demo bench/out/demo --requests 100

Each server keeps NumPy's BLAS on one thread, as `saescope serve` does. The figures
move with machine load: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "serve"
D_SAE, D_IN, K = 12288, 768, 32
N_ROWS = 1_000_000
SHARDS = 8
WORDS = [
    "bank",
    "rates",
    "inflation",
    "market",
    "shares",
    "court",
    "judge",
    "police",
    "election",
    "vote",
    "minister",
    "storm",
    "flood",
    "rain",
    "football",
    "match",
    "goal",
    "striker",
    "virus",
    "hospital",
    "vaccine",
    "school",
    "teacher",
    "oil",
    "gas",
    "price",
    "energy",
    "climate",
    "carbon",
    "rocket",
    "space",
    "galaxy",
    "film",
    "music",
]


class Server:
    """`saescope serve --port 0` on runs; the URL read from its output."""

    def __init__(self, runs: list[str]) -> None:
        self.log = OUT / "server.log"
        OUT.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        args = [sys.executable, "-m", "saescope", "serve", "--port", "0", "--quiet"]
        for r in runs:
            args += ["--run", r]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        while not (m := re.search(r"open http://([\d.]+):(\d+)/", self.log.read_text())):
            if self.proc.poll() is not None:
                raise SystemExit(f"saescope serve failed:\n{self.log.read_text()}")
            time.sleep(0.02)
        self.host, self.port = m.group(1), int(m.group(2))
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        self.get("/api/runs")
        self.first_answer = time.perf_counter() - self.t0
        said = re.search(r"ready in ([\d.]+)s \(tables ([\d.]+)s\)", self.log.read_text())
        assert said is not None
        self.ready, self.tables = float(said.group(1)), float(said.group(2))

    def get(self, path: str) -> tuple[float, dict]:
        t = time.perf_counter()
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        body = r.read()
        dt = time.perf_counter() - t
        if r.status != 200:
            raise SystemExit(f"GET {path}: {r.status} {body[:300]!r}")
        return dt, json.loads(body)

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def ms(xs: list[float]) -> str:
    a = np.array(xs) * 1000
    return f"p50 {np.percentile(a, 50):.1f} ms, p95 {np.percentile(a, 95):.1f} ms, max {a.max():.1f} ms"


def feature_timing(s: Server, rid: str, d_sae: int, n: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    for f in rng.integers(0, d_sae, 5):  # warm-up: first touches of pages and caches
        s.get(f"/api/runs/{rid}/features/{int(f)}")
    return [s.get(f"/api/runs/{rid}/features/{int(f)}")[0] for f in rng.integers(0, d_sae, n)]


def bench_startup(demo: str, repeats: int) -> dict:
    if not (Path(demo) / "latents" / "manifest.json").exists():
        raise SystemExit(f"{demo} has no latent cache: run `saescope demo` (or pass --demo RUN)")
    first, ready, tables = [], [], []
    for _ in range(repeats):
        s = Server([demo])
        first.append(s.first_answer)
        ready.append(s.ready)
        tables.append(s.tables)
        s.stop()
    out = {
        "run": demo,
        "first_answer_s": statistics.median(first),
        "ready_s": statistics.median(ready),
        "tables_s": statistics.median(tables),
        "all_first_answer_s": first,
    }
    print(
        f"start-up, {demo}: first answer {out['first_answer_s']:.2f} s after the process "
        f"started (median of {repeats}; the server says ready in {out['ready_s']:.2f} s, "
        f"tables {out['tables_s']:.2f} s); target < 3 s: "
        f"{'PASS' if out['first_answer_s'] < 3 else 'FAIL'}",
        flush=True,
    )
    return out


def make_synthetic(run: Path) -> None:
    """A sentence run of D_SAE features over N_ROWS rows in the run-directory formats."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from safetensors.numpy import save_file

    from saescope import provenance
    from saescope.io import sha256_file, write_json
    from saescope.latents import FEATURES_SCHEMA, FORMAT
    from saescope.paths import RunPaths
    from saescope.sae import SAE, SAEConfig

    rp = RunPaths(run)
    if rp.keywords_record.exists():
        return
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    run.mkdir(parents=True, exist_ok=True)
    words = np.array(WORDS)
    picks = rng.integers(0, len(WORDS), (N_ROWS, 8))
    texts = [f"Text {i}: " + " ".join(w) + "." for i, w in enumerate(words[picks])]
    pd.DataFrame({"id": [str(i) for i in range(N_ROWS)], "text": texts}).to_parquet(rp.corpus)
    del texts, picks
    rp.acts.mkdir(exist_ok=True)
    write_json(rp.acts_manifest, {"meta": {"rows": "texts", "source": "synthetic", "d_in": D_IN}})
    torch.manual_seed(0)
    sae = SAE(SAEConfig("topk", D_IN, D_SAE, k=K))
    sae.save(rp.sae)
    rp.latents.mkdir(exist_ok=True)
    count = np.zeros(D_SAE, np.int64)
    vmax = np.zeros(D_SAE, np.float32)
    vsum = np.zeros(D_SAE, np.float64)
    shards, per = [], N_ROWS // SHARDS
    for i in range(SHARDS):
        lo, hi = i * per, N_ROWS if i == SHARDS - 1 else (i + 1) * per
        rows = np.repeat(np.arange(lo, hi, dtype=np.int64), K)
        feats = rng.integers(0, D_SAE, len(rows)).astype(np.int32)
        vals = rng.exponential(1.0, len(rows)).astype(np.float32)
        count += np.bincount(feats, minlength=D_SAE)
        vsum += np.bincount(feats, weights=vals, minlength=D_SAE)
        np.maximum.at(vmax, feats, vals)
        name = f"shard-{i:05d}.safetensors"
        save_file({"rows": rows, "features": feats, "values": vals}, str(rp.latents / name))
        shards.append({"file": name, "start": lo, "stop": hi, "nnz": len(rows),
                       "sha256": "", "nbytes": (rp.latents / name).stat().st_size})  # fmt: skip
    source = {"sae_dir": "sae", "sae_sha256": sha256_file(rp.sae_weights), "n_rows": N_ROWS,
              "d_in": D_IN, "d_sae": D_SAE}  # fmt: skip
    write_json(rp.latents_manifest, {
        "format": FORMAT, "d_sae": D_SAE, "n_rows": N_ROWS, "rows_done": N_ROWS,
        "nnz": int(count.sum()), "shard_rows": per, "complete": True, "source": source,
        "shards": shards,
    })  # fmt: skip
    top = np.sort(rng.integers(0, N_ROWS, (D_SAE, 20)), axis=1)
    quant = rng.integers(0, N_ROWS, (D_SAE, 50))
    cols = {
        "feature": np.arange(D_SAE, dtype=np.int32),
        "count": count,
        "density": count / N_ROWS,
        "log10_density": np.log10(count / N_ROWS),
        "max_act": vmax,
        "mean_act": (vsum / N_ROWS).astype(np.float32),
        "mean_active_act": (vsum / count).astype(np.float32),
        "dead": count == 0,
        "top_rows": list(top),
        "top_acts": list(np.sort(rng.uniform(3, 8, (D_SAE, 20)).astype(np.float32))[:, ::-1]),
        "quantile_rows": list(quant),
        "quantile_acts": list(np.sort(rng.uniform(0, 3, (D_SAE, 50)).astype(np.float32))),
        "quantile_bins": list(np.repeat(np.arange(10, dtype=np.int16), 5)[None].repeat(D_SAE, 0)),
        "random_rows": list(rng.integers(0, N_ROWS, (D_SAE, 20))),
    }
    table = pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in FEATURES_SCHEMA})
    pq.write_table(table, rp.features)
    rp.interp.mkdir(exist_ok=True)
    kw = rng.integers(0, len(WORDS), (D_SAE, 5))
    pq.write_table(
        pa.table({
            "feature": pa.array(np.arange(D_SAE), pa.int32()),
            "keywords": [[f"{WORDS[a]} {WORDS[b]}" for a, b in zip(k, k[::-1], strict=True)] for k in kw],
            "method": ["synthetic"] * D_SAE,
            "status": ["ok"] * D_SAE,
        }),
        rp.keywords,
    )  # fmt: skip
    made_from = {"acts": provenance.artifact_id(rp.acts_manifest), "sae": source["sae_sha256"]}
    provenance.Record.make(rp.keywords_record, "keywords", {}, made_from).finish()
    print(f"synthetic run {run}: written in {time.perf_counter() - t0:.0f} s", flush=True)


def bench_run(run: str, requests: int, label: str) -> dict:
    s = Server([run])
    try:
        info = s.get("/api/runs")[1]["runs"][0]
        rid, d_sae = info["id"], info["d_sae"]
        # large caches count their histograms in the background: time the pages after
        while (info := s.get(f"/api/runs/{rid}")[1])["histograms"] == "counting":
            time.sleep(0.1)
        histograms_ready = time.perf_counter() - s.t0
        times = feature_timing(s, rid, d_sae, requests)
        searches = [
            s.get(f"/api/runs/{rid}/features?q={q}&sort={sort}&limit=50")[0]
            for q in ("", "bank", "rain%20storm", "%2342", "the")
            for sort in ("density", "max_act", "id")
        ]
        out = {
            "run": run,
            "d_sae": d_sae,
            "n_rows": info["n_rows"],
            "first_answer_s": s.first_answer,
            "tables_s": s.tables,
            "feature_ms": {
                "p50": float(np.percentile(times, 50) * 1000),
                "p95": float(np.percentile(times, 95) * 1000),
                "max": float(max(times) * 1000),
            },
            "browser_query_ms_p95": float(np.percentile(searches, 95) * 1000),
            "histograms_ready_after_s": histograms_ready,
            "histogram_seconds": info["histogram_seconds"],
            "rss_mb": s.rss_mb(),
        }
    finally:
        s.stop()
    p95 = out["feature_ms"]["p95"]
    print(
        f"{label}: {d_sae:,} features x {out['n_rows']:,} rows: start-up {s.first_answer:.1f} s "
        f"(tables {s.tables:.1f} s), feature page {ms(times)} over {requests} requests "
        f"(target p95 < 100 ms: {'PASS' if p95 < 100 else 'FAIL'}); browser queries p95 "
        f"{out['browser_query_ms_p95']:.1f} ms; histograms counted in "
        f"{out['histogram_seconds']:.1f} s (ready {histograms_ready:.1f} s after the start); "
        f"RSS {out['rss_mb']:.0f} MB",
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--demo", default="runs/demo", help="the demo run for the start-up time")
    ap.add_argument("--lm", default=None, help="an LM run to time feature pages on (optional)")
    ap.add_argument("--repeats", type=int, default=3, help="start-ups of the demo run")
    ap.add_argument("--requests", type=int, default=200, help="feature pages timed per run")
    ap.add_argument("--skip-synthetic", action="store_true", help="no 1M-row synthetic run")
    ns = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results: dict = {"load_avg": os.getloadavg()}
    results["startup"] = bench_startup(ns.demo, ns.repeats)
    results["demo"] = bench_run(ns.demo, ns.requests, "demo run")
    if not ns.skip_synthetic:
        synth = OUT / "synthetic"
        make_synthetic(synth)
        results["synthetic"] = bench_run(str(synth), ns.requests, "synthetic")
    if ns.lm:
        results["lm"] = bench_run(ns.lm, ns.requests, "LM run")
    results["load_avg_end"] = os.getloadavg()
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(
        f"load average {results['load_avg']} -> {results['load_avg_end']}; {OUT / 'results.json'}"
    )


if __name__ == "__main__":
    main()
