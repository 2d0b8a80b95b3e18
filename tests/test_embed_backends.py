"""The embedding backends: real exports of the packaged MiniLM to ONNX Runtime and
OpenVINO, their agreement with torch, the export cache, auto's choice and the errors."""

import dataclasses

import pytest
import torch
from conftest import run_cli

from saescope import (
    ActivationStore,
    CorpusConfig,
    EmbedConfig,
    SaescopeError,
    embed_corpus,
    make_corpus,
)
from saescope import embed_backends as eb
from saescope.defaults import DEFAULT_EMBED_MODEL
from saescope.device import onednn_allows
from saescope.embed import load_sentence_model
from saescope.io import read_json
from saescope.options.embed import EMBED_BACKENDS
from saescope.paths import RunPaths

TEXTS = [
    "The central bank raised interest rates for the third time this year.",
    "A short one.",
    "Scientists found traces of water ice in a crater near the lunar south pole, "
    "which could one day supply drinking water and rocket fuel to a crewed base.",
    "Der Hund schläft im Garten.",
    "Stocks fell sharply after the earnings report.",
    "She plays the violin in the city orchestra on weekends.",
] * 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh saescope cache for this module's exports."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAESCOPE_CACHE", str(path))
        mp.setattr(eb, "SAMPLE_TEXTS", 16)  # auto's sample: small, to keep the test short
        yield path


@pytest.fixture(scope="module")
def st():
    return load_sentence_model(DEFAULT_EMBED_MODEL)


@pytest.fixture(scope="module")
def ref(st):
    with torch.inference_mode():
        return st.encode(TEXTS, batch_size=8, convert_to_tensor=True)


def needs(backend: str) -> None:
    missing = eb.missing_modules(backend)
    if missing:
        reason = f"{backend} backend: {', '.join(missing)} not installed (pip install 'saescope[fast-embed]')"
        print(reason)
        pytest.skip(reason)
    why = eb.unsupported(backend)
    if why:  # openvino-bf16 on a CPU without native bfloat16: test_bf16_needs_native_support
        print(f"{backend}: {why}")
        pytest.skip(f"{backend}: {why}")


def test_the_option_lists_every_registered_backend():
    assert EMBED_BACKENDS == eb.CHOICES


@pytest.mark.parametrize(
    ("backend", "mean", "worst"),
    [
        ("onnx", 0.99999, 0.9999),
        ("onnx-int8", 0.99, 0.97),
        ("openvino", 0.99999, 0.9999),
        ("openvino-bf16", 0.9999, 0.999),
    ],
)
def test_exported_backend_agrees_with_torch(cache, st, ref, backend, mean, worst):
    needs(backend)
    model = eb.wrap(st, DEFAULT_EMBED_MODEL, backend)
    assert model.backend == backend and model.get_embedding_dimension() == 384
    got = model.encode(TEXTS, batch_size=8, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=1)
    assert cos.mean() >= mean and cos.min() >= worst, (backend, cos.mean(), cos.min())
    # normalize_embeddings gives unit rows, like sentence-transformers
    unit = model.encode(TEXTS[:3], convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(unit.norm(dim=1), torch.ones(3), atol=1e-5)


def test_int8_weights_stay_within_64(cache, st):
    """CPUs without VNNI (AVX2) sum uint8 x int8 pairs in int16, which saturates unless the
    weights stay within 64: every int8 weight of the onnx-int8 graph does."""
    needs("onnx-int8")
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(eb.export(st, DEFAULT_EMBED_MODEL, "onnx-int8"))).graph
    weights = [
        numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8
    ]
    assert len(weights) >= 36  # MiniLM-L6: 6 layers of q, k, v, output and two MLP matrices
    assert max(int(abs(w.astype(int)).max()) for w in weights) <= 64


def test_queries_run_on_the_stores_float32_backend(cache, st, ref, monkeypatch, capsys):
    """Queries and phrases beside a store run on the backend that embedded it when that is
    a float32 one (the same vectors as torch, faster); torch for a bfloat16 or int8 store,
    another model's store, or a backend that cannot run here (with a note)."""
    needs("openvino")
    from saescope.embed import encode_texts, load_query_model

    meta = {"source": "sentence-transformers", "model": DEFAULT_EMBED_MODEL}
    model = load_query_model(DEFAULT_EMBED_MODEL, meta | {"backend": "openvino"})
    assert model.backend == "openvino"
    got = encode_texts(model, TEXTS, 8, normalize=False)
    torch.testing.assert_close(got, ref.float(), rtol=1e-4, atol=1e-5)

    for other in (
        meta,  # a torch store
        meta | {"backend": "openvino-bf16"},
        meta | {"backend": "onnx-int8"},
        meta | {"backend": "openvino", "model": "some-other-model"},
    ):
        assert not isinstance(load_query_model(DEFAULT_EMBED_MODEL, other), eb.ExportedModel)
    monkeypatch.setattr(eb, "missing_modules", lambda name: ["openvino"])
    capsys.readouterr()
    fallback = load_query_model(DEFAULT_EMBED_MODEL, meta | {"backend": "openvino"})
    assert not isinstance(fallback, eb.ExportedModel)
    assert "queries run on torch (the openvino embedding backend needs openvino" in (
        capsys.readouterr().err
    )


