"""What an SAE architecture is: the interface every module of `saescope.sae.archs` fills.

An `Architecture` holds everything that differs between SAE kinds:
- its inference rule (`sparsify`, and `encode_sparse` where it can skip dense codes),
- its training loss with its auxiliary terms (`loss`) and the state the trainer keeps
  for it between steps (an extra trainable tensor, a running threshold),
- its initialisation specifics (`homogeneous`, `init`),
- its options (`options`: a frozen dataclass of `option()` fields that `TrainConfig`
  inherits, so their help texts become `saescope train --help`),
- its mapping to and from SAELens files (`saelens_*`, `to_saelens`, `from_saelens`).

The modules are imported by the command line's `--help`, so they must not import
torch when they load: they reach it through `lazy_torch`, which imports it on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from saescope.config import option
from saescope.errors import SaescopeError

if TYPE_CHECKING:
    import torch

    from saescope.sae.archs._loss import LossContext, LossOutput
    from saescope.sae.config import SAEConfig
    from saescope.sae.model import SAE
    from saescope.train.config import TrainConfig


class LazyModule:
    """A module imported on first attribute access (keeps `--help` free of torch)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


lazy_torch: Any = LazyModule("torch")
lazy_loss: Any = LazyModule("saescope.sae.archs._loss")

SPARSE_PATHS = ("auto", "always", "never")
# TrainConfig options only some architectures read (`Architecture.reads`); the others
# refuse them set away from their defaults
PARTLY_SHARED = ("k_aux", "aux_coefficient", "sparsity_warmup_steps", "select_precision",
                 "sparse_backward")  # fmt: skip


@dataclass(frozen=True)
class CommonOptions:
    """Training options every architecture reads."""

    sparse_backward: str = option(
        "auto",
        "batchtopk, jumprelu, matryoshka_batchtopk, relu: decode and back-propagate through the "
        "active latents only (topk always does); auto: batchtopk, matryoshka_batchtopk and relu "
        "when at most 1/32 of the (row, latent) pairs are active, jumprelu at 1/8",
        choices=SPARSE_PATHS,
    )


@dataclass(frozen=True)
class SaelensMapping:
    """How an SAE of this architecture is written as a SAELens 6 `cfg.json`."""

    architecture: str  # SAELens inference architecture ("standard", "topk", "jumprelu")
    fields: dict[str, Any]  # extra cfg.json fields (topk: k, rescale_acts_by_decoder_norm)
    training: str | None = None  # metadata.training_architecture, when not the same
    details: dict[str, Any] | None = None  # metadata.training_architecture_details


