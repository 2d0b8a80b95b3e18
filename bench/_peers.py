"""One benchmark run per process: train one library's SAE, then score it.

In: a `Spec` (library, architecture, optimizer, sizes, sample count, store directory),
given as JSON on the command line by `bench/train.py`. Out: one line `RESULT {json}` on
stdout with train seconds, samples/s, peak RSS after training (ru_maxrss), and the
held-out NMSE, dead fraction and L0, computed here by one function for every library.
The architecture is TopK unless `bench/train.py --architectures` asks for another
(saescope and SAELens train every one of saescope's; sparsify only TopK).

Every library sees the same data: the store's non-held-out rows, reshuffled each
epoch with the same seed, cut into `batch_size` batches, cycled until `n_samples`
rows have been seen. The held-out rows are `ActivationStore.held_out(row_ids,
eval_fraction)`: a hash of the row id, or for a token store of the row's context, so
that whole contexts are held out as `saescope eval` holds them out.

Runners (each uses the library's own model, forward and loss code):
  saelens   `SAETrainer.fit` on the architecture's training SAE from
            `sae_lens.registry` (`TopKTrainingSAE`, ...; its own Adam, grad clipping,
            dead-feature bookkeeping, its architecture defaults; Matryoshka with
            saescope's default group widths; JumpReLU also as `variant` "target_l0",
            aimed at L0 k by its own options, see SAELENS_VARIANTS); default =
            SAELens's default Adam settings.
            Scored through the inference SAE it saves (BatchTopK: JumpReLU with the
            learned threshold), loaded outside the timed part.
  sparsify  `SparseCoder` driven the way `sparsify.Trainer.fit` drives it (b_dec set
            to the first batch mean, decoder renormalised each step, parallel
            gradient removed, FVU loss); default = schedule-free sign-SGD.
  saescope  `saescope.train.train_on_batches` with the `TrainConfig` defaults
            (Adam with warm-up and decay; on a token store the inputs are
            standardised per row, as `saescope train` does there: `input_norm`
            "auto"; JumpReLU also as `variant` "target_l0", aimed at L0 k by
            `--jumprelu-target-l0`, see SAESCOPE_VARIANTS); adam = the peers'
            constant-lr Adam. The
            result says which training path ran: how many steps took the sparse
            backward (`use_sparse`; TopK always does).
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

THREADS = 2


@dataclasses.dataclass(frozen=True)
class Spec:
    lib: str  # saescope | saelens | sparsify
    optimizer: str  # "default" (the library's own) | "adam" (common Adam settings)
    d_in: int
    d_sae: int
    k: int
    batch_size: int
    n_samples: int
    store: str
    eval_fraction: float
    adam_lr: float
    seed: int = 0
    architecture: str = "topk"  # a saescope architecture name (SAELens spells them alike)
    variant: str = "default"  # "default" or a key of SAELENS_VARIANTS / SAESCOPE_VARIANTS
    select_precision: str = "auto"  # saescope's TopK selection matmul (TrainConfig option)


class Data(NamedTuple):
    train: torch.Tensor  # (n_train, d_in)
    held: torch.Tensor  # (n_held, d_in)


def load_data(store_dir: str, eval_fraction: float) -> Data:
    """The store's rows split as `saescope train` and `saescope eval` split them
    (`ActivationStore.held_out`): by row id for embeddings, by whole context for tokens."""
    from saescope.store import ActivationStore

    store = ActivationStore(store_dir)
    ids = np.arange(store.count)
    x = store.rows(ids).float()  # (n_rows, d_in)
    held = torch.from_numpy(store.held_out(ids, eval_fraction))
    return Data(x[~held].contiguous(), x[held].contiguous())


def batches(
    train: torch.Tensor, batch_size: int, n_samples: int, seed: int
) -> Iterator[torch.Tensor]:
    """`n_samples // batch_size` batches of `train` rows, a fresh permutation per epoch."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=gen)
    pos = 0
    for _ in range(n_samples // batch_size):
        while pos + batch_size > len(perm):
            perm = torch.cat([perm[pos:], torch.randperm(len(train), generator=gen)])
            pos = 0
        yield train[perm[pos : pos + batch_size]]
        pos += batch_size


# A reconstruction function: (rows, d_in) -> (x_hat (rows, d_in), active (rows, d_sae) bool)
Recon = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Scores(NamedTuple):
    nmse: float
    dead: float
    l0: float
    nmse_ordinary: float  # NMSE over the rows that are not massive (see `evaluate`)
    n_massive: int
    dead_any: float  # fraction of latents zero on every held-out and every `seen` row


MASSIVE = 10.0  # a held-out row is "massive" above this many times the median row norm
SEEN_ROWS = 65_536  # training rows (the first ones) that `dead_any` also looks at


@torch.no_grad()
def evaluate(
    recon: Recon,
    held: torch.Tensor,
    d_sae: int,
    chunk: int = 1024,
    seen: torch.Tensor | None = None,
) -> Scores:
    """NMSE, dead fraction and L0 on the held-out rows, and NMSE without the massive rows.

    NMSE = sum of squared error / sum of squared deviation from the held-out mean.
    Dead = fraction of latents that are zero on every held-out row. A rare latent (one
    that fires on 1 row in 1,000, as the last Matryoshka group's do) fires on no row of a
    few thousand by chance, so `dead_any` also counts the `seen` rows (training rows):
    the latents zero on every row of both.
    L0 = mean number of nonzero latents per held-out row.
    The ordinary NMSE leaves out rows whose norm is over `MASSIVE` times the median (an
    LM's attention-sink rows: on SmolLM2's token store 2 of 43,558 held-out rows that
    hold two thirds of the variance); on embedding stores it equals the NMSE.
    """
    norms = held.norm(dim=1)
    massive = norms > MASSIVE * norms.median()
    mean = held.mean(0)
    dev = (held - mean).pow(2).sum(1)
    sst, sst_ordinary = float(dev.sum()), float(dev[~massive].sum())
    sse = sse_ordinary = 0.0
    fired = torch.zeros(d_sae, dtype=torch.bool)
    active = 0
    for start in range(0, len(held), chunk):
        x = held[start : start + chunk]
        x_hat, on = recon(x)
        err = (x - x_hat).pow(2).sum(1)
        sse += float(err.sum())
        sse_ordinary += float(err[~massive[start : start + chunk]].sum())
        fired |= on.any(0)
        active += int(on.sum())
    dead = 1.0 - float(fired.float().mean())
    rest = seen if seen is not None else held[:0]
    for start in range(0, len(rest), chunk):
        fired |= recon(rest[start : start + chunk])[1].any(0)
    return Scores(
        sse / sst,
        dead,
        active / len(held),
        sse_ordinary / sst_ordinary,
        int(massive.sum()),
        1.0 - float(fired.float().mean()),
    )


# ---------------------------------------------------------------- SAELens


# SAELens configurations other than its defaults, by (architecture, variant): its config
# fields, with `k` standing for the run's k.
# JumpReLU "target_l0": with its defaults (threshold 0.01 learned at lr 3e-4, the L0
# penalty reaching the threshold alone) SAELens's JumpReLU stays dense in a bench-length
# run (L0 2,509 of 3,072 after 40 steps of 4096 on the sentence store, 1,072 after 256),
# so its NMSE cannot be set against a sparse SAE's. Its own quadratic L0 loss towards
# `target_l0` (GemmaScope 2's), with the straight-through gradient reaching the encoder,
# brings it to L0 30 in 40 steps.
SAELENS_VARIANTS: dict[tuple[str, str], dict[str, Any]] = {
    ("jumprelu", "target_l0"): {
        "jumprelu_sparsity_loss_mode": "quadratic",
        "target_l0": "k",
        "jumprelu_ste_to_input": True,
    },
}


# saescope configurations other than its defaults, by (architecture, variant): TrainConfig
# fields, with `k` standing for the run's k. JumpReLU "target_l0": aimed at L0 k by
# `--jumprelu-target-l0` (the quadratic term on the batch's mean L0), beside SAELens's
# own target_l0 run.
SAESCOPE_VARIANTS: dict[tuple[str, str], dict[str, Any]] = {
    ("jumprelu", "target_l0"): {"jumprelu_target_l0": "k"},
}


def variant_fields(fields: dict[str, Any], k: float) -> dict[str, Any]:
    """A variant's config fields (`SAELENS_VARIANTS`, `SAESCOPE_VARIANTS`), "k" standing
    for the run's k."""
    return {f: k if v == "k" else v for f, v in fields.items()}


def train_saelens(
    arch: str,
    d_in: int,
    d_sae: int,
    k: int,
    batches: Iterator[torch.Tensor],
    n_samples: int,
    batch_size: int,
    lr: float,
    variant: str = "default",
    matryoshka_groups: list[float] | None = None,
) -> Any:
    """SAELens's training SAE of architecture `arch` (`sae_lens.registry`, its defaults or
    the `SAELENS_VARIANTS` entry of `variant`; Matryoshka with saescope's default group
    widths or `matryoshka_groups`), fitted by its `SAETrainer` on `batches` at a constant
    lr. Also used by bench/recovery.py."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.registry import get_sae_training_class
    from sae_lens.training.sae_trainer import SAETrainer

    from saescope.sae.archs.matryoshka_batchtopk import DEFAULT_GROUPS, prefix_widths

    sae_cls, cfg_cls = get_sae_training_class(arch)
    extra: dict[str, Any] = {}
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        extra["k"] = k
    if arch == "matryoshka_batchtopk":
        extra["matryoshka_widths"] = prefix_widths(d_sae, matryoshka_groups or DEFAULT_GROUPS)
    if variant != "default":
        extra.update(variant_fields(SAELENS_VARIANTS[(arch, variant)], k))
    sae = sae_cls(cfg_cls(d_in=d_in, d_sae=d_sae, **extra))
    cfg = SAETrainerConfig(
        total_training_samples=n_samples,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,
        lr_scheduler_name="constant",
        device="cpu",
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
    )
    SAETrainer(cfg=cfg, sae=sae, data_provider=batches).fit()
    return sae


def saelens_for_use(sae: Any, arch: str) -> Any:
    """The SAE as SAELens saves it for use: TopK as trained, the others through
    `save_inference_model` (BatchTopK and Matryoshka: JumpReLU with the learned
    threshold)."""
    import tempfile

    from sae_lens import SAE as LensSAE

    if arch == "topk":
        sae.eval()
        return sae
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        return LensSAE.load_from_disk(tmp)


def run_saelens(spec: Spec, it: Iterator[torch.Tensor]) -> Recon:
    import functools

    # SAELens's default is Adam lr 3e-4, betas (0.9, 0.999), constant schedule
    lr = 3e-4 if spec.optimizer == "default" else spec.adam_lr
    sae = train_saelens(
        spec.architecture,
        spec.d_in,
        spec.d_sae,
        spec.k,
        it,
        spec.n_samples,
        spec.batch_size,
        lr,
        spec.variant,
    )
    # built on first use, outside the timed training
    inference = functools.cache(lambda: saelens_for_use(sae, spec.architecture))

    def recon(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = inference()
        acts = model.encode(x)  # (rows, d_sae)
        return model.decode(acts), acts > 0

    return recon


# ---------------------------------------------------------------- sparsify


def run_sparsify(spec: Spec, it: Iterator[torch.Tensor]) -> Recon:
    from sparsify import SparseCoder, SparseCoderConfig

    if spec.architecture != "topk":
        raise SystemExit(f"sparsify trains TopK only, not {spec.architecture}")

    torch.set_float32_matmul_precision("high")  # what sparsify.Trainer.fit sets
    sae = SparseCoder(
        spec.d_in, SparseCoderConfig(num_latents=spec.d_sae, k=spec.k), "cpu", torch.float32
    )
    if spec.optimizer == "default":
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        lr = 5e-3 / math.sqrt(spec.d_sae / 2**14)  # sparsify's default signum lr
        opt: Any = ScheduleFreeWrapper(
            SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95
        )
        opt.train()
    else:
        # sparsify's own Adam warms up over 1000 steps, longer than this whole run;
        # the common Adam settings (constant lr) are used instead.
        opt = torch.optim.Adam(sae.parameters(), lr=spec.adam_lr)

    since_fired = torch.zeros(spec.d_sae, dtype=torch.long)
    did_fire = torch.zeros(spec.d_sae, dtype=torch.bool)
    for step, x in enumerate(it):
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x)  # auxk_alpha defaults to 0, so no dead mask
        out.fvu.backward()
        did_fire[out.latent_indices.flatten()] = True
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():  # the trainer's dead-latent bookkeeping
            since_fired += len(x)
            since_fired[did_fire] = 0
            did_fire.zero_()
    if hasattr(opt, "eval"):
        opt.eval()  # schedule-free: switch to the averaged weights, as sparsify does before saving

    def recon(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = sae.encode(x)
        x_hat = sae.decode(enc.top_acts, enc.top_indices)
        on = torch.zeros(len(x), spec.d_sae, dtype=torch.bool)
        on.scatter_(1, enc.top_indices, enc.top_acts > 0)
        return x_hat, on

    return recon


# ---------------------------------------------------------------- saescope

NOTES: dict[str, str] = {}  # run_saescope's select_path (TopK) and training_path, for the result
SPARSE_STEPS: list[bool] = []  # each `use_sparse` decision of run_saescope's training


def select_path(selection: str) -> str:
    """The trainer's TopK selection path (`TrainResult.selection`: dtype and why), with
    what the machine offers."""
    from saescope.device import onednn_allows

    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    cap = "" if onednn_allows("AMX") else ", oneDNN capped below it (ONEDNN_MAX_CPU_ISA)"
    cpu = torch.backends.cpu.get_cpu_capability()
    line = f"{selection}; AMX {'present' if amx else 'absent'}{cap}; CPU capability {cpu}"
    if selection.startswith("int8"):
        from saescope.sae.kernels import int8_matmul_levels

        line += f"; W_enc int8 within +-{int8_matmul_levels()} (the range its product keeps exact)"
    return line


def count_sparse_steps() -> None:
    """Record every sparse-or-dense decision of the training loss in SPARSE_STEPS."""
    from saescope.sae.archs import _loss

    decide = _loss.use_sparse

    def counted(*args: Any, **kwargs: Any) -> bool:
        sparse = decide(*args, **kwargs)
        SPARSE_STEPS.append(sparse)
        return sparse

    _loss.use_sparse = counted  # the architectures call it as an attribute of _loss


def training_path(arch: str) -> str:
    """Which backward the saescope run took, from SPARSE_STEPS."""
    if arch == "topk":
        return "sparse (TopK always)"
    if not SPARSE_STEPS:
        return "dense (no sparse decision)"
    n = sum(SPARSE_STEPS)
    return f"sparse in {n} of {len(SPARSE_STEPS)} steps (sparse_backward=auto)"


def run_saescope(spec: Spec, it: Iterator[torch.Tensor]) -> Recon:
    from saescope.store import ActivationStore
    from saescope.train import TrainConfig, train_on_batches

    count_sparse_steps()
    cfg = TrainConfig(
        architecture=spec.architecture,
        d_sae=[spec.d_sae],
        k=[spec.k],
        batch_size=spec.batch_size,
        seed=spec.seed,
        threads=THREADS,
        device="cpu",
        progress=False,
        # only TopK has a separate selection matmul; the others refuse the option
        select_precision=spec.select_precision if spec.architecture == "topk" else "auto",
    )
    if spec.variant != "default":
        fields = SAESCOPE_VARIANTS[(spec.architecture, spec.variant)]
        cfg = dataclasses.replace(cfg, **variant_fields(fields, float(spec.k)))
    if spec.optimizer == "adam":  # the peers' common Adam: constant lr, no warm-up
        cfg = dataclasses.replace(cfg, lr=spec.adam_lr, warmup_steps=0, lr_decay="none")
    total_steps = spec.n_samples // spec.batch_size
    rows = ActivationStore(spec.store).rows_kind  # what `saescope train` reads from the store
    result = train_on_batches(it, cfg, total_steps=total_steps, rows=rows)
    sae = result.saes[0]
    NOTES["input_norm"] = sae.cfg.input_norm
    if spec.architecture == "topk":
        # a snapshot of an older saescope (PYTHONPATH) has no TrainResult.selection
        NOTES["select_path"] = select_path(getattr(result, "selection", "") or "not reported")
    NOTES["training_path"] = training_path(spec.architecture)
    sae.eval()

    def recon(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = sae(x)
        return out.x_hat, out.codes > 0

    return recon


RUNNERS = {"saescope": run_saescope, "saelens": run_saelens, "sparsify": run_sparsify}


def run(spec: Spec) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    torch.manual_seed(spec.seed)
    data = load_data(spec.store, spec.eval_fraction)
    it = batches(data.train, spec.batch_size, spec.n_samples, spec.seed)
    n_samples = (spec.n_samples // spec.batch_size) * spec.batch_size
    t0 = time.perf_counter()
    recon = RUNNERS[spec.lib](spec, it)
    seconds = time.perf_counter() - t0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    scores = evaluate(recon, data.held, spec.d_sae, seen=data.train[:SEEN_ROWS])
    return {
        **dataclasses.asdict(spec),
        "samples": n_samples,
        "n_train_rows": len(data.train),
        "n_held_rows": len(data.held),
        "seconds": seconds,
        "samples_per_s": n_samples / seconds,
        "peak_rss_mb": rss_kb / 1024,
        "nmse": scores.nmse,
        "dead": scores.dead,
        "l0": scores.l0,
        "nmse_ordinary": scores.nmse_ordinary,
        "n_massive": scores.n_massive,
        "dead_any": scores.dead_any,
        "n_seen_rows": min(SEEN_ROWS, len(data.train)),
        **NOTES,
    }


def main(argv: list[str]) -> int:
    spec = Spec(**json.loads(argv[0]))
    print("RESULT " + json.dumps(run(spec)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
