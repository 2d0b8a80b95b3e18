import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
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
    read_corpus,
)
from saescope.defaults import minilm_path
from saescope.io import read_json, sha256_file
from saescope.store import StoreWriter


def test_store_rows_equal_a_plain_sentence_transformers_encode(news_run):
    from sentence_transformers import SentenceTransformer

    store = ActivationStore(news_run / "acts")
    texts = read_corpus(news_run)["text"].tolist()
    assert (len(store), store.d_in) == (len(texts), 384)
    ref = SentenceTransformer(str(minilm_path()), device="cpu").encode(
        texts[:64], convert_to_tensor=True
    )
    got = store.rows(range(64))
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=1)
    assert cos.min() > 0.9999
    assert (news_run / "acts" / "config.json").exists()


def test_same_config_rerun_is_a_no_op_and_changed_corpus_is_refused(news_run, tmp_path):
    before = read_json(news_run / "acts" / "manifest.json")
    embed_corpus(EmbedConfig(run=str(news_run), shard_rows=128))
    assert read_json(news_run / "acts" / "manifest.json")["shards"] == before["shards"]
    with pytest.raises(SaescopeError, match="option normalize: False -> True"):
        embed_corpus(EmbedConfig(run=str(news_run), shard_rows=128, normalize=True))
    # a corpus rebuilt under the store: refused, naming the input, and the store is untouched
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(news_run, run)
    make_corpus(CorpusConfig(run=str(run), source="news", shuffle=True, limit=500, overwrite=True))
    with pytest.raises(SaescopeError, match="input corpus changed since"):
        embed_corpus(EmbedConfig(run=str(run), shard_rows=128))
    assert read_json(run / "acts" / "manifest.json")["shards"] == before["shards"]


def _embed_cmd(run):
    return [
        sys.executable,
        "-m",
        "saescope",
        "embed",
        "--run",
        str(run),
        "--shard-rows",
        "32",
        "--batch-size",
        "16",
    ]


