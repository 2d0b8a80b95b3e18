"""Options of the embedding stage (`saescope embed`, saescope/embed.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from saescope.config import check_fields, check_ranges, option
from saescope.defaults import DEFAULT_EMBED_MODEL
from saescope.paths import DEFAULT_RUN

# saescope/embed_backends.py holds what each one is; a test checks the two agree
EMBED_BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-bf16")


@dataclass(frozen=True)
class EmbedConfig:
    """Options of the embedding stage."""

    run: str = option(DEFAULT_RUN, "run directory (reads corpus.parquet, writes acts/)")
    model: str = option(
        DEFAULT_EMBED_MODEL,
        "sentence-transformers model name or local path (default: the packaged all-MiniLM-L6-v2)",
    )
    backend: str | None = option(
        None,
        "how the model runs: torch (sentence-transformers), onnx (ONNX Runtime), onnx-int8 "
        "(ONNX Runtime, int8 weights; cosine ~0.99 to torch), openvino (OpenVINO, float32), "
        "openvino-bf16 (OpenVINO in bfloat16, on CPUs with native bfloat16: AMX, AVX512-BF16; "
        "cosine ~0.99998); onnx and openvino run on CPU and need pip install "
        "'saescope[fast-embed]'. Unset or auto: the fastest installed float32 one whose "
        "vectors keep cosine >= 0.999 to torch's on a fixed sample and that runs >= 1.1x torch "
        "there, measured once per model and cached; else torch (always on a GPU). int8 and "
        "bfloat16 only by name (their vectors depend on the batch a text is in, so a query "
        "embedded alone cannot reproduce its store row)",
        choices=EMBED_BACKENDS,
    )
    batch_size: int = option(64, "texts per forward pass")
    normalize: bool = option(False, "L2-normalise each embedding")
    device: str = option("auto", "cuda, cpu or auto (cuda when present)")
    dtype: str = option("float32", "storage dtype", choices=("float32", "float16", "bfloat16"))
    shard_rows: int = option(8192, "rows per store shard (the unit of resume)")
    max_seq_length: int | None = option(None, "truncate texts to this many tokens (model default)")
    vectors: str | None = option(
        None, "import precomputed vectors from a .npy, .safetensors or .parquet file instead"
    )
    vectors_key: str | None = option(
        None, "tensor name (.safetensors) or list column (.parquet) holding the vectors"
    )
    ids: str | None = option(
        None, "file of row ids for --vectors (.txt one per line, .npy, .parquet)"
    )
    append: bool = option(False, "--vectors: append to an existing store of the same dimension")
    overwrite: bool = option(False, "replace an existing store made with other options")

    def __post_init__(self) -> None:
        check_fields(self)
        at_least_one = (1, math.inf, ">= 1")
        check_ranges(
            self, dict.fromkeys(("batch_size", "shard_rows", "max_seq_length"), at_least_one)
        )
