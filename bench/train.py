"""Training-speed benchmark: saescope against SAELens and sparsify, in one run.

In: an activation store (default `bench/out/sentences/acts`, MiniLM embeddings of the
88k sentences of the news corpus; see bench/README.md to build it), or with `--store`
any other store: an embedding store, or the token store of an LM run made by
`saescope acts` (the store folder or its run directory). Out: a printed
table per SAE size (samples/s, held-out NMSE, dead fraction, peak RSS, achieved
GFLOP/s and its fraction of this machine's float32 GEMM peak, saescope's speed ratio
to the fastest peer), PASS/FAIL lines for the targets, and
`bench/out/train-results.json`.

Every (library, optimizer) pair trains in its own subprocess (`bench/_peers.py`), so
its peak RSS is its own, on the same batches in the same order, for the same number
of samples, on 2 torch threads. NMSE and dead fraction come from one function on the
same held-out rows for all.

FLOP model (per training step, batch B, d_in D, d_sae F, k active latents): the
encoder matmul forward + backward as if dense, 3 * 2*B*D*F, plus the decoder as a
sparse product needs it, 3 * 2*B*k*D (forward, gradient of W_dec, gradient of the
codes). The count is the same for every library whatever it actually executes, so
"achieved GFLOP/s" is a work rate and its ratio between libraries equals the
samples/s ratio; a library with a sparse encoder backward can exceed what dense
matmuls would reach.

    python bench/train.py                       # the full benchmark
    python bench/train.py --sizes 3072:32 --samples 40960 --optimizers default
    python bench/train.py --store /tmp/bench-lm --sizes 4608:32   # an LM token store
    python bench/train.py --architectures batchtopk,jumprelu,matryoshka_batchtopk

With `--architectures`, each named architecture trains in saescope and in SAELens (its
implementation of the same architecture, its defaults), sparsify's TopK runs once as the
speed reference, and the targets are checked per architecture against SAELens's: >= 2x
its samples/s, held-out NMSE no worse, dead < 1%. L0 (mean active latents per held-out
row) is printed beside NMSE: JumpReLU's is set by its L0 penalty, not by k, so its NMSE
is comparable only where the L0s are close. SAELens's JumpReLU therefore trains twice:
with its defaults (it stays dense in a run this short: L0 ~2,500 of 3,072) and aimed at
L0 k by its own options (`target_l0`, bench/_peers.py SAELENS_VARIANTS), and so does
saescope's (its defaults, and `--jumprelu-target-l0` k: SAESCOPE_VARIANTS); each saescope
run's targets are checked against the SAELens run whose L0 is nearest its own. The FLOP
model stays TopK's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
PEERS = ("saelens", "sparsify")
LIBS = ("saescope", *PEERS)
TARGET_SPEEDUP = 2.0
TARGET_DEAD = 0.01
QUALITY = ("nmse", "dead", "l0", "nmse_ordinary", "dead_any")  # averaged over --seeds
MANIFEST = "manifest.json"  # saescope.paths.MANIFEST (see find_store)
# Runs of an architecture with --architectures, per library (variants: bench/_peers.py
# SAELENS_VARIANTS, SAESCOPE_VARIANTS); each saescope run's targets are checked against the
# SAELens run whose L0 is nearest its own
VARIANTS = {"jumprelu": ("default", "target_l0")}
ARCH_WIDTH = 30  # the library/architecture column of an --architectures table
NOTE_LINES = {  # notes of saescope's run (bench/_peers.py NOTES) printed above the table
    "select_path": "  saescope TopK selection path: {}",
    "input_norm": "  saescope input norm: {} (the default on this store)",
}


def gemm_peak_gflops(
    threads: int = 2, n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """Best `torch.mm` rate on `threads` threads, in GFLOP/s."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(old)
    return 2 * n**3 / best / 1e9


