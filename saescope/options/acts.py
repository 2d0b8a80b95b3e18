"""Options of the LM activations stage (`saescope acts`, saescope/lm/acts.py)."""

from __future__ import annotations

from dataclasses import dataclass

from saescope.config import check_fields, option
from saescope.defaults import DEFAULT_LM
from saescope.paths import DEFAULT_RUN

PACKINGS = ("pack", "document")
MODEL_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ActsConfig:
    """Options of the LM activations stage."""

    run: str = option(DEFAULT_RUN, "run directory (reads corpus.parquet, writes acts/)")
    model: str = option(
        DEFAULT_LM,
        "Hugging Face causal LM: hub name, local folder or .gguf file "
        "(default: the packaged SmolLM2-135M-Instruct)",
    )
    hookpoint: str = option(
        "middle",
        "where to read: resid_post.L, resid_pre.L, mlp_out.L, attn_out.L, layers.L (sparsify), "
        "blocks.L.hook_resid_post (SAELens), a module name, or middle (resid_post of block "
        "n_layers // 2)",
    )
    list_hookpoints: bool = option(False, "print the model's hookpoints and stop")
    ctx_len: int = option(256, "tokens per context (BOS included)")
    packing: str = option(
        "pack",
        "pack: texts concatenated (EOS between them) and cut into contexts; "
        "document: one context per text, truncated and padded",
        choices=PACKINGS,
    )
    bos: bool = option(True, "start every context with the BOS token")
    keep_special: bool = option(
        False, "store BOS, EOS and other special tokens too (padding never is)"
    )
    batch_size: int = option(16, "contexts per forward pass")
    device: str = option("auto", "cuda, cpu or auto (cuda when present)")
    model_dtype: str = option(
        "float32", "dtype the model runs in (bfloat16 halves GPU memory)", choices=MODEL_DTYPES
    )
    dtype: str = option(
        "float32",
        "storage dtype (float16 is refused for values beyond its range, as residual streams often hold)",
        choices=("float32", "float16", "bfloat16"),
    )
    shard_rows: int = option(16384, "tokens per store shard (the unit of resume)")
    max_tokens: int | None = option(
        None,
        "store at most this many tokens: whole contexts only, so the stage stops before the "
        "context that would pass it",
    )
    overwrite: bool = option(False, "replace an existing store made with other options")

    def __post_init__(self) -> None:
        check_fields(self)
        # a stray space ("resid_post.6 ") would be kept in the store's meta and record
        object.__setattr__(self, "hookpoint", self.hookpoint.strip())
        object.__setattr__(self, "model", self.model.strip())
