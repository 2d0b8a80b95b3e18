"""Does standardising rows help on real embeddings whose norms differ? `input_norm` auto's rule.

MiniLM ends with an L2 normalisation, so its stores are of one norm and `saescope
train`'s `input_norm` auto leaves them as they are. Taken before that last step (its
Transformer and Pooling modules only), the same sentence embeddings have norms that
differ by a factor of about 2.6 (1st to 99th percentile): the kind of rows many
other embedding models give, and that `saescope embed --vectors` imports. On such rows
auto standardises each row inside the SAE. This bench trains each architecture on
them both ways, with `saescope train` (held-out split, its eval), and prints held-out
NMSE, L0 and dead latents side by side (means over seeds):

    python bench/input_norm.py [--texts 20000] [--archs topk batchtopk ...] [--seeds 3]
                               [--d-sae 3072] [--k 32] [--epochs 10]

The run (corpus and unnormalised vectors, `bench/out/unnorm-N`) is made once and reused.
ReLU and JumpReLU keep their default sparsity coefficients, so their L0 differs between
the two; compare NMSE at similar L0.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
NORMS = ("row_standardize", "none")


def unnormalised_run(n_texts: int) -> Path:
    """`bench/out/unnorm-N`: N shuffled news chunks as MiniLM vectors before its L2 norm."""
    from sentence_transformers import SentenceTransformer

    from saescope.corpus import CorpusConfig, read_corpus
    from saescope.corpus import run as make_corpus
    from saescope.defaults import DEFAULT_EMBED_MODEL
    from saescope.embed import EmbedConfig, load_sentence_model
    from saescope.embed import run as embed

    run = HERE / "out" / f"unnorm-{n_texts}"
    if (run / "acts" / "manifest.json").exists():
        return run
    make_corpus(CorpusConfig(run=str(run), source="news", shuffle=True, limit=n_texts))
    full = load_sentence_model(DEFAULT_EMBED_MODEL)
    kept = [m for m in full if type(m).__name__ != "Normalize"]
    if len(kept) == len(full):
        raise SystemExit(f"{DEFAULT_EMBED_MODEL} has no Normalize module to leave out")
    texts = read_corpus(run)["text"].tolist()
    t0 = time.perf_counter()
    vecs = SentenceTransformer(modules=kept).encode(
        texts, batch_size=64, convert_to_numpy=True, show_progress_bar=True
    )
    print(
        f"embedded {len(texts)} texts without the final normalisation in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    path = run / "unnormalised.npy"
    np.save(path, vecs.astype(np.float32))
    embed(EmbedConfig(run=str(run), vectors=str(path)))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=20_000)
    ap.add_argument(
        "--archs",
        nargs="+",
        default=["topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "relu"],
    )
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per (architecture, norm)")
    ap.add_argument("--d-sae", type=int, default=3072)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--epochs", type=float, default=10.0)
    args = ap.parse_args()

    import torch

    from saescope.io import read_json
    from saescope.paths import RunPaths
    from saescope.store import ActivationStore
    from saescope.train import TrainConfig
    from saescope.train import run as train

    run = unnormalised_run(args.texts)
    store = ActivationStore(RunPaths(run).acts)
    rows = store.rows(np.arange(min(len(store), 8192)))
    norms = rows.norm(dim=1)
    auto = TrainConfig().resolved_input_norm(store.rows_kind, rows)
    q = [float(norms.quantile(p)) for p in (0.01, 0.5, 0.99)]
    print(
        f"{len(store)} rows of d_in {store.d_in}; row norms 1st/50th/99th percentile "
        f"{q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}; input_norm auto takes {auto}; "
        f"d_sae {args.d_sae}, k {args.k}, {args.epochs:g} epochs of batch {args.batch_size}, "
        f"seeds 0-{args.seeds - 1}; torch threads {torch.get_num_threads()}",
        flush=True,
    )
    header = f"{'architecture':21s} {'input norm':15s} {'NMSE':>7s} {'L0':>7s} {'dead%':>6s}  per seed NMSE"
    print(header)
    print("-" * len(header))
    for arch in args.archs:
        for norm in NORMS:
            got = []
            for seed in range(args.seeds):
                cfg = TrainConfig(
                    run=str(run),
                    architecture=arch,
                    d_sae=[args.d_sae],
                    k=[args.k],
                    batch_size=args.batch_size,
                    epochs=args.epochs,
                    input_norm=norm,
                    seed=seed,
                    overwrite=True,
                    progress=False,
                )
                train(cfg)
                m = read_json(RunPaths(run).sae / "metrics.json")
                got.append((m["nmse"], m["l0"], m["dead_fraction"]))
            nmse, l0, dead = (float(np.mean([g[i] for g in got])) for i in range(3))
            seeds = " ".join(f"{g[0]:.4f}" for g in got)
            print(
                f"{arch:21s} {norm:15s} {nmse:7.4f} {l0:7.2f} {100 * dead:6.2f}  {seeds}",
                flush=True,
            )


if __name__ == "__main__":
    main()