def bf16_gemm_peak(threads: int = 2, budget_s: float = 5.0) -> tuple[float | None, str]:
    """The bfloat16 `gemm_peak_gflops`, or None with the reason when it would take too long.

    Where bfloat16 is not native (no AMX or AVX512-BF16: AVX2-only CPUs), torch.mm in
    bfloat16 can be tens of times slower than in float32, and the 2048^3 test repeated six
    times takes minutes. One 512^3 product is timed first; the full test runs only when
    its estimate (64x that, six times) fits in `budget_s`.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a = torch.randn(512, 512, dtype=torch.bfloat16)
    torch.mm(a, a)
    t0 = time.perf_counter()
    torch.mm(a, a)
    small = time.perf_counter() - t0
    torch.set_num_threads(old)
    estimate = 6 * 64 * small
    if estimate > budget_s:
        rate = 2 * 512**3 / small / 1e9
        return (
            None,
            f"skipped: one 512^3 product ran at {rate:.1f} GFLOP/s, the test would take ~{estimate:.0f} s",
        )
    return gemm_peak_gflops(threads=threads, dtype=torch.bfloat16), ""


def flops_per_step(batch: int, d_in: int, d_sae: int, k: int) -> float:
    return 3 * 2 * batch * d_in * d_sae + 3 * 2 * batch * k * d_in


def adam_lr(d_sae: int) -> float:
    """The common Adam learning rate: the TopK scaling rule 2e-4 / sqrt(d_sae / 2^14)."""
    return 2e-4 / (d_sae / 2**14) ** 0.5


def find_store(path: str) -> Path:
    """The store folder `path` names: the folder itself, or the `acts/` of a run directory.

    The names are spelled here rather than taken from `saescope.paths`: importing saescope
    sets OMP_WAIT_POLICY, which the workers would inherit, changing the conditions of runs.
    """
    store = Path(path)
    if not (store / MANIFEST).exists() and (store / "acts" / MANIFEST).exists():
        store = store / "acts"
    if not (store / MANIFEST).exists():
        sys.exit(f"no activation store at {path}; build it as bench/README.md says")
    return store


def describe_store(manifest: dict[str, Any]) -> str:
    """One line on what the store's rows are."""
    meta = manifest.get("meta", {})
    if meta.get("rows") == "tokens":
        return (
            f"{manifest['count']} tokens of {meta.get('model')} at {meta.get('hookpoint')} "
            f"(ctx_len {meta.get('ctx_len')}); whole contexts held out, as `saescope eval` "
            "holds them out"
        )
    return f"{manifest['count']} rows ({meta.get('rows', 'texts')}, {meta.get('model', '?')})"


