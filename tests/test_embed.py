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
    embed,
    make_corpus,
    read_corpus,
)
from saescope.defaults import minilm_path
from saescope.io import read_json


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
    embed(EmbedConfig(run=str(news_run), shard_rows=128))
    assert read_json(news_run / "acts" / "manifest.json")["shards"] == before["shards"]
    with pytest.raises(SaescopeError, match="different run.*normalize"):
        embed(EmbedConfig(run=str(news_run), shard_rows=128, normalize=True))


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
        embed(
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
    # appending more vectors of the same dimension extends the store
    embed(
        EmbedConfig(
            run=str(tmp_path / "v_npy"), vectors=str(tmp_path / "v.npy"), append=True, shard_rows=16
        )
    )
    assert len(ActivationStore(tmp_path / "v_npy" / "acts")) == 100
    np.save(tmp_path / "w.npy", vecs[:, :6])
    with pytest.raises(SaescopeError, match="dimension 12, not 6"):
        embed(
            EmbedConfig(run=str(tmp_path / "v_npy"), vectors=str(tmp_path / "w.npy"), append=True)
        )
    (tmp_path / "few.txt").write_text("a\nb")
    with pytest.raises(SaescopeError, match="2 ids but the vectors file has 50 rows"):
        embed(
            EmbedConfig(
                run=str(tmp_path / "z"),
                vectors=str(tmp_path / "v.npy"),
                ids=str(tmp_path / "few.txt"),
            )
        )
    with pytest.raises(SaescopeError, match="no column 'embedding'"):
        embed(EmbedConfig(run=str(tmp_path / "z"), vectors=str(tmp_path / "v.parquet")))


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
