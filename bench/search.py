"""Steered search speed and memory: saescope's exact and ivf indexes against a bare faiss
`IndexFlatIP`, on stores of 100,000 and 1,000,000 rows.

Builds synthetic stores under `bench/out/search/` (d_in 384, unit rows around 2,000
random centres, cosine about 0.6 within a cluster, like sentence embeddings; queries are
further draws from the same clusters, never stored). The SAE is a TopK SAE of d_sae
12288, k 64 (random unit decoder rows, tied encoder): its weights do not change the
cost of encoding or decoding. Each step runs in a fresh subprocess on 2 threads:

  build-exact  `saescope index --kind exact` (normalised float32 blocks)
  build-ivf    `saescope index --kind ivf`  (faiss IndexIVFFlat, default nlist)
  query-exact  per query: embed a text with the packaged MiniLM, then encode + edit +
  query-ivf    decode (one boost and one zeroed feature: `saescope.edits.apply_edits`) and
               search the top 10 (`open_index(...).search`), timed step by step
  flat         the same edited vectors searched by a bare faiss IndexFlatIP of the same
               rows (its build time is adding the rows)

The embedded text is timed but its vector replaced by the held-out draw, so that
recall@10 of ivf against exact means something on synthetic rows. Prints p50/p95 of
each step, build seconds, peak RSS (`ru_maxrss`) of each subprocess, ivf recall@10
and the target: edit + search at most 1.2x the bare flat search at 1M rows (so that an
edited query costs at most 1.2x flat plus the embedding of the query text).

    python bench/search.py                         # 100,000 and 1,000,000 rows
    python bench/search.py --rows 100000 --queries 30
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "search"
D_IN = 384
D_SAE, K = 12288, 64
CENTRES = 2000
NOISE = 0.8  # norm of the noise around a unit centre: cosine ~ 1 / (1 + NOISE^2) in a cluster
WARMUP = 3
TEXTS = [
    "The central bank raised interest rates to fight inflation.",
    "A new telescope photographed a distant galaxy.",
    "The striker scored twice in the cup final.",
    "Doctors treated patients with pneumonia in the ward.",
    "The chef roasted garlic and butter into a sauce.",
    "Parliament passed the bill after a long debate.",
    "Oil prices fell after the producers agreed to pump more.",
    "The company reported record profits for the quarter.",
    "Heavy rain flooded the streets of the old town.",
    "Scientists found a new species of frog in the rainforest.",
]


def draws(n: int, seed: int) -> object:
    """(n, D_IN) float32 unit rows around the shared centres (centres from seed 0)."""
    import torch

    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(CENTRES, D_IN, generator=g), dim=1)
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(0, CENTRES, (n,), generator=g)
    noise = torch.randn(n, D_IN, generator=g) * (NOISE / D_IN**0.5)
    return torch.nn.functional.normalize(centres[which] + noise, dim=1)


def build_store(rows: int) -> Path:
    from saescope.store import StoreWriter

    run = OUT / f"run-{rows}"
    if (run / "acts" / "manifest.json").exists():
        return run
    shutil.rmtree(run, ignore_errors=True)
    writer = StoreWriter(run / "acts", D_IN, "float32", 65536, {"source": "bench"})
    for i, lo in enumerate(range(0, rows, 65536)):
        writer.append(draws(min(65536, rows - lo), seed=1000 + i))
    writer.close()
    return run


def make_sae():
    import torch

    from saescope.sae import SAE, SAEConfig

    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig("topk", D_IN, D_SAE, k=K))
    with torch.no_grad():
        w = torch.nn.functional.normalize(torch.randn(D_SAE, D_IN, generator=g), dim=1)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
    return sae.eval()


def edited_queries(n: int) -> tuple[object, list]:
    """(n, D_IN) held-out query draws and the edits applied to each (boost one feature,
    zero another: the zero needs the codes, so encode, edit and decode all run)."""
    from saescope.edits import Edit

    q = draws(n, seed=7)
    edits = [Edit(11, "add", 0.5, "absolute"), Edit(4242, "zero")]
    return q, edits


def pct(xs: list[float], p: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs) * 1e3, p))


def child(mode: str, run: Path, n_queries: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(2)
    out: dict = {"mode": mode}
    if mode.startswith("build-"):
        from saescope.options.search import IndexConfig
        from saescope.search.stage import run as index

        kind = mode.split("-")[1]
        shutil.rmtree(run / "index" / kind, ignore_errors=True)
        t = time.perf_counter()
        folder = index(IndexConfig(run=str(run), kind=kind, progress=False))
        out["seconds"] = time.perf_counter() - t
        out["disk_mb"] = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        m = json.loads((folder / "manifest.json").read_text())
        out["params"] = m.get("params", {})
    else:
        from saescope.edits import apply_edits

        sae = make_sae()
        q, edits = edited_queries(n_queries + WARMUP)
        if mode == "flat":
            import faiss

            from saescope.search.index import normalise
            from saescope.store import ActivationStore

            store = ActivationStore(run / "acts", verify=False)
            t = time.perf_counter()
            flat = faiss.IndexFlatIP(D_IN)
            for i in range(len(store.shards)):
                flat.add(np.ascontiguousarray(normalise(store.load_shard(i)).numpy()))
            out["build_seconds"] = time.perf_counter() - t
            times, rows = [], []
            for i in range(len(q)):
                x2 = apply_edits(sae, q[i : i + 1], edits)
                v = np.ascontiguousarray(normalise(x2).numpy())
                t = time.perf_counter()
                _, ids = flat.search(v, 10)
                times.append(time.perf_counter() - t)
                rows.append(ids[0].tolist())
            out["search"] = times[WARMUP:]
            out["rows"] = rows[WARMUP:]
        else:
            from saescope.embed import encode_texts, load_sentence_model
            from saescope.search.index import open_index

            model = load_sentence_model("all-MiniLM-L6-v2")
            t = time.perf_counter()
            index = open_index(run, mode.split("-")[1])
            out["open_seconds"] = time.perf_counter() - t
            steps: dict[str, list[float]] = {"embed": [], "edit": [], "search": [], "total": []}
            rows = []
            for i in range(len(q)):
                t0 = time.perf_counter()
                encode_texts(model, [TEXTS[i % len(TEXTS)]], 1, False)  # timed, then replaced
                t1 = time.perf_counter()
                x2 = apply_edits(sae, q[i : i + 1], edits)  # encode + edit + decode
                t2 = time.perf_counter()
                hits = index.search(x2, 10)
                t3 = time.perf_counter()
                for name, dt in (("embed", t1 - t0), ("edit", t2 - t1), ("search", t3 - t2)):
                    steps[name].append(dt)
                steps["total"].append(t3 - t0)
                rows.append(hits.rows[0].tolist())
            out |= {name: v[WARMUP:] for name, v in steps.items()}
            out["rows"] = rows[WARMUP:]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def spawn(mode: str, run: Path, n_queries: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--run",
        str(run),
        "--queries",
        str(n_queries),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{mode} on {run} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=50, help="timed queries per index")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, Path(args.run), args.queries)), flush=True)
        return
    results = []
    for n in args.rows:
        t = time.perf_counter()
        run = build_store(n)
        print(f"== {n:,} rows (store ready in {time.perf_counter() - t:.0f}s: {run})", flush=True)
        res = {
            m: spawn(m, run, args.queries)
            for m in ("build-exact", "build-ivf", "query-exact", "query-ivf", "flat")
        }
        exact_rows, ivf_rows = res["query-exact"]["rows"], res["query-ivf"]["rows"]
        recall = sum(len(set(a) & set(b)) for a, b in zip(exact_rows, ivf_rows, strict=True)) / (
            10 * len(exact_rows)
        )
        same = sum(a == b for a, b in zip(exact_rows, res["flat"]["rows"], strict=True)) / len(
            exact_rows
        )
        flat50 = pct(res["flat"]["search"], 50)
        print(f"  {'step (ms)':<22}{'p50':>9}{'p95':>9}")
        for kind in ("exact", "ivf"):
            r = res[f"query-{kind}"]
            for step in ("embed", "edit", "search", "total"):
                print(f"  {kind + ' ' + step:<22}{pct(r[step], 50):>9.2f}{pct(r[step], 95):>9.2f}")
        print(f"  {'faiss flat search':<22}{flat50:>9.2f}{pct(res['flat']['search'], 95):>9.2f}")
        for kind in ("exact", "ivf"):
            r = res[f"query-{kind}"]
            edit_search = [a + b for a, b in zip(r["edit"], r["search"], strict=True)]
            ratio = pct(edit_search, 50) / flat50
            print(f"  {kind}: edit + search p50 = {ratio:.2f}x the bare flat search")
            res[f"query-{kind}"]["ratio_to_flat"] = ratio
        b_e, b_i = res["build-exact"], res["build-ivf"]
        print(
            f"  build: exact {b_e['seconds']:.1f}s ({b_e['disk_mb']:.0f} MB, peak RSS "
            f"{b_e['peak_rss_mb']:.0f} MB), ivf {b_i['seconds']:.1f}s ({b_i['disk_mb']:.0f} MB, "
            f"{b_i['peak_rss_mb']:.0f} MB, {b_i['params']}), flat add "
            f"{res['flat']['build_seconds']:.1f}s"
        )
        print(
            f"  peak RSS while querying: exact {res['query-exact']['peak_rss_mb']:.0f} MB, ivf "
            f"{res['query-ivf']['peak_rss_mb']:.0f} MB, flat {res['flat']['peak_rss_mb']:.0f} MB; "
            f"open: exact {res['query-exact']['open_seconds']:.1f}s, ivf "
            f"{res['query-ivf']['open_seconds']:.1f}s"
        )
        print(
            f"  ivf recall@10 against exact: {recall:.3f}; exact top 10 = flat top 10 in {same:.0%} of queries"
        )
        if n >= 1_000_000:
            ok = res["query-exact"]["ratio_to_flat"] <= 1.2
            print(
                f"  target (exact edit + search <= 1.2x flat at 1M rows): {'PASS' if ok else 'FAIL'}"
            )
        for r in res.values():
            r.pop("rows", None)
        results.append({"rows": n, "recall_at_10": recall, "exact_equals_flat": same, **res})
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