def run_one(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    cmd = [sys.executable, str(HERE / "_peers.py"), json.dumps(spec)]
    with open(log, "a") as f:
        f.write(
            f"\n### {spec['lib']} {spec['optimizer']} {spec['architecture']} "
            f"{spec['variant']} d_sae={spec['d_sae']}\n"
        )
        f.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {**spec, "error": f"exit {proc.returncode}; see {log}"}


def fmt_row(r: dict[str, Any], peak: float, best_peer_sps: float, width: int = 9) -> str:
    name = (
        r["lib"] if r.get("architecture", "topk") == "topk" else f"{r['lib']}/{r['architecture']}"
    )
    if r.get("variant", "default") != "default":
        name += f"({r['variant']})"
    name = f"{name:<{width}}"  # the header's: 9, or ARCH_WIDTH with --architectures
    if "error" in r:
        return f"  {name} {r['optimizer']:<8} FAILED: {r['error']}"
    gflops = flops_per_step(r["batch_size"], r["d_in"], r["d_sae"], r["k"]) / r["batch_size"]
    gflops *= r["samples_per_s"] / 1e9
    ratio = r["samples_per_s"] / best_peer_sps if best_peer_sps else float("nan")
    return (
        f"  {name} {r['optimizer']:<8} {r['samples_per_s']:>9.0f} {ratio:>6.2f}x "
        f"{r['seconds']:>7.1f} {r['nmse']:>7.4f} {100 * r['dead']:>6.2f} {r['l0']:>6.1f} "
        f"{r['peak_rss_mb']:>8.0f} {gflops:>8.1f} {100 * gflops / peak:>6.1f}"
    )


HEADER = (
    f"  {'library':<9} {'optim':<8} {'samples/s':>9} {'vs_fast':>7} {'train_s':>7} {'NMSE':>7} "
    f"{'dead%':>6} {'L0':>6} {'RSS_MB':>8} {'GFLOP/s':>8} {'%peak':>6}"
)


def target_lines(
    label: str,
    ours: dict[str, Any],
    fast: dict[str, Any],
    fast_name: str,
    best: dict[str, Any],
    best_name: str,
) -> list[str]:
    """PASS/FAIL lines: speed >= TARGET_SPEEDUP x `fast`, NMSE no worse than `best`, dead <
    TARGET_DEAD; the names say which runs `fast` and `best` are."""
    speed = ours["samples_per_s"] / fast["samples_per_s"]
    checks = [
        (
            speed >= TARGET_SPEEDUP,
            f"{label}speed: saescope {ours['samples_per_s']:.0f} samples/s = {speed:.2f}x "
            f"{fast_name} ({fast['samples_per_s']:.0f}); target >= {TARGET_SPEEDUP}x",
        ),
        (
            ours["nmse"] <= best["nmse"],
            f"{label}NMSE: saescope {ours['nmse']:.4f} at L0 {ours['l0']:.1f} vs {best_name} "
            f"{best['nmse']:.4f} at L0 {best['l0']:.1f}; target <=",
        ),
        (
            ours["dead"] < TARGET_DEAD,
            f"{label}dead: saescope {100 * ours['dead']:.2f}% of latents, {best_name} "
            f"{100 * best['dead']:.2f}%; target < {100 * TARGET_DEAD:.0f}%",
        ),
    ]
    return [f"  {'PASS' if good else 'FAIL'}  {text}" for good, text in checks] + [
        f"  (info) {label}dead on every held-out row and on the first {ours['n_seen_rows']} "
        f"training rows too: saescope {100 * ours['dead_any']:.2f}%, {best_name} "
        f"{100 * best['dead_any']:.2f}%"
    ]


def first(rows: list[dict[str, Any]], **match: str) -> dict[str, Any] | None:
    """The first result whose fields equal `match`, or None."""
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def report(results: list[dict[str, Any]], peak: float) -> list[str]:
    """Table lines and PASS/FAIL lines for one size."""
    ok = [r for r in results if "error" not in r]
    peers = [r for r in ok if r["lib"] in PEERS]
    best_sps = max((r["samples_per_s"] for r in peers), default=0.0)
    lines = [HEADER] + [fmt_row(r, peak, best_sps) for r in results]
    ours = first(ok, lib="saescope", optimizer="default")
    if ours is None or not peers:
        return lines + ["  targets: not checked (saescope default run or peers missing)"]
    fastest = max(peers, key=lambda r: r["samples_per_s"])
    best = min(peers, key=lambda r: r["nmse"])
    lines += target_lines(
        "",
        ours,
        fastest,
        f"the fastest peer, {fastest['lib']} {fastest['optimizer']}",
        best,
        f"the best peer, {best['lib']} {best['optimizer']},",
    )
    if ours.get("n_massive"):
        lines.append(
            f"  (info) NMSE without the {ours['n_massive']} massive held-out rows (norm > "
            f"10x the median): saescope {ours['nmse_ordinary']:.4f}, best peer "
            f"{best['nmse_ordinary']:.4f} ({best['lib']} {best['optimizer']})"
        )
    return lines


def report_architectures(results: list[dict[str, Any]], peak: float) -> list[str]:
    """Table and PASS/FAIL lines of an `--architectures` run: each architecture of saescope
    against SAELens's same architecture; sparsify's TopK is the speed reference."""
    ok = [r for r in results if "error" not in r]
    ref = first(ok, lib="sparsify")
    lines = [HEADER.replace(f"{'library':<9}", f"{'library/architecture':<{ARCH_WIDTH}}")]
    lines += [fmt_row(r, peak, ref["samples_per_s"] if ref else 0.0, ARCH_WIDTH) for r in results]
    lines.append("  (vs_fast: samples/s over sparsify's TopK, the speed reference)")
    runs = dict.fromkeys(
        (r["architecture"], r.get("variant", "default")) for r in results if r["lib"] == "saescope"
    )
    for arch, variant in runs:
        label = arch if variant == "default" else f"{arch}({variant})"
        ours = first(ok, lib="saescope", architecture=arch, variant=variant)
        lenses = [r for r in ok if r["lib"] == "saelens" and r["architecture"] == arch]
        if ours is None or not lenses:
            lines.append(f"  {label}: targets not checked (a run failed)")
            continue
        lines.append(f"  {label}: saescope training path {ours.get('training_path', '?')}")
        lens = nearest_l0(lenses, ours["l0"])
        name = "SAELens" if lens["variant"] == "default" else f"SAELens ({lens['variant']})"
        if len(lenses) > 1:
            lines.append(
                f"  {label}: checked against {name}, the SAELens run whose L0 "
                f"({lens['l0']:.1f}) is nearest saescope's ({ours['l0']:.1f})"
            )
        lines += target_lines(f"{label} ", ours, lens, name, lens, name)
    return lines


def nearest_l0(runs: list[dict[str, Any]], l0: float) -> dict[str, Any]:
    """The run whose L0 is nearest `l0` by ratio: NMSE compares only at similar sparsity."""
    return min(runs, key=lambda r: abs(math.log(max(r["l0"], 1e-9) / max(l0, 1e-9))))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--store",
        default=str(HERE / "out" / "sentences" / "acts"),
        help="activation store directory, or a run directory holding acts/ "
        "(MiniLM embeddings, or LM tokens from `saescope acts`)",
    )
    p.add_argument("--sizes", default="3072:32,12288:64", help="comma-separated d_sae:k pairs")
    p.add_argument(
        "--samples",
        default="163840",
        help="training samples per size (one value, or one per size); rounded down to whole batches",
    )
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--libs", default=",".join(LIBS), help="libraries to run")
    p.add_argument(
        "--optimizers",
        default="default,adam",
        help="'default' (each library's own) and/or 'adam' (common)",
    )
    p.add_argument(
        "--architectures",
        default="",
        help="comma-separated saescope architectures (batchtopk, jumprelu, "
        "matryoshka_batchtopk, relu, topk) to train in saescope and SAELens, with "
        "sparsify's TopK as the speed reference; default: the TopK benchmark",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train each library with seeds 0..N-1 (weights and data order); the table "
        "then gives the mean NMSE, dead fraction and L0 over seeds and the fastest run",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per library (alternating order); the fastest is kept",
    )
    p.add_argument(
        "--select-precision",
        default="auto",
        choices=("auto", "float32", "bfloat16", "int8"),
        help="saescope's TopK selection matmul (auto: bfloat16 with AMX, else float32 or "
        "int8, whichever a timed trial finds faster); float32 or int8 on an AMX machine "
        "runs a path a CPU without AMX gets",
    )
    p.add_argument(
        "--eval-fraction",
        type=float,
        default=0.2,
        help="held-out fraction (ActivationStore.held_out: by row id, or by context for tokens)",
    )
    p.add_argument(
        "--out", default=str(HERE / "out" / "train-results.json"), help="JSON results file"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    samples = [int(s) for s in args.samples.split(",")]
    samples = samples * len(sizes) if len(samples) == 1 else samples
    if len(samples) != len(sizes):
        sys.exit("--samples needs one value or one per size")
    libs = args.libs.split(",")
    archs = [a for a in args.architectures.split(",") if a]
    optimizers = args.optimizers.split(",")
    store = find_store(args.store)
    manifest = json.loads((store / MANIFEST).read_text())
    d_in = manifest["d_in"]
    log = Path(args.out).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")

    load = os.getloadavg()
    peak = gemm_peak_gflops(threads=2)
    peak_bf16, bf16_skipped = bf16_gemm_peak(threads=2)
    found = importlib.util.find_spec("saescope")
    src = Path(found.origin).parent if found and found.origin else "?"
    head = subprocess.run(
        ["git", "-C", str(HERE), "log", "-1", "--format=%h %ad", "--date=iso"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"saescope training benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})")
    print(
        f"  torch {torch.__version__}, 2 threads per run, load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"  saescope imported from {src} (checkout HEAD {head})")
    print(f"  float32 GEMM peak (2048^3 torch.mm, 2 threads, best of 5): {peak:.1f} GFLOP/s")
    if peak_bf16 is None:
        print(f"  (bfloat16 GEMM reference {bf16_skipped}; %peak below is of float32)")
    else:
        print(
            f"  (bfloat16 GEMM, same test, for reference: {peak_bf16:.1f} GFLOP/s; %peak below is of float32)"
        )
    print(
        f"  store {store}: d_in {d_in}, held-out fraction {args.eval_fraction}, batch {args.batch_size}"
    )
    print(f"  rows: {describe_store(manifest)}")
    print("  FLOPs/step = 6*B*d_in*d_sae (encoder fwd+bwd) + 6*B*k*d_in (sparse decoder fwd+bwd)")
    print(
        "  optimizers: default = each library's own; adam = Adam(0.9, 0.999), constant lr 2e-4/sqrt(d_sae/2^14)"
    )
    everything: dict[str, Any] = {
        "gemm_peak_gflops": peak,
        "gemm_peak_bf16_gflops": peak_bf16,
        "gemm_peak_bf16_skipped": bf16_skipped,
        "saescope_src": str(src),
        "head": head,
        "load_at_start": load,
        "store": str(store),
        "store_meta": manifest.get("meta", {}),
        "sizes": [],
    }
    for (d_sae, k), n in zip(sizes, samples, strict=True):
        n = (n // args.batch_size) * args.batch_size
        print(
            f"\nd_sae {d_sae}, k {k}: {n} samples ({n // args.batch_size} steps of {args.batch_size}), "
            f"adam lr {adam_lr(d_sae):.2e}"
        )
        if archs:
            order = [("sparsify", "default", "topk", "default")] * ("sparsify" in libs) + [
                (lib, "default", arch, variant)
                for arch in archs
                for lib in ("saescope", "saelens")
                if lib in libs
                for variant in VARIANTS.get(arch, ("default",))
            ]
        else:
            order = [(lib, opt, "topk", "default") for lib in libs for opt in optimizers]
        best: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        quality: dict[tuple[str, str, str, str], dict[int, dict[str, float]]] = {}
        for rep in range(args.repeats * args.seeds):
            seed = rep % args.seeds
            # alternate the order so that a change in machine load hits every library alike
            for lib, opt, arch, variant in order if rep % 2 == 0 else order[::-1]:
                spec = dict(
                    lib=lib,
                    architecture=arch,
                    variant=variant,
                    optimizer=opt,
                    d_in=d_in,
                    d_sae=d_sae,
                    k=k,
                    batch_size=args.batch_size,
                    n_samples=n,
                    store=str(store),
                    eval_fraction=args.eval_fraction,
                    adam_lr=adam_lr(d_sae),
                    seed=seed,
                    select_precision=args.select_precision,
                )
                r = run_one(spec, log)
                for note, text in NOTE_LINES.items():  # saescope's, printed once
                    if lib == "saescope" and note in r and note not in everything:
                        everything[note] = r[note]
                        print(text.format(r[note]))
                print(
                    fmt_row(r, peak, 0.0, ARCH_WIDTH if archs else 9)
                    + (f"  seed {seed}" if args.seeds > 1 else ""),
                    flush=True,
                )
                key = (lib, opt, arch, variant)
                if "error" not in r:
                    quality.setdefault(key, {})[seed] = {q: r[q] for q in QUALITY}
                old = best.get(key)
                runs = (old or {}).get("all_samples_per_s", []) + [r.get("samples_per_s")]
                if (
                    old is None
                    or "error" in old
                    or r.get("samples_per_s", 0) > old["samples_per_s"]
                ):
                    best[key] = r
                best[key]["all_samples_per_s"] = runs
        for key, per_seed in quality.items():
            if args.seeds > 1:  # quality: the mean over seeds; speed: the fastest run
                best[key].update({q: mean(v[q] for v in per_seed.values()) for q in QUALITY})
                best[key]["per_seed"] = per_seed
        results = [best[key] for key in order]
        print()
        if args.seeds > 1:
            print(
                f"  (NMSE, dead, L0: means over seeds 0-{args.seeds - 1}; samples/s: the fastest run)"
            )
        for line in (report_architectures if archs else report)(results, peak):
            print(line)
        everything["sizes"].append({"d_sae": d_sae, "k": k, "samples": n, "results": results})
    load = os.getloadavg()
    everything["load_at_end"] = load
    print(f"\nload average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; results in {args.out}")
    Path(args.out).write_text(json.dumps(everything, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
