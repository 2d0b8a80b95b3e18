"""LM activation throughput: `saescope acts` against the usual ways of collecting activations.

In: the news corpus and the packaged SmolLM2-135M-Instruct (30 blocks, d_model 576).
Out: a printed table of tokens/s at one hookpoint (default resid_post.15, the middle
block), ratios to the full-forward loop, the max abs difference of every method's
activations from saescope's, the peak RSS of the whole stage at two token counts,
and PASS/FAIL lines for the targets.

Methods, all on the same contexts (`build_contexts` of the corpus, packed, BOS first,
`--ctx-len` tokens) cut into the same batches of `--batch` contexts, each keeping the
same tokens (the store rows: not BOS, EOS or padding) as float32 (rows, d_model):
  full forward     model(..., output_hidden_states=True, use_cache=False) under
                   inference_mode, hidden_states[layer + 1]: every block and the LM
                   head run (the usual way)
  saescope capture `saescope.lm.hooks.capture`: the forward stops at the hookpoint
  transformer-lens run_with_cache(names_filter=blocks.L.hook_resid_post,
                   stop_at_layer=L + 1) on its own copy of the model: HookedTransformer
                   (no processing) when it can load the model offline, otherwise
                   TransformerBridge (raw HF weights); skipped with the reason if neither
  nnsight          skipped with the reason when it is not installed
  saescope stage   `saescope.lm.acts.run` on a run directory in a fresh subprocess:
                   tokenisation, the forward, writing shards, index and contexts;
                   model load timed apart. Then run at the two `--rss-tokens`
                   counts: its peak RSS (VmHWM, reset after the model load) at both,
                   and in the bigger run the running peak after every stored batch,
                   show whether memory grows with tokens.

Repeats are interleaved (every method once per repeat, the stage at `--tokens` too);
each method's best time is kept. Targets: saescope >= 1.5x the full-forward loop's
tokens/s (checked for the function and for the stage); identical activations (max abs
difference 0 for the full forward and the stage's store); peak RSS of the stage flat
in the number of tokens: within the bigger run, from the point where it has stored as
many rows as the smaller run to its end, the running peak grows by less than half of
what the extra rows take as float32 (holding the rows would grow it by all of that).
Measured inside one process because two fresh processes of the same size differ by
100-270 MB (allocator behaviour), more than the target allows; their two peaks are
printed too.

    python bench/acts.py                                  # about 5 minutes on 2 idle cores
    python bench/acts.py --tokens 8000 --repeats 1 --rss-tokens 40000,80000   # quicker
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # peers must not download; read before HF imports
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# what `import saescope` sets before torch loads (see saescope/__init__.py); set here, before
# torch, so that every method in this process and the stage subprocess run with it alike
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET_SPEEDUP = 1.5
# flat: from the smaller run's token count to its end, the bigger run's peak RSS grows by
# less than half of what the extra rows take as float32 (holding them would grow it by all)
RSS_FLAT = 0.5
TEXT_TOKENS = 25  # a low estimate of tokens per news text (about 50 on average); sizes the corpus


class Batch(NamedTuple):
    ids: torch.Tensor  # (b, width) int64
    mask: torch.Tensor  # (b, width) int64
    keep: torch.Tensor  # (b, width) bool, the tokens that become store rows


# a method: one batch -> its kept tokens' activations, (rows, d_model) float32
Method = Callable[[Batch], torch.Tensor]


class Timing(NamedTuple):
    seconds: float
    acts: torch.Tensor  # (rows, d_model) every batch's rows, in order


def make_batches(ctx: Any, batch: int) -> list[Batch]:
    """The contexts in order, `batch` at a time, padding cut to the batch's longest."""
    out = []
    lengths = ctx.attention_mask.sum(axis=1)
    for lo in range(0, ctx.n_contexts, batch):
        hi = min(lo + batch, ctx.n_contexts)
        width = int(lengths[lo:hi].max())
        out.append(
            Batch(
                torch.from_numpy(ctx.input_ids[lo:hi, :width].astype(np.int64)),
                torch.from_numpy(ctx.attention_mask[lo:hi, :width].astype(np.int64)),
                torch.from_numpy(ctx.keep[lo:hi, :width]),
            )
        )
    return out


