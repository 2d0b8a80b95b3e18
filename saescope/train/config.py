"""`TrainConfig`: every option of `saescope train`, documented field by field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from saescope.config import (
    changed_options,
    check_fields,
    check_ranges,
    field_default,
    option,
    refuse_unread,
)
from saescope.errors import SaescopeError
from saescope.paths import DEFAULT_RUN
from saescope.sae import archs
from saescope.sae.archs import ArchOptions
from saescope.sae.archs.base import PARTLY_SHARED
from saescope.sae.config import ARCHITECTURES, INPUT_NORMS

if TYPE_CHECKING:
    import torch

LOGGERS = ("wandb", "mlflow", "tensorboard")
DECAYS = ("none", "linear", "cosine")
B_DEC_INITS = ("geometric_median", "mean", "zeros")
SELECT_PRECISIONS = ("auto", "float32", "bfloat16", "int8")

# Options that change how a run is executed or reported, not what it computes: a
# re-run that differs only in these resumes or skips instead of refusing.
EXECUTION_FIELDS = (
    "run",  # the same store reached by another path, or a copied run, is the same training
    "resume",
    "overwrite",
    "stop_after_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "loggers",
    "wandb_project",
    "progress",
    "threads",
    "device",
    "eval_at_end",
)


# option: (lowest, highest, what it may be) for the numeric options checked in range;
# a value outside, or NaN, is refused instead of training on a fallback
RANGES: dict[str, tuple[float, float, str]] = {
    "lr": (0.0, math.inf, "a finite number >= 0 (0: the automatic rate)"),
    "epochs": (0.0, math.inf, "a finite number >= 0"),
    "max_steps": (0, math.inf, ">= 0"),
    "stop_after_steps": (0, math.inf, ">= 0"),
    "warmup_steps": (-1, math.inf, ">= 0, or -1 for the automatic warm-up"),
    "lr_decay_start": (0.0, 1.0, "between 0 and 1"),
    "lr_end_fraction": (0.0, 1.0, "between 0 and 1"),
    "grad_clip": (0.0, math.inf, "a finite number >= 0 (0: no clipping)"),
    "init_rows": (1, math.inf, ">= 1"),
    "k_aux": (0, math.inf, ">= 0"),
    "aux_coefficient": (0.0, math.inf, "a finite number >= 0"),
    "dead_after_samples": (-1, math.inf, ">= 1, or -1 for the automatic window"),
    "sparsity_warmup_steps": (0, math.inf, ">= 0"),
    "shuffle_buffer": (1, math.inf, ">= 1"),
    "threads": (0, math.inf, ">= 0 (0: all cores)"),
    "log_every": (1, math.inf, ">= 1"),
    "checkpoint_every": (0, math.inf, ">= 0"),
    "keep_checkpoints": (1, math.inf, ">= 1"),
}


ROW_KINDS = ("texts", "tokens")  # what a store row is: an embedded text, or a token


@dataclass(frozen=True)
class TrainConfig(ArchOptions):
    """Train one or several sparse autoencoders on a run's activation store.

    The options of each architecture (`l1_coefficient`, `l0_coefficient`, ...) are
    declared in its module of `saescope.sae.archs` and inherited through `ArchOptions`.
    """

    run: str = option(DEFAULT_RUN, "run directory; reads <run>/acts, writes <run>/sae")
    architecture: str = option("topk", archs.help_text(), choices=ARCHITECTURES)
    d_sae: list[int] = option(
        [3072], "latent sizes; several values train several SAEs in one pass over the data"
    )
    k: list[int] = option(
        [32],
        "active latents per row (topk; batchtopk and matryoshka_batchtopk: mean per row); "
        "several values train several SAEs (every d_sae x k pair); ignored by relu and jumprelu",
    )
    input_norm: str = option(
        "auto",
        "per-row input normalisation inside the SAE (auto: row_standardize on LM token "
        "stores and on any rows not all of one norm, where the big rows would take the "
        "latents and the loss; none on rows of one norm, e.g. L2-normalised embeddings)",
        choices=("auto", *INPUT_NORMS),
    )
    batch_size: int = option(4096, "rows per optimiser step (the global batch under torchrun)")
    epochs: float = option(5.0, "passes over the training split (fractions allowed)")
    max_steps: int = option(0, "stop after this many steps in total (0: no limit beyond epochs)")
    # 12x the TopK paper's 2e-4 base: embedding runs are tens to thousands of steps. On
    # MiniLM embeddings of 88k news sentences (40 to 1000 steps of 4096 rows, d_sae 3072
    # and 12288), 12x gave a 1-5% lower held-out NMSE than 8x with under 0.3% dead
    # latents; 16x was lower still but left about 1% dead (docs/bench.md).
    lr: float = option(0.0, "Adam learning rate (0: 2.4e-3 / sqrt(d_sae / 16384))")
    adam_betas: list[float] = option([0.9, 0.999], "Adam beta1 beta2")
    warmup_steps: int = option(
        -1, "linear LR warm-up steps (-1: 5 percent of training, at most 1000)"
    )
    lr_decay: str = option(
        "linear", "LR decay after warm-up down to lr_end_fraction", choices=DECAYS
    )
    lr_decay_start: float = option(0.8, "fraction of training at which the decay begins")
    lr_end_fraction: float = option(0.0, "final LR as a fraction of lr")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: no clipping)")
    unit_norm_decoder: bool = option(
        True, "keep decoder rows at unit norm (gradient parallel to each row removed)"
    )
    b_dec_init: str = option(
        "geometric_median", "initial decoder bias from a data sample", choices=B_DEC_INITS
    )
    init_rows: int = option(8192, "rows sampled to estimate b_dec and the input scale")
    scale_inputs: bool = option(
        True, "scale inputs to unit mean squared norm in training (folded into weights on save)"
    )
    select_precision: str = option(
        "auto",
        "topk: dtype of the encoder matmul that only chooses the k latents (their values and "
        "all gradients stay float32). bfloat16 and int8 (CPU) keep a few more candidates a row "
        "(k + max(4, k/8), k + max(8, k/2)) and take the k with the largest exact values. auto: bfloat16 on GPUs and CPUs with "
        "AMX; elsewhere float32 or int8, whichever a timed trial on the SAE finds faster",
        choices=SELECT_PRECISIONS,
    )
    k_aux: int = option(
        0,
        "topk, batchtopk, matryoshka_batchtopk: dead latents AuxK uses to model the residual "
        "(0: d_in // 2)",
    )
    aux_coefficient: float = option(
        1 / 32, "topk, batchtopk, matryoshka_batchtopk: AuxK loss weight"
    )
    dead_after_samples: int = option(
        -1,
        "a latent is dead after this many training rows without firing "
        "(-1: a tenth of the rows seen in training, at most 10M; matryoshka_batchtopk: one "
        "step's batch_size rows)",
    )
    sparsity_warmup_steps: int = option(
        0, "relu/jumprelu: ramp the sparsity coefficient up linearly over these steps"
    )
    eval_fraction: float = option(0.05, "fraction of rows (fixed by row id) held out for eval")
    shuffle_buffer: int = option(65536, "rows in the shuffle buffer")
    seed: int = option(0, "seed for weights and data order")
    threads: int = option(0, "torch CPU threads (0: all cores, split between torchrun ranks)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    log_every: int = option(20, "write metrics every this many steps")
    checkpoint_every: int = option(500, "checkpoint every this many steps (0: only at the end)")
    keep_checkpoints: int = option(2, "checkpoints kept on disk")
    stop_after_steps: int = option(
        0, "checkpoint and stop after this many steps (0: train to the end); re-run to resume"
    )
    resume: bool = option(True, "continue from the latest checkpoint of the same config")
    overwrite: bool = option(False, "discard a finished or different training in <run>/sae")
    loggers: list[str] = option(
        [], "extra experiment loggers: wandb, mlflow, tensorboard (metrics.jsonl is always written)"
    )
    wandb_project: str = option("saescope", "wandb project name")
    progress: bool = option(True, "show a progress bar")
    eval_at_end: bool = option(True, "run `saescope eval` on each trained SAE at the end")

    def __post_init__(self) -> None:
        check_fields(self)  # types and choices (architecture, lr_decay, input_norm ...)
        if not self.d_sae or any(int(d) < 1 for d in self.d_sae):
            raise SaescopeError(f"d_sae must be one or more positive sizes, got {self.d_sae}")
        arch = archs.get(self.architecture)
        if arch.uses_k:
            if not self.k or any(int(k) < 1 for k in self.k):
                raise SaescopeError(f"k must be one or more positive values, got {self.k}")
            too_big = [(d, k) for d in self.d_sae for k in self.k if k > d]
            if too_big:
                raise SaescopeError(
                    f"k must not exceed d_sae; got k={too_big[0][1]} for d_sae={too_big[0][0]}"
                )
        if self.batch_size < 1:
            raise SaescopeError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise SaescopeError("set epochs > 0 or max_steps > 0")
        if not 0 <= self.eval_fraction < 1:
            raise SaescopeError(f"eval_fraction must lie in [0, 1), got {self.eval_fraction}")
        for name in self.loggers:
            if name not in LOGGERS:
                raise SaescopeError(f"unknown logger {name!r}; choose from {', '.join(LOGGERS)}")
        if len(self.adam_betas) != 2:
            raise SaescopeError(f"adam_betas needs two values, got {self.adam_betas}")
        self._check_ranges()
        arch.check_train(self)
        self._check_foreign_options(arch)

    def _check_foreign_options(self, arch: archs.Architecture) -> None:
        """Refuse another architecture's option set away from its default: the chosen
        architecture would train without reading it (`--l0-coefficient` with relu,
        `--aux-coefficient` with jumprelu)."""
        unread = set(PARTLY_SHARED) - arch.reads
        refuse_unread(self, unread, f"the {arch.name} architecture (--architecture)")
        own = archs.option_names(arch)
        for other in archs.REGISTRY.values():
            for name in changed_options(self, archs.option_names(other) - own):
                default = field_default(self.__dataclass_fields__[name])
                raise SaescopeError(
                    f"{name} is an option of {other.name}; the {arch.name} architecture "
                    f"does not read it (set --architecture {other.name}, or leave "
                    f"{name} at its default {default!r})"
                )

    def _check_ranges(self) -> None:
        check_ranges(self, RANGES)
        if self.dead_after_samples == 0:  # every latent would be dead at every step
            raise SaescopeError("dead_after_samples must be >= 1, or -1 for the automatic window")
        for beta in self.adam_betas:
            if not 0 <= float(beta) < 1:
                raise SaescopeError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")

    def variants(self) -> list[tuple[int, int | None]]:
        """(d_sae, k) of every SAE trained in this pass, first one first."""
        ks: list[int | None] = (
            [int(k) for k in self.k] if archs.get(self.architecture).uses_k else [None]
        )
        out: list[tuple[int, int | None]] = []
        for d in self.d_sae:
            for k in ks:
                if (int(d), k) not in out:
                    out.append((int(d), k))
        return out

    def resolved_input_norm(self, rows: str, sample: torch.Tensor | None = None) -> str:
        """The input norm this config trains with on a store whose rows are `rows`
        ("texts" or "tokens", `ActivationStore.rows_kind`), judged on `sample` (the
        init sample, raw rows): `input_norm` unless "auto". Without a sample, auto is
        judged on `rows` alone, as it was before it looked at the rows (what a resumed
        checkpoint that does not record its norm was trained with).

        auto is row_standardize on tokens and on any rows not all of one norm already
        (`rows_of_one_norm`); none on rows of one norm (L2-normalised embeddings), where
        standardising would change only their scale. All measured:
        - An LM residual stream holds a few rows of 10-160x the median norm (attention
          sinks); trained on as they are, they hold most of the variance, are seen about
          once each, and every Adam step that fits one overshoots, so their held-out
          error swings from seed to seed. Standardised, they are ordinary rows (OpenAI's
          code for Gao et al. 2024 offers the same option).
        - Where a row's norm grows with the number of features in it, a batch-wide
          budget (batchtopk, matryoshka_batchtopk) or a fixed threshold (jumprelu) hands
          latents to the big, busy rows, and the small rows that show one direction
          alone get none. On bench/recovery.py's synthetic dictionary BatchTopK
          recovered 0.6% of the true directions from the rows as they came and 59.7%
          standardised, JumpReLU 0% and 51.6%, TopK 48% and 59%.
        - On MiniLM sentence embeddings taken before its final L2 normalisation
          (bench/input_norm.py: 20,000 news texts, d_sae 3072, k 32, seeds 0-2),
          standardising lowered held-out NMSE for TopK (0.359 -> 0.348), BatchTopK
          (0.367 -> 0.339), Matryoshka and ReLU, and cut TopK's and BatchTopK's dead
          latents from 14% and 12% to 5% and 4% (docs/training.md).
        """
        if self.input_norm != "auto":
            return self.input_norm
        if rows == "tokens":
            return "row_standardize"
        if sample is None or rows_of_one_norm(sample):
            return "none"
        return "row_standardize"

    def learning_rate(self, d_sae: int) -> float:
        return self.lr if self.lr > 0 else 2.4e-3 / (d_sae / 16384) ** 0.5


# Row norms within this fraction of their median count as one norm: unit vectors stored in
# float16 or bfloat16 come back up to ~0.5% off.
ONE_NORM_TOLERANCE = 0.02


def rows_of_one_norm(sample: torch.Tensor) -> bool:
    """Whether the rows of `sample` (n_rows, d_in) have one norm, as L2-normalised
    embeddings do: the 1st to 99th percentile of the norms of its non-zero, finite rows
    within `ONE_NORM_TOLERANCE` of their median (zero rows, such as empty texts', and
    rows with a NaN or inf are left out; a stray row or two among thousands does not
    count). False when no such row is left."""
    norms = sample.float().norm(dim=1)
    norms = norms[norms.isfinite() & (norms > 0)].sort().values
    n = len(norms)
    if n == 0:
        return False
    median = norms[(n - 1) // 2]
    low, high = norms[int(0.01 * (n - 1))] / median, norms[int(0.99 * (n - 1))] / median
    return bool(low >= 1 - ONE_NORM_TOLERANCE and high <= 1 + ONE_NORM_TOLERANCE)