def test_second_use_reuses_the_cached_export_and_check(cache, st, monkeypatch):
    needs("onnx")
    first = eb.export(st, DEFAULT_EMBED_MODEL, "onnx")
    c1 = eb.check(st, DEFAULT_EMBED_MODEL, "onnx")
    assert c1.cos_min >= 0.9999 and c1.n_texts == 16
    stamp = first.stat().st_mtime_ns

    def boom(*_a, **_k):
        raise AssertionError("exported or measured again")

    monkeypatch.setattr(eb, "_export_raw", boom)
    monkeypatch.setattr(eb, "_build", boom)
    monkeypatch.setattr(eb, "_timed_encode", boom)
    assert eb.export(st, DEFAULT_EMBED_MODEL, "onnx") == first
    assert first.stat().st_mtime_ns == stamp
    assert eb.check(st, DEFAULT_EMBED_MODEL, "onnx") == c1
    assert first.parent.parent == eb.backend_dir(DEFAULT_EMBED_MODEL)
    assert first.parent.parent.name.startswith(DEFAULT_EMBED_MODEL)


def test_auto_falls_back_to_torch(cache, st, monkeypatch):
    monkeypatch.setattr(eb, "installed", lambda: ["torch"])
    assert eb.choose(st, DEFAULT_EMBED_MODEL, "cpu")[0] == "torch"
    assert eb.choose(st, DEFAULT_EMBED_MODEL, "cuda")[0] == "torch"

    # installed but not faithful enough (or not faster): torch again
    everything = ["torch", "onnx", "onnx-int8", "openvino", "openvino-bf16"]
    monkeypatch.setattr(eb, "installed", lambda: everything)
    low = eb.Check("x", 0.99, 0.98, 500.0, 100.0, 16)
    monkeypatch.setattr(eb, "check", lambda _st, _n, b: dataclasses.replace(low, backend=b))
    backend, why = eb.choose(st, DEFAULT_EMBED_MODEL, "cpu")
    assert backend == "torch" and "0.999" in why
    slow = eb.Check("x", 1.0, 1.0, 105.0, 100.0, 16)
    monkeypatch.setattr(eb, "check", lambda _st, _n, b: dataclasses.replace(slow, backend=b))
    assert eb.choose(st, DEFAULT_EMBED_MODEL, "cpu")[0] == "torch"

    # the fastest faithful one wins; int8 and bfloat16 are never measured
    speeds = {"onnx": 150.0, "openvino": 200.0}
    seen = []

    def fake(_st, _n, b):
        seen.append(b)
        return eb.Check(b, 1.0, 0.9999, speeds[b], 100.0, 16)

    monkeypatch.setattr(eb, "check", fake)
    assert eb.choose(st, DEFAULT_EMBED_MODEL, "cpu")[0] == "openvino"
    assert seen == ["onnx", "openvino"]


def test_stage_records_the_backend_and_refuses_another_on_the_same_store(cache, tmp_path):
    needs("onnx")
    run = tmp_path / "run"
    make_corpus(CorpusConfig(run=str(run), source="news", limit=40))
    embed_corpus(EmbedConfig(run=str(run), backend="onnx", shard_rows=16))
    rp = RunPaths(run)
    assert ActivationStore(rp.acts).meta["backend"] == "onnx"
    record = read_json(rp.acts_record)
    assert record["config"]["backend"] == "onnx" and record["result"]["backend"] == "onnx"
    # another backend changes the vectors: refused without --overwrite
    with pytest.raises(SaescopeError, match="option backend"):
        embed_corpus(EmbedConfig(run=str(run), backend="torch", shard_rows=16))


def test_bad_backend_and_missing_extra_errors(cache, tmp_path, monkeypatch):
    with pytest.raises(SaescopeError, match="unknown embedding backend 'tensorrt'; choose one of"):
        eb.require("tensorrt")
    proc = run_cli("embed", "--run", str(tmp_path), "--backend", "tensorrt", check=False)
    assert proc.returncode == 2 and "invalid choice: 'tensorrt'" in proc.stderr

    gone = eb.Backend("onnx", "onnxruntime", ("onnxruntime_not_installed",))
    monkeypatch.setitem(eb.BACKENDS, "onnx", gone)
    make_corpus(CorpusConfig(run=str(tmp_path), source="news", limit=10))
    with pytest.raises(SaescopeError) as err:
        embed_corpus(EmbedConfig(run=str(tmp_path), backend="onnx"))
    msg = str(err.value)
    assert "\n" not in msg and "pip install 'saescope[fast-embed]'" in msg
    assert "onnxruntime_not_installed" in msg


def test_bf16_needs_native_support(cache, st, monkeypatch):
    """openvino-bf16 runs only where OpenVINO reports native bfloat16; elsewhere an
    explicit choice is refused in one line and auto never offers it."""
    needs("openvino")
    import openvino as ov

    native = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    native = native and onednn_allows("AMX", "BF16")
    assert (eb.unsupported("openvino-bf16") is None) == native
    assert eb.unsupported("openvino") is None
    assert ("openvino-bf16" in eb.installed()) == native

    # oneDNN capped below bfloat16: OpenVINO still lists BF16 but cannot compile it
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "openvino-bf16" not in eb.installed() and "openvino" in eb.installed()
    with pytest.raises(SaescopeError, match="caps oneDNN below bfloat16"):
        eb.require("openvino-bf16")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)

    class NoBF16Core(ov.Core):
        def get_property(self, device, name):
            caps = super().get_property(device, name)
            return [c for c in caps if c != "BF16"] if name == "OPTIMIZATION_CAPABILITIES" else caps

    monkeypatch.setattr(ov, "Core", NoBF16Core)
    assert "openvino-bf16" not in eb.installed() and "openvino" in eb.installed()
    with pytest.raises(SaescopeError, match="cannot run here: this CPU has no native bfloat16"):
        eb.require("openvino-bf16")