def time_method(fn: Method, batches: list[Batch]) -> Timing:
    fn(batches[0])  # warm-up: first-call allocations and lazy inits
    t0 = time.perf_counter()
    rows = [fn(b) for b in batches]
    return Timing(time.perf_counter() - t0, torch.cat(rows))


# ---------------------------------------------------------------- the methods


def saescope_capture(model: Any, hp: Any) -> Method:
    from saescope.lm import hooks

    def fn(b: Batch) -> torch.Tensor:
        acts = hooks.capture(model, hp, b.ids, b.mask)  # (b, width, d)
        return acts[b.keep].float()

    return fn


def full_forward(model: Any, layer: int) -> Method:
    def fn(b: Batch) -> torch.Tensor:
        with torch.inference_mode():
            out = model(
                input_ids=b.ids, attention_mask=b.mask, output_hidden_states=True, use_cache=False
            )
        return out.hidden_states[layer + 1][b.keep].float()  # [0] is the embeddings

    return fn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0].split(". ")[0] if text else ""  # TL appends every model name it knows
    return f"{type(exc).__name__}: {first[:120]}"


def _cached(tl_model: Any, hook: str, layer: int) -> Method:
    """run_with_cache up to the hookpoint's block, either TransformerLens model class."""

    def fn(b: Batch) -> torch.Tensor:
        with torch.inference_mode():
            _, cache = tl_model.run_with_cache(
                b.ids, attention_mask=b.mask, names_filter=hook, stop_at_layer=layer + 1
            )
        return cache[hook][b.keep].float()

    return fn


def transformer_lens(layer: int, name: str) -> tuple[str, Method | None, str]:
    """(label, method or None, note): HookedTransformer if it loads offline, else TransformerBridge."""
    if importlib.util.find_spec("transformer_lens") is None:
        return "transformer-lens", None, "transformer_lens is not installed"
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    from saescope.lm.model import load_lm, resolve_lm

    hook = f"blocks.{layer}.hook_resid_post"
    lm = load_lm(name, "cpu")  # its own copy: the peers may rewrite the modules they wrap
    why = []
    for hub_name in (f"HuggingFaceTB/{name}", name):
        try:
            ht = HookedTransformer.from_pretrained_no_processing(
                hub_name, hf_model=lm.model, tokenizer=lm.tokenizer, device="cpu"
            )
            note = f"HookedTransformer.from_pretrained_no_processing({hub_name!r})"
            return "TL HookedTransformer", _cached(ht.eval(), hook, layer), note
        except Exception as exc:  # TL raises ValueError for names outside its list, others too
            why.append(f"HookedTransformer({hub_name!r}): {_first_line(exc)}")
    try:
        bridge = TransformerBridge.boot_transformers(
            resolve_lm(name), hf_model=lm.model, tokenizer=lm.tokenizer, device="cpu"
        )
    except Exception as exc:
        why.append(f"TransformerBridge: {_first_line(exc)}")
        return "transformer-lens", None, "; ".join(why)
    note = (
        "HookedTransformer cannot load it (" + "; ".join(why) + "); "
        "TransformerBridge.boot_transformers(hf_model=...) instead: raw HF weights, eager attention"
    )
    return "TL TransformerBridge", _cached(bridge.eval(), hook, layer), note


def nnsight_method() -> tuple[str, Method | None, str]:
    if importlib.util.find_spec("nnsight") is None:
        return (
            "nnsight",
            None,
            "nnsight is not installed (not a dependency of saescope or its peers)",
        )
    return "nnsight", None, "nnsight is installed but this bench has no nnsight runner yet"


# ---------------------------------------------------------------- the stage, in a subprocess


