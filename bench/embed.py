"""Embedding throughput: saescope's embed stage against a plain SentenceTransformer.encode.

On the same 5,000 news texts in one run: time `saescope.embed.run` (which also
writes and checksums the store) and a plain `SentenceTransformer.encode` call with
the same batch size, alternating them `--repeats` times and keeping each one's
best time; print texts/s, the ratio (target >= 1.0) and the cosine agreement of
the vectors (target >= 0.9999 for every row). The model load is timed apart.

Then each installed CPU backend of `saescope embed --backend` (onnx, onnx-int8,
openvino, openvino-bf16 where the CPU has native bfloat16; `pip install
'saescope[fast-embed]'`) encodes the same texts through the
same `encode` call: its texts/s, its speed over the plain torch `encode`, and the
cosine of its vectors to the float32 torch ones (mean and min over the texts).
Target: one backend at >= 2x the plain encode with mean cosine >= 0.99. The
one-time export is timed apart (cached under the saescope cache after that).

    python bench/embed.py [--texts 5000] [--batch-size 64] [--repeats 2]
                          [--backends onnx,onnx-int8,openvino,openvino-bf16]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--texts", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--backends",
        default="onnx,onnx-int8,openvino,openvino-bf16",
        help="comma-separated; '' for none",
    )
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    from saescope import (
        ActivationStore,
        CorpusConfig,
        EmbedConfig,
        embed_corpus,
        make_corpus,
        read_corpus,
    )
    from saescope.defaults import minilm_path

    work = Path(tempfile.mkdtemp(prefix="saescope-bench-embed-"))
    base = work / "corpus"
    make_corpus(CorpusConfig(run=str(base), source="news", shuffle=True, limit=args.texts))
    texts = read_corpus(base)["text"].tolist()
    t0 = time.perf_counter()
    model = SentenceTransformer(str(minilm_path()), device="cpu")
    load_s = time.perf_counter() - t0
    print(
        f"{len(texts)} news texts, batch {args.batch_size}, {torch.get_num_threads()} threads; "
        f"model load {load_s:.1f}s (not counted)"
    )

    best = {"plain": float("inf"), "saescope": float("inf")}
    ref = None
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        ref = model.encode(texts, batch_size=args.batch_size, convert_to_tensor=True)
        best["plain"] = min(best["plain"], time.perf_counter() - t0)

        run = work / f"run{rep}"
        run.mkdir()
        shutil.copy(base / "corpus.parquet", run / "corpus.parquet")
        t0 = time.perf_counter()
        embed_corpus(EmbedConfig(run=str(run), batch_size=args.batch_size), model=model)
        best["saescope"] = min(best["saescope"], time.perf_counter() - t0)
        print(
            f"  repeat {rep}: plain {len(texts) / best['plain']:.1f}/s, "
            f"saescope {len(texts) / best['saescope']:.1f}/s (best so far)",
            flush=True,
        )

    got = ActivationStore(work / "run0" / "acts").rows(range(len(texts)))
    cos = torch.nn.functional.cosine_similarity(got, ref.float(), dim=1)
    ratio = best["plain"] / best["saescope"]
    print(f"plain SentenceTransformer.encode  {len(texts) / best['plain']:8.1f} texts/s")
    print(f"saescope embed (store written)    {len(texts) / best['saescope']:8.1f} texts/s")
    print(
        f"ratio saescope / plain            {ratio:8.3f}   (target >= 1.0: {'PASS' if ratio >= 1.0 else 'FAIL'})"
    )
    print(
        f"cosine agreement min / mean       {cos.min():.6f} / {cos.mean():.6f}   "
        f"(target >= 0.9999: {'PASS' if cos.min() >= 0.9999 else 'FAIL'})"
    )
    shutil.rmtree(work)
    fast_ok = bench_backends(model, texts, ref.float(), best["plain"], args)
    return 0 if ratio >= 1.0 and cos.min() >= 0.9999 and fast_ok else 1


def bench_backends(model, texts: list[str], ref: torch.Tensor, plain_s: float, args) -> bool:
    """Time each installed backend's encode; print texts/s and cosine; True if the
    >= 2x / cosine >= 0.99 target holds (or no backend was asked for or installed)."""
    from saescope import embed_backends as eb
    from saescope.defaults import DEFAULT_EMBED_MODEL
    from saescope.errors import SaescopeError

    names = [b for b in args.backends.split(",") if b]
    if not names:
        return True
    n = len(texts)
    print("\nbackend           texts/s   x plain   cosine mean / min   (export s)")
    print(f"torch (plain)    {n / plain_s:8.1f}    1.00x   1.000000 / 1.000000")
    hits = []
    for name in names:
        try:
            eb.require(name)  # its modules installed and the CPU able to run it
        except SaescopeError as exc:
            print(f"{name:15s}  skipped: {exc}")
            continue
        t0 = time.perf_counter()
        fast = eb.wrap(model, DEFAULT_EMBED_MODEL, name)
        export_s = time.perf_counter() - t0
        fast.encode(texts[:64], batch_size=args.batch_size)  # warm-up
        secs = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            got = fast.encode(texts, batch_size=args.batch_size, convert_to_tensor=True)
            secs = min(secs, time.perf_counter() - t0)
        cos = torch.nn.functional.cosine_similarity(got, ref, dim=1)
        speed = plain_s / secs
        hits.append(speed >= 2.0 and cos.mean() >= 0.99)
        print(
            f"{name:15s}  {n / secs:8.1f}   {speed:5.2f}x   {cos.mean():.6f} / {cos.min():.6f}"
            f"   ({export_s:.1f})",
            flush=True,
        )
    if not hits:
        return True
    print(
        f"target: a backend >= 2x plain with mean cosine >= 0.99: {'PASS' if any(hits) else 'FAIL'}"
    )
    return any(hits)


if __name__ == "__main__":
    raise SystemExit(main())