class Architecture:
    """One SAE architecture. Subclasses set the class attributes and override methods."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --help: the rule and the loss
    options: ClassVar[type] = CommonOptions  # frozen dataclass of option() fields
    uses_k: ClassVar[bool] = False  # k = active latents per row (batch-wide: on average)
    # the file's `threshold` takes part in inference (else it may be missing and is zero)
    has_threshold: ClassVar[bool] = False
    # codes scale linearly with W_enc when b_enc = 0 (init fits one encoder scale)
    homogeneous: ClassVar[bool] = True
    # SAELens `architecture` values of training checkpoints loaded as this architecture
    saelens_names: ClassVar[tuple[str, ...]] = ()
    # SAELens `metadata.training_architecture` of an inference (jumprelu) file that is
    # this architecture (batchtopk, matryoshka_batchtopk); None: none
    saelens_training: ClassVar[str | None] = None
    # its rule is sparsify's (the k largest of relu(h) in each row), so sparsify files
    # can hold it (`export_sparsify`)
    sparsify_rule: ClassVar[bool] = False
    # which of `PARTLY_SHARED` this architecture reads
    reads: ClassVar[frozenset[str]] = frozenset()

    # -- inference ---------------------------------------------------------------------
    def sparsify(self, sae: SAE, h: torch.Tensor) -> torch.Tensor:
        """Codes (n_rows, d_sae) from pre-activations h (n_rows, d_sae)."""
        raise NotImplementedError

    def encode_sparse(
        self, sae: SAE, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The non-zeros of `sae.encode(x)` as (rows, features, values) without the dense
        codes, or None when this rule has no cheaper way than scanning them."""
        return None

    def check_sae(self, cfg: SAEConfig) -> None:
        """Refuse an `SAEConfig` this architecture cannot run."""
        if self.uses_k and (cfg.k is None or not 1 <= cfg.k <= cfg.d_sae):
            raise SaescopeError(f"{self.name} needs 1 <= k <= d_sae, got k={cfg.k}")

    # -- training ----------------------------------------------------------------------
    def check_train(self, cfg: TrainConfig) -> None:
        """Refuse option combinations this architecture cannot train with."""

    def sae_metadata(self, cfg: TrainConfig, d_sae: int) -> dict[str, Any]:
        """What the saved `config.json` must record beyond the shape (e.g. group widths)."""
        return {}

    def unit_norm_decoder(self, cfg: TrainConfig) -> bool:
        """Whether decoder rows are kept at unit norm during training."""
        return bool(cfg.unit_norm_decoder)

    def default_dead_after(self, cfg: TrainConfig, total_rows: int) -> int:
        """Rows without firing after which a latent is dead (AuxK's latents), when
        `dead_after_samples` is -1: a tenth of the training rows, at most 10M."""
        return min(10_000_000, max(1, total_rows // 10))

    def sparsity_coefficient(self, cfg: TrainConfig) -> float:
        """The weight of the sparsity penalty (before its warm-up ramp); 0 if none."""
        return 0.0

    def init(self, sae: SAE, sample: torch.Tensor, cfg: TrainConfig | None) -> None:
        """Architecture-specific changes to a freshly initialised SAE (default: none)."""

    def extra_parameter(
        self, cfg: TrainConfig, sae: SAE, device: torch.device
    ) -> torch.nn.Parameter | None:
        """A float32 (d_sae,) tensor trained beside the weights of the freshly initialised
        `sae` (jumprelu: log threshold)."""
        return None

    def loss(
        self,
        sae: SAE,
        x: torch.Tensor,
        ctx: LossContext,
        extra: torch.nn.Parameter | None,
    ) -> LossOutput:
        """This rank's share of the loss on normalised inputs x (n_rows, d_in)."""
        raise NotImplementedError

    def selection_seconds(self, sae: SAE, x: torch.Tensor, ctx: LossContext) -> float | None:
        """Seconds this architecture's latent selection takes on rows x in ctx.select_dtype
        (best of a few runs), so that `select_precision auto` can time the dtypes on the
        machine at hand; None when the selection matmul is not a separate step (its
        dtype then does not matter)."""
        return None

    def update_running(
        self, running: float, out: LossOutput, cfg: TrainConfig, step: int, total_steps: int
    ) -> float:
        """The running value kept between steps (batchtopk: the inference threshold)."""
        return running

    def inference_threshold(
        self, running: float, extra: torch.nn.Parameter | None, d_sae: int
    ) -> torch.Tensor:
        """The (d_sae,) threshold a trained SAE keeps, on the training scale."""
        return lazy_torch.zeros(d_sae)

    def metrics(self, running: float) -> dict[str, float]:
        """Architecture-specific training metrics."""
        return {}

    def prepare_export(self, sae: SAE, cfg: TrainConfig) -> None:
        """Last changes to a trained SAE's copy before it is saved (in place)."""

    # -- SAELens -----------------------------------------------------------------------
    def to_saelens(self, cfg: SAEConfig) -> SaelensMapping:
        raise NotImplementedError

    def from_saelens(
        self, raw: dict[str, Any], details: dict[str, Any], source: str
    ) -> tuple[Any, dict[str, Any]]:
        """(k, extra metadata) from a SAELens cfg.json (details: its training details)."""
        return None, {}