def vm_hwm_kb() -> int:
    """Peak resident set of this process since start or the last reset, in KiB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def stage_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `saescope acts` once in this process; the model load is timed apart."""
    import psutil

    from saescope.lm import acts
    from saescope.lm.model import load_lm
    from saescope.options.acts import ActsConfig
    from saescope.store import ActivationStore, StoreWriter

    torch.set_num_threads(spec["threads"])
    proc = psutil.Process()
    t0 = time.perf_counter()
    lm = load_lm(spec["model"], "cpu")
    load_s = time.perf_counter() - t0
    rss_loaded = proc.memory_info().rss
    peak_load_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    # loading the model peaks far above what it holds afterwards: reset the peak (Linux:
    # clear_refs 5 resets VmHWM) so that it measures the stage alone. ru_maxrss cannot be
    # reset: it also keeps the peak of the loader's exited threads.
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    # the running peak after every append: (rows appended so far, VmHWM KiB), so that
    # growth with the token count is read inside one process (fresh processes of the same
    # size differ by 100-270 MB: allocator behaviour)
    trace: list[tuple[int, int]] = []
    append = StoreWriter.append

    def traced(self: Any, rows: torch.Tensor) -> None:
        append(self, rows)
        trace.append(((trace[-1][0] if trace else 0) + len(rows), vm_hwm_kb()))

    StoreWriter.append = traced  # type: ignore[method-assign]
    cfg = ActsConfig(
        run=spec["run"],
        model=spec["model"],
        hookpoint=spec["hookpoint"],
        ctx_len=spec["ctx_len"],
        batch_size=spec["batch"],
        device="cpu",
        max_tokens=spec["max_tokens"],
    )
    t0 = time.perf_counter()
    store_dir = acts.run(cfg, lm=lm)
    seconds = time.perf_counter() - t0
    peak_kb = vm_hwm_kb()
    return {
        "tokens": ActivationStore(store_dir).count,
        "seconds": seconds,
        "load_s": load_s,
        "rss_loaded_mb": rss_loaded / 2**20,
        "peak_load_mb": peak_load_kb / 1024,
        "peak_rss_mb": peak_kb / 1024,
        "trace": trace,
    }


