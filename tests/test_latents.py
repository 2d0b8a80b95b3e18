"""Latent cache: statistics and examples against brute force on a small real store."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import load_file

from saescope.errors import SaescopeError
from saescope.io import read_json, write_json
from saescope.latents import FEATURES_SCHEMA, LatentCache, LatentsConfig, run
from saescope.paths import RunPaths
from saescope.sae import SAE, SAEConfig
from saescope.store import ActivationStore, StoreWriter

D_SAE = 256


def make_sae(store: ActivationStore, arch: str, seed: int = 0) -> SAE:
    """An untrained but sensible SAE: unit random decoder rows, tied encoder, mean b_dec."""
    x = torch.cat(list(store.iter_batches(4096, shuffle=False)))
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(arch, store.d_in, D_SAE, k=8 if arch == "topk" else None))
    with torch.no_grad():
        w = torch.nn.functional.normalize(torch.randn(D_SAE, store.d_in, generator=g), dim=1)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_dec.copy_(x.mean(0))
        if arch == "relu":
            sae.b_enc.fill_(-0.08)
            sae.b_enc[:10] = -100.0  # ten dead features
    return sae


def new_run(news_run: Path, dest: Path, arch: str) -> Path:
    """A copy of the shared news run (corpus + store) with its own SAE."""
    dest.mkdir(parents=True)
    shutil.copy(news_run / "corpus.parquet", dest / "corpus.parquet")
    shutil.copytree(news_run / "acts", dest / "acts")
    make_sae(ActivationStore(dest / "acts"), arch).save(dest / "sae")
    return dest


CFG = {"shard_rows": 128, "batch_size": 64, "top_n": 10, "n_quantiles": 5}


@pytest.fixture(scope="module", params=["topk", "relu"])
def cached(request, news_run: Path, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """(run dir with a finished cache, dense codes (n_rows, d_sae) by brute force)."""
    arch = request.param
    rd = new_run(news_run, tmp_path_factory.mktemp(f"lat-{arch}") / "run", arch)
    run(LatentsConfig(run=str(rd), **CFG))
    store = ActivationStore(rd / "acts")
    sae = SAE.load(rd / "sae")
    with torch.inference_mode():
        dense = sae.encode(store.rows(np.arange(store.count))).numpy()
    return rd, dense


def test_counts_density_max_mean_match_brute_force(cached) -> None:
    rd, dense = cached
    df = pd.read_parquet(RunPaths(rd).features)
    n_rows = dense.shape[0]
    count = (dense > 0).sum(0)
    assert (df["feature"].to_numpy() == np.arange(D_SAE)).all()
    assert (df["count"].to_numpy() == count).all()
    np.testing.assert_allclose(df["density"], count / n_rows)
    np.testing.assert_allclose(df["max_act"], dense.max(0), rtol=1e-6)
    np.testing.assert_allclose(
        df["mean_act"], dense.mean(0, dtype=np.float64), rtol=1e-5, atol=1e-7
    )
    alive = count > 0
    assert (df["dead"].to_numpy() == ~alive).all()
    mean_active = dense.sum(0, dtype=np.float64)[alive] / count[alive]
    np.testing.assert_allclose(df["mean_active_act"][alive], mean_active, rtol=1e-5)
    assert df["log10_density"][~alive].isna().all()
    np.testing.assert_allclose(df["log10_density"][alive], np.log10(count[alive] / n_rows))


def test_schema_is_exact(cached) -> None:
    rd, _ = cached
    assert pq.read_schema(RunPaths(rd).features).remove_metadata() == FEATURES_SCHEMA


def test_top_examples_are_the_highest_activations(cached) -> None:
    rd, dense = cached
    df = pd.read_parquet(RunPaths(rd).features)
    checked = 0
    for f in range(D_SAE):
        col = dense[:, f]
        rows, acts = np.asarray(df.at[f, "top_rows"]), np.asarray(df.at[f, "top_acts"])
        n = min(CFG["top_n"], int((col > 0).sum()))
        assert len(rows) == len(acts) == n
        if n == 0:
            continue
        best = np.sort(col)[::-1][:n]
        np.testing.assert_allclose(acts, best, rtol=1e-6)  # descending, the true top values
        np.testing.assert_allclose(col[rows], acts, rtol=1e-6)  # and these rows carry them
        assert len(set(rows.tolist())) == n
        checked += 1
    assert checked > 100


def test_quantile_examples_lie_in_their_bins(cached) -> None:
    rd, dense = cached
    df = pd.read_parquet(RunPaths(rd).features)
    nq, per_q = CFG["n_quantiles"], LatentsConfig.examples_per_quantile
    for f in range(D_SAE):
        col = dense[:, f]
        active = np.nonzero(col > 0)[0]
        rows = np.asarray(df.at[f, "quantile_rows"])
        acts = np.asarray(df.at[f, "quantile_acts"])
        bins = np.asarray(df.at[f, "quantile_bins"])
        if len(active) == 0:
            assert len(rows) == len(acts) == len(bins) == 0
            continue
        np.testing.assert_allclose(col[rows], acts, rtol=1e-6)
        # rank of each example among the feature's activations (ties by row id)
        order = np.lexsort((active, col[active]))
        rank = {int(r): i for i, r in enumerate(active[order])}
        c = len(active)
        expect_bins = [(rank[int(r)] * nq) // c for r in rows]
        assert bins.tolist() == expect_bins
        sizes = np.bincount((np.arange(c) * nq) // c, minlength=nq)
        got = np.bincount(bins, minlength=nq)
        assert (got == np.minimum(sizes, per_q)).all()
        assert (np.diff(bins) >= 0).all()  # grouped by bin, lowest first


def test_random_rows_do_not_activate(cached) -> None:
    rd, dense = cached
    df = pd.read_parquet(RunPaths(rd).features)
    for f in range(D_SAE):
        rows = np.asarray(df.at[f, "random_rows"])
        n_active = int((dense[:, f] > 0).sum())
        if n_active == 0:
            assert len(rows) == 0  # dead features have empty lists
            continue
        assert len(rows) == min(LatentsConfig.n_random, dense.shape[0] - n_active)
        assert len(set(rows.tolist())) == len(rows)
        assert (dense[rows, f] == 0).all()


def test_cache_reader_and_cooccurrence_equal_brute_force(cached) -> None:
    rd, dense = cached
    cache = LatentCache(rd)
    assert (cache.n_rows, cache.d_sae) == dense.shape
    assert cache.nnz == int((dense > 0).sum())
    np.testing.assert_array_equal(cache.to_csr().toarray(), dense)
    f = int(np.argmax((dense > 0).sum(0)))
    rows, vals = cache.feature_values(f)
    np.testing.assert_array_equal(rows, np.nonzero(dense[:, f])[0])
    np.testing.assert_array_equal(vals, dense[rows, f])
    with pytest.raises(SaescopeError, match="out of range"):
        cache.feature_values(D_SAE)

    co = load_file(str(RunPaths(rd).cooccurrence))
    b = (dense > 0).astype(np.int64)
    xtx = b.T @ b
    assert co["indices"].dtype == np.int32 and co["counts"].dtype == np.int64
    i, j = co["indices"]
    assert (i < j).all()
    np.testing.assert_array_equal(co["counts"], xtx[i, j])
    upper = np.triu(xtx, 1)
    assert len(i) == int((upper > 0).sum())  # every co-occurring pair, and only those
    np.testing.assert_array_equal(co["diagonal"], np.diag(xtx))


def test_index_maps_rows_to_corpus_docs(cached) -> None:
    rd, dense = cached
    idx = pd.read_parquet(RunPaths(rd).latent_index)
    corpus = pd.read_parquet(rd / "corpus.parquet")
    assert list(idx.columns) == ["row", "doc", "position"]
    assert (idx["row"].to_numpy() == np.arange(len(dense))).all()
    assert (idx["doc"] == corpus["doc"].astype(str)).all()
    assert (idx["position"] == 0).all()


def test_plots_written(cached) -> None:
    rd, _ = cached
    for name in ("density.png", "l0.png", "activations.png"):
        data = (RunPaths(rd).plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_resume_after_interruption_gives_identical_cache(news_run: Path, tmp_path: Path) -> None:
    rd = new_run(news_run, tmp_path / "full", "topk")
    out = run(LatentsConfig(run=str(rd), **CFG))
    ref_manifest = read_json(out / "manifest.json")
    ref_features = pd.read_parquet(out / "features.parquet")
    assert len(ref_manifest["shards"]) >= 4

    # what a kill after the second shard leaves: a manifest listing two shards, a stray temp file
    rp = RunPaths(rd)
    m = dict(ref_manifest, complete=False, shards=ref_manifest["shards"][:2])
    m["rows_done"], m["nnz"] = m["shards"][-1]["stop"], sum(s["nnz"] for s in m["shards"])
    for s in ref_manifest["shards"][2:]:
        (rp.latents / s["file"]).unlink()
    for p in (rp.features, rp.latents_config, rp.cooccurrence):
        p.unlink()
    write_json(rp.latents_manifest, m)
    (rp.latents / ".shard-00002.safetensors.abc.tmp").write_bytes(b"partial")
    kept = (rp.latents / "shard-00000.safetensors").stat().st_mtime_ns
    with pytest.raises(SaescopeError, match="incomplete"):
        LatentCache(rd)

    run(LatentsConfig(run=str(rd), **CFG))
    again = read_json(rp.latents_manifest)
    assert (rp.latents / "shard-00000.safetensors").stat().st_mtime_ns == kept  # not redone
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in ref_manifest["shards"]]
    pd.testing.assert_frame_equal(pd.read_parquet(rp.features), ref_features)

    # same config again: nothing is rewritten
    before = rp.features.stat().st_mtime_ns
    run(LatentsConfig(run=str(rd), **CFG))
    assert rp.features.stat().st_mtime_ns == before

    # other statistics options reuse the shards; a small memory budget gives the same examples
    run(LatentsConfig(run=str(rd), **(CFG | {"max_chunk_nnz": 300})))
    assert (rp.latents / "shard-00000.safetensors").stat().st_mtime_ns == kept
    pd.testing.assert_frame_equal(pd.read_parquet(rp.features), ref_features)

    # another SAE: refused without --overwrite, replaced with it
    make_sae(ActivationStore(rd / "acts"), "topk", seed=1).save(rd / "sae")
    with pytest.raises(SaescopeError, match="overwrite"):
        run(LatentsConfig(run=str(rd), **CFG))
    run(LatentsConfig(run=str(rd), overwrite=True, **CFG))
    assert not pd.read_parquet(rp.features).equals(ref_features)


def test_errors_name_the_problem(news_run: Path, tmp_path: Path) -> None:
    with pytest.raises(SaescopeError, match="no latent cache"):
        LatentCache(tmp_path)
    rd = new_run(news_run, tmp_path / "r", "topk")
    with pytest.raises(SaescopeError, match="SAE folder"):
        run(LatentsConfig(run=str(rd), sae=str(tmp_path / "nowhere")))
    SAE(SAEConfig("topk", 16, 32, k=4)).save(tmp_path / "small")
    with pytest.raises(SaescopeError, match="d_in=16"):
        run(LatentsConfig(run=str(rd), sae=str(tmp_path / "small")))


def test_an_sae_of_another_model_is_refused(news_run: Path, tmp_path: Path) -> None:
    """Same width, another embedding model: the SAE says so (its training store's meta),
    and latents refuses it instead of encoding these rows with it."""
    rd = new_run(news_run, tmp_path / "r", "topk")
    sae = SAE.load(rd / "sae")
    meta = read_json(RunPaths(rd).acts_manifest)["meta"]
    other = {**sae.cfg.metadata, "store_meta": {**meta, "model": "BAAI/bge-small-en-v1.5"}}
    SAE.from_tensors(dataclasses.replace(sae.cfg, metadata=other), sae.state_tensors()).save(
        tmp_path / "bge"
    )
    with pytest.raises(SaescopeError, match="trained on BAAI/bge-small-en-v1.5"):
        run(LatentsConfig(run=str(rd), sae=str(tmp_path / "bge"), **CFG))
    # the same model by a local path is the same model
    same = {**sae.cfg.metadata, "store_meta": {**meta, "model": f"/models/{meta['model']}"}}
    SAE.from_tensors(dataclasses.replace(sae.cfg, metadata=same), sae.state_tensors()).save(
        tmp_path / "local"
    )
    run(LatentsConfig(run=str(rd), sae=str(tmp_path / "local"), **CFG))
    # --sae names a folder inside the run as eval's does (it was read from the working dir)
    shutil.copytree(tmp_path / "local", rd / "sae-local")
    # (the same weights: the cache made from `local` is up to date for it)
    assert run(LatentsConfig(run=str(rd), sae="sae-local", **CFG)) == RunPaths(rd).latents


def test_a_cache_of_a_remade_store_is_refused(news_run: Path, tmp_path: Path) -> None:
    """The store re-made with other rows (same width and count): the cache's rows and
    statistics are of the old ones, so reading it is refused, naming the re-run."""
    rd = new_run(news_run, tmp_path / "r", "topk")
    run(LatentsConfig(run=str(rd), **CFG))
    LatentCache(rd)  # fresh
    store = ActivationStore(rd / "acts")
    rows = store.rows(np.arange(store.count))
    shutil.rmtree(rd / "acts")
    w = StoreWriter(rd / "acts", store.d_in, meta=store.meta)
    w.append(-rows)
    w.close()
    with pytest.raises(SaescopeError, match="made from another activation store"):
        LatentCache(rd)


def test_sparse_cooccurrence_path_equals_dense(cached, monkeypatch) -> None:
    """Large SAEs sum sparse chunk products instead of a dense table: same counts."""
    from saescope import features

    rd, _ = cached
    ref = load_file(str(RunPaths(rd).cooccurrence))
    monkeypatch.setattr(features, "DENSE_COOCCURRENCE_MAX", 0)
    co = features.cooccurrence(LatentCache(rd).triples, D_SAE, chunk_rows=100)
    np.testing.assert_array_equal(co.indices, ref["indices"])
    np.testing.assert_array_equal(co.counts, ref["counts"])
    np.testing.assert_array_equal(co.diagonal, ref["diagonal"])


def test_shards_are_cut_by_nonzeros_too(cached, tmp_path: Path, monkeypatch) -> None:
    """Dense codes flush shards early (bounded memory); the tables do not change."""
    from saescope import latents

    rd, dense = cached
    other = tmp_path / "run"
    other.mkdir()
    for name in ("corpus.parquet", "acts", "sae"):
        src = rd / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, other / name)
    monkeypatch.setattr(latents, "MAX_SHARD_NNZ", 300)
    run(LatentsConfig(run=str(other), **CFG))
    m = read_json(RunPaths(other).latents_manifest)
    assert len(m["shards"]) > len(read_json(RunPaths(rd).latents_manifest)["shards"])
    assert all(s["nnz"] < 300 + CFG["batch_size"] * D_SAE for s in m["shards"])
    assert m["shards"][-1]["stop"] == len(dense) and m["nnz"] == int((dense > 0).sum())
    pd.testing.assert_frame_equal(
        pd.read_parquet(RunPaths(other).features), pd.read_parquet(RunPaths(rd).features)
    )


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_encode_sparse_equals_dense_codes(arch: str) -> None:
    from saescope.sae.sparse import encode_sparse

    g = torch.Generator().manual_seed(3)
    cfg = SAEConfig(arch, 24, 64, k=6 if arch == "topk" else None, input_norm="row_standardize")
    sae = SAE.from_tensors(
        cfg,
        {
            "W_enc": torch.randn(24, 64, generator=g),
            "b_enc": torch.randn(64, generator=g) - 1.0,
            "W_dec": torch.randn(64, 24, generator=g),
            "b_dec": torch.randn(24, generator=g),
            "threshold": torch.rand(64, generator=g),
        },
    )
    x = torch.randn(50, 24, generator=g)
    with torch.inference_mode():
        dense = sae.encode(x)
        rows, feats, vals = encode_sparse(sae, x)
    r, f = dense.nonzero(as_tuple=True)
    assert torch.equal(rows, r) and torch.equal(feats, f)  # row-major, features ascending
    assert torch.equal(vals, dense[r, f])
    assert (vals > 0).all()