def test_sigkill_mid_embed_then_rerun_gives_the_uninterrupted_store(tmp_path):
    runs = [tmp_path / "killed", tmp_path / "whole"]
    for run in runs:
        make_corpus(CorpusConfig(run=str(run), source="tweets", shuffle=True, limit=400))
    manifest = runs[0] / "acts" / "manifest.json"
    proc = subprocess.Popen(
        _embed_cmd(runs[0]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.exists() and len(read_json(manifest)["shards"]) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_json(manifest)
    assert not partial["complete"] and 3 <= len(partial["shards"]) < 13
    subprocess.run(_embed_cmd(runs[0]), check=True, capture_output=True)
    subprocess.run(_embed_cmd(runs[1]), check=True, capture_output=True)
    a, b = ActivationStore(runs[0] / "acts"), ActivationStore(runs[1] / "acts")
    assert len(a) == len(b) == 400
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert torch.equal(a.rows(range(400)), b.rows(range(400)))
    assert not list((runs[0] / "acts").glob("*.tmp"))


def test_import_precomputed_vectors_from_npy_safetensors_and_parquet(tmp_path):
    from safetensors.numpy import save_file

    vecs = np.random.default_rng(0).normal(size=(50, 12)).astype(np.float32)
    np.save(tmp_path / "v.npy", vecs)
    save_file({"emb": vecs}, str(tmp_path / "v.safetensors"))
    pd.DataFrame({"vec": list(vecs)}).to_parquet(tmp_path / "v.parquet")
    (tmp_path / "ids.txt").write_text("\n".join(f"paper-{i}" for i in range(50)))
    for name, key in [("v.npy", None), ("v.safetensors", "emb"), ("v.parquet", "vec")]:
        run = tmp_path / name.replace(".", "_")
        embed_corpus(
            EmbedConfig(
                run=str(run),
                vectors=str(tmp_path / name),
                vectors_key=key,
                ids=str(tmp_path / "ids.txt"),
                shard_rows=16,
            )
        )
        store = ActivationStore(run / "acts")
        assert store.meta["source"] == "vectors"
        assert torch.equal(store.rows(range(50)), torch.from_numpy(vecs))
        ids = pd.read_parquet(run / "acts" / "ids.parquet")
        assert ids["id"].tolist()[7] == "paper-7"
    # appending other vectors of the same dimension extends the store
    np.save(tmp_path / "v2.npy", vecs[::-1].copy())
    embed_corpus(
        EmbedConfig(
            run=str(tmp_path / "v_npy"),
            vectors=str(tmp_path / "v2.npy"),
            append=True,
            shard_rows=16,
        )
    )
    assert len(ActivationStore(tmp_path / "v_npy" / "acts")) == 100
    np.save(tmp_path / "w.npy", vecs[:, :6])
    with pytest.raises(SaescopeError, match="dimension 12, not 6"):
        embed_corpus(
            EmbedConfig(run=str(tmp_path / "v_npy"), vectors=str(tmp_path / "w.npy"), append=True)
        )
    (tmp_path / "few.txt").write_text("a\nb")
    with pytest.raises(SaescopeError, match="2 ids but the vectors file has 50 rows"):
        embed_corpus(
            EmbedConfig(
                run=str(tmp_path / "z"),
                vectors=str(tmp_path / "v.npy"),
                ids=str(tmp_path / "few.txt"),
            )
        )
    with pytest.raises(SaescopeError, match="no column 'embedding'"):
        embed_corpus(EmbedConfig(run=str(tmp_path / "z"), vectors=str(tmp_path / "v.parquet")))


def test_unloadable_model_and_missing_corpus_are_one_line_errors(tmp_path):
    run = tmp_path / "r"
    proc = run_cli("embed", "--run", str(run), check=False)
    assert proc.returncode == 2 and "no corpus" in proc.stderr and "Traceback" not in proc.stderr
    make_corpus(CorpusConfig(run=str(run), source="tweets", limit=5))
    proc = run_cli(
        "embed", "--run", str(run), "--model", str(tmp_path / "no-such-model"), check=False
    )
    assert proc.returncode == 2 and "cannot load sentence-transformers model" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def _import(run, path, **kw):
    return embed_corpus(EmbedConfig(run=str(run), vectors=str(path), shard_rows=16, **kw))


def test_appending_a_file_twice_adds_nothing_and_the_store_lists_its_imports(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(25, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    (tmp_path / "a.txt").write_text("\n".join(f"a{i}" for i in range(40)))
    (tmp_path / "b.txt").write_text("\n".join(f"b{i}" for i in range(25)))
    run = tmp_path / "r"
    _import(run, tmp_path / "a.npy", ids=str(tmp_path / "a.txt"))
    _import(run, tmp_path / "a.npy", ids=str(tmp_path / "a.txt"))  # a plain re-run: no-op
    _import(run, tmp_path / "b.npy", ids=str(tmp_path / "b.txt"), append=True)
    before = read_json(run / "acts" / "manifest.json")
    capsys.readouterr()
    _import(run, tmp_path / "a.npy", ids=str(tmp_path / "a.txt"), append=True)
    err = capsys.readouterr().err
    assert "a.npy is already in" in err and "rows 0..39" in err and "nothing appended" in err
    after = read_json(run / "acts" / "manifest.json")
    assert after == before and after["count"] == 65
    assert [(r["file"], r["start"], r["stop"], r["complete"]) for r in after["imports"]] == [
        ("a.npy", 0, 40, True),
        ("b.npy", 40, 65, True),
    ]
    assert after["imports"][0]["sha256"] == sha256_file(tmp_path / "a.npy")
    store = ActivationStore(run / "acts")
    assert torch.equal(store.rows(range(65)), torch.from_numpy(np.concatenate([a, b])))
    ids = pd.read_parquet(run / "acts" / "ids.parquet")
    assert ids["row"].tolist() == list(range(65)) and ids["id"].tolist()[39:41] == ["a39", "b0"]
    # a store holding rows takes another file only with --append
    np.save(tmp_path / "c.npy", a[:3])
    with pytest.raises(SaescopeError, match="already holds 65 rows; pass --append"):
        _import(run, tmp_path / "c.npy")


def test_an_interrupted_append_resumes_and_gives_the_uninterrupted_store(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=(70, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    (tmp_path / "b.txt").write_text("\n".join(f"b{i}" for i in range(70)))
    for run in ("cut", "whole"):
        _import(tmp_path / run, tmp_path / "a.npy")
    original = StoreWriter.append
    calls = []

    def crash_on_third(self, rows):
        calls.append(len(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt
        original(self, rows)

    monkeypatch.setattr(StoreWriter, "append", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        _import(tmp_path / "cut", tmp_path / "b.npy", ids=str(tmp_path / "b.txt"), append=True)
    monkeypatch.setattr(StoreWriter, "append", original)
    partial = read_json(tmp_path / "cut" / "acts" / "manifest.json")
    assert not partial["complete"] and partial["imports"][1]["complete"] is False
    assert 30 < partial["count"] < 100
    np.save(tmp_path / "c.npy", a[:5])  # another file must wait for b.npy to finish
    with pytest.raises(SaescopeError, match="unfinished import of b.npy"):
        _import(tmp_path / "cut", tmp_path / "c.npy", append=True)
    for run in ("cut", "whole"):
        _import(tmp_path / run, tmp_path / "b.npy", ids=str(tmp_path / "b.txt"), append=True)
    cut, whole = (
        ActivationStore(tmp_path / "cut" / "acts"),
        ActivationStore(tmp_path / "whole" / "acts"),
    )
    assert len(cut) == len(whole) == 100
    assert torch.equal(cut.rows(range(100)), whole.rows(range(100)))
    assert cut.manifest["imports"] == whole.manifest["imports"]
    ids = pd.read_parquet(tmp_path / "cut" / "acts" / "ids.parquet")
    assert ids["row"].tolist() == list(range(30, 100))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_vectors_with_nan_or_inf_are_refused_before_anything_is_written(tmp_path, bad):
    vecs = np.ones((40, 5), dtype=np.float32)
    vecs[[7, 33], 2] = bad
    np.save(tmp_path / "v.npy", vecs)
    with pytest.raises(SaescopeError, match=r"v.npy.*row\(s\) 7, 33 hold NaN or inf"):
        _import(tmp_path / "r", tmp_path / "v.npy")
    assert not (tmp_path / "r" / "acts").exists()


def test_float16_store_refuses_vectors_beyond_its_range(tmp_path):
    vecs = np.ones((20, 3), dtype=np.float32)
    vecs[11, 0] = -7e4
    np.save(tmp_path / "v.npy", vecs)
    with pytest.raises(SaescopeError, match="row\\(s\\) 11 hold values beyond float16.*bfloat16"):
        _import(tmp_path / "r", tmp_path / "v.npy", dtype="float16")
    _import(tmp_path / "r", tmp_path / "v.npy", dtype="bfloat16")
    assert ActivationStore(tmp_path / "r" / "acts").rows([11])[0, 0] == pytest.approx(
        -7e4, rel=1e-2
    )


def test_importing_rows_that_cannot_be_one_per_corpus_text_says_so(tmp_path, capsys):
    """A run with a corpus of 12 texts: an import of 5 rows notes the mismatch on stderr
    (an --append may still fill them), the stages that read texts then refuse naming
    both counts, and a second file that brings the rows to 12 ends the note."""
    from saescope.examples.tokens import row_texts

    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(
        {"id": [str(i) for i in range(12)], "text": [f"text {i}" for i in range(12)]}
    ).to_parquet(run / "corpus.parquet")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(5, 6)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.normal(size=(7, 6)).astype(np.float32))
    _import(run, tmp_path / "a.npy")
    assert "now holds 5 rows and" in capsys.readouterr().err
    with pytest.raises(SaescopeError, match="holds 5 rows but its corpus.parquet 12 texts"):
        row_texts(run)
    _import(run, tmp_path / "b.npy", append=True)
    assert "now holds" not in capsys.readouterr().err
    assert row_texts(run)[11] == "text 11"


def test_imports_that_would_be_silently_wrong_are_refused_and_a_key_names_one_file(tmp_path):
    from safetensors.numpy import save_file

    a = np.random.default_rng(1).normal(size=(20, 6)).astype(np.float32)
    save_file({"x": a, "y": -a}, str(tmp_path / "two.safetensors"))
    with pytest.raises(SaescopeError, match="holds 2 tensors \\(x, y\\); choose one with"):
        _import(tmp_path / "r2", tmp_path / "two.safetensors")
    np.save(tmp_path / "empty.npy", np.zeros((0, 6), dtype=np.float32))
    with pytest.raises(SaescopeError, match="holds no rows"):
        _import(tmp_path / "r0", tmp_path / "empty.npy")
    np.save(tmp_path / "a.npy", a)
    (tmp_path / "dup.txt").write_text("\n".join(["same"] * 20))
    with pytest.raises(SaescopeError, match="the id 'same' is given more than once"):
        _import(tmp_path / "rd", tmp_path / "a.npy", ids=str(tmp_path / "dup.txt"))
    # --vectors-key names the tensor of one file: another file may need another key
    run = tmp_path / "r"
    _import(run, tmp_path / "a.npy")
    _import(run, tmp_path / "two.safetensors", vectors_key="y", append=True)
    store = ActivationStore(run / "acts")
    assert torch.equal(store.rows(range(20, 40)), torch.from_numpy(-a))


def test_a_max_seq_length_beyond_the_models_positions_is_refused_before_any_row(tmp_path):
    """It was taken, and the first text longer than 512 tokens crashed the run mid-way."""
    run = tmp_path / "long"
    make_corpus(CorpusConfig(run=str(run), source="tweets", limit=5))
    with pytest.raises(SaescopeError, match="--max-seq-length 100000 is more than the 512"):
        embed_corpus(EmbedConfig(run=str(run), backend="torch", max_seq_length=100000))
    assert not (run / "acts" / "manifest.json").exists()