def run_stage(
    corpus_run: Path, work: Path, tag: str, max_tokens: int, args: argparse.Namespace
) -> dict[str, Any]:
    from saescope.paths import RunPaths

    run = work / f"stage-{tag}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir()
    shutil.copy(RunPaths(corpus_run).corpus, RunPaths(run).corpus)
    spec = dict(
        run=str(run),
        model=args.model,
        hookpoint=f"resid_post.{args.layer}",
        ctx_len=args.ctx_len,
        batch=args.batch,
        max_tokens=max_tokens,
        threads=args.threads,
    )
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--stage-worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT ") :]), "run": str(run)}
    sys.exit(f"the stage subprocess failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=20000, help="store rows per speed measurement")
    p.add_argument("--layer", type=int, default=15, help="hookpoint resid_post.LAYER")
    p.add_argument("--batch", type=int, default=16, help="contexts per forward (acts' default)")
    p.add_argument("--ctx-len", type=int, default=256, help="tokens per context (acts' default)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, here and in the stage")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs; the best is kept")
    p.add_argument(
        "--rss-tokens",
        default="40000,120000",
        help="the two stage runs whose peak RSS is compared (each above one group of "
        "batch*8 contexts and one shard, ~33k tokens, so that every buffer is full)",
    )
    p.add_argument("--peers", default="transformer-lens,nnsight", help="peers to try ('' for none)")
    p.add_argument("--model", default="SmolLM2-135M-Instruct", help=argparse.SUPPRESS)
    p.add_argument("--stage-worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


class Setup(NamedTuple):
    work: Path  # scratch folder under bench/out
    corpus_run: Path  # a run directory holding only the corpus
    lm: Any  # saescope.lm.model.LM
    hp: Any  # saescope.lm.hooks.Hookpoint
    batches: list[Batch]
    n_rows: int  # store rows in the batches
    n_contexts: int
    load_s: float


def setup(args: argparse.Namespace, most_tokens: int) -> Setup:
    """The corpus (enough for `most_tokens` rows), the model, and the speed batches."""
    from saescope.corpus import read_corpus
    from saescope.corpus import run as make_corpus
    from saescope.lm import hooks
    from saescope.lm.acts import limit_contexts
    from saescope.lm.model import load_lm
    from saescope.lm.tokens import build_contexts
    from saescope.options.corpus import CorpusConfig

    (HERE / "out").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="acts-", dir=HERE / "out"))
    corpus_run = work / "corpus"
    n_texts = max(500, most_tokens // TEXT_TOKENS)
    make_corpus(CorpusConfig(run=str(corpus_run), source="news", limit=n_texts))
    texts = read_corpus(corpus_run)["text"].astype(str).tolist()
    t0 = time.perf_counter()
    lm = load_lm(args.model, "cpu")
    load_s = time.perf_counter() - t0
    hp = hooks.resolve(lm.model, f"resid_post.{args.layer}")
    # the contexts `saescope acts` builds with its defaults (packed, BOS first)
    all_ctx = build_contexts(lm.tokenizer, texts, args.ctx_len, max_positions=lm.max_positions)
    if int(all_ctx.keep.sum()) < most_tokens:
        sys.exit(f"the corpus gives {int(all_ctx.keep.sum())} tokens, fewer than {most_tokens}")
    ctx = limit_contexts(all_ctx, args.tokens)
    batches = make_batches(ctx, args.batch)
    return Setup(work, corpus_run, lm, hp, batches, int(ctx.keep.sum()), ctx.n_contexts, load_s)


def methods_to_time(args: argparse.Namespace, s: Setup) -> dict[str, Method]:
    methods: dict[str, Method] = {
        "full forward": full_forward(s.lm.model, args.layer),
        "saescope capture": saescope_capture(s.lm.model, s.hp),
    }
    peers = [p for p in args.peers.split(",") if p]
    tries = [("transformer-lens", lambda: transformer_lens(args.layer, args.model))]
    tries.append(("nnsight", nnsight_method))
    for peer, make in tries:
        if peer not in peers:
            continue
        label, fn, note = make()
        if fn is None:
            print(f"  SKIP {label}: {note}")
        else:
            print(f"  {label}: {note}")
            methods[label] = fn
    return methods


def speed_check(ratio: float, what: str) -> tuple[bool, str]:
    return ratio >= TARGET_SPEEDUP, (
        f"speed ({what}): {ratio:.2f}x the full-forward loop; target >= {TARGET_SPEEDUP}x"
    )


def memory_report(runs: list[dict[str, Any]], d_model: int) -> tuple[bool, str]:
    """Print the stage's peak RSS at each size; (flat?, verdict line)."""
    print("\n  stage peak RSS (VmHWM of a fresh process, reset after the model load):")
    for r in runs:
        print(
            f"    {r['tokens']:>7} tokens: peak {r['peak_rss_mb']:5.0f} MB; RSS after the model "
            f"load {r['rss_loaded_mb']:.0f} MB, peak during the load {r['peak_load_mb']:.0f} MB; "
            f"stage {r['seconds']:5.1f} s ({r['tokens'] / r['seconds']:.0f} tokens/s)"
        )
    small, big = runs
    # within the bigger run: its running peak once it had stored as many rows as the
    # smaller run, against its peak at the end (index and manifest written)
    at_small = next(kb for rows, kb in big["trace"] if rows >= small["tokens"]) / 1024
    growth = big["peak_rss_mb"] - at_small
    rows_mb = (big["tokens"] - small["tokens"]) * d_model * 4 / 2**20
    print(
        f"    in the {big['tokens']}-token run: running peak {at_small:.0f} MB after "
        f"{small['tokens']} rows, {big['peak_rss_mb']:.0f} MB at the end "
        f"({len(big['trace'])} appends traced)"
    )
    return growth < RSS_FLAT * rows_mb, (
        f"memory: the stage's peak RSS grew {growth:+.0f} MB from {small['tokens']} to "
        f"{big['tokens']} stored tokens within one run (the extra rows are {rows_mb:.0f} MB as "
        f"float32); target growth < {RSS_FLAT:.0%} of that. Fresh processes: "
        f"{small['peak_rss_mb']:.0f} and {big['peak_rss_mb']:.0f} MB"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage_worker:
        print("RESULT " + json.dumps(stage_worker(json.loads(args.stage_worker))), flush=True)
        return 0
    import transformers

    from saescope.store import ActivationStore

    torch.set_num_threads(args.threads)
    rss_tokens = [int(t) for t in args.rss_tokens.split(",")]
    if len(rss_tokens) != 2:
        sys.exit("--rss-tokens needs two token counts")
    s = setup(args, max([args.tokens, *rss_tokens]))
    load = os.getloadavg()
    print(f"saescope acts benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})")
    print(
        f"  torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.threads} threads, load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"  {s.lm.name}: {s.lm.n_layers} blocks, d_model {s.lm.d_model}; hookpoint {s.hp.name} "
        f"({s.hp.module}); model load {s.load_s:.1f} s (not counted)"
    )
    print(
        f"  {s.n_contexts} contexts of {args.ctx_len} tokens ({s.n_rows} store rows) in "
        f"{len(s.batches)} batches of {args.batch}; {args.repeats} interleaved repeats, best kept"
    )
    methods = methods_to_time(args, s)

    best: dict[str, float] = {}
    acts: dict[str, torch.Tensor] = {}
    stage_runs: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        # alternate the order so that a change in machine load hits every method alike
        for name in list(methods) if rep % 2 == 0 else list(methods)[::-1]:
            t = time_method(methods[name], s.batches)
            best[name] = min(best.get(name, float("inf")), t.seconds)
            acts[name] = t.acts
            print(f"  repeat {rep}: {name:<22} {s.n_rows / t.seconds:8.0f} tokens/s", flush=True)
        r = run_stage(s.corpus_run, s.work, f"speed-{rep}", args.tokens, args)
        stage_runs.append(r)
        print(f"  repeat {rep}: {'saescope stage':<22} {r['tokens'] / r['seconds']:8.0f} tokens/s")
    rss_runs = [run_stage(s.corpus_run, s.work, f"rss-{n}", n, args) for n in rss_tokens]

    ref = acts["saescope capture"]
    stored = ActivationStore(Path(stage_runs[0]["run"]) / "acts").rows(np.arange(len(ref)))
    diffs = {name: float((a - ref).abs().max()) for name, a in acts.items()}
    diffs["saescope stage"] = float((stored - ref).abs().max())
    fastest_stage = min(stage_runs, key=lambda r: r["seconds"])
    tps = {name: s.n_rows / sec for name, sec in best.items()}
    tps["saescope stage"] = fastest_stage["tokens"] / fastest_stage["seconds"]
    base = tps["full forward"]
    print(f"\n  {'method':<22} {'tokens/s':>9} {'vs full':>8} {'max|diff|':>10}")
    for name in [*methods, "saescope stage"]:
        print(f"  {name:<22} {tps[name]:>9.0f} {tps[name] / base:>7.2f}x {diffs[name]:>10.2e}")
    print(
        f"  (max|diff|: against saescope capture on the same batches; the activations have "
        f"max |x| {float(ref.abs().max()):.1f}, rms {float(ref.pow(2).mean().sqrt()):.2f})"
    )
    checks = [
        speed_check(tps["saescope capture"] / base, "function, saescope capture"),
        speed_check(tps["saescope stage"] / base, "stage, with tokenisation and writing"),
        (
            diffs["full forward"] == 0.0 and diffs["saescope stage"] == 0.0,
            f"identical activations: max|diff| full forward {diffs['full forward']:.2e}, "
            f"stage store {diffs['saescope stage']:.2e}; target 0",
        ),
        memory_report(rss_runs, s.lm.d_model),
    ]
    print()
    for good, text in checks:
        print(f"  {'PASS' if good else 'FAIL'}  {text}")
    load = os.getloadavg()
    print(f"\nload average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    shutil.rmtree(s.work)
    return 0 if all(good for good, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
