"""`saescope compare`: two SAEs whose shared features are known by construction (one
made from the other: features permuted, some replaced by new directions), alone and on
a real store's rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_sae_weights

from saescope import SaescopeError
from saescope.cli import main
from saescope.compare import compare
from saescope.sae import SAE, SAEConfig

D_IN, D_SAE = 384, 96
REPLACED = 24  # features of B that are new directions, not A's


def _pair(folder: Path, silenced: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """SAE A, and B = A's features in another order with the last REPLACED of them
    swapped for new random directions; returns (perm, replaced): B's feature perm[i] is
    A's feature i, and replaced lists A's features that B has no more. JumpReLU, whose
    features fire each by its own threshold: a kept feature gives the same codes (under
    TopK the new features would win some rows' top k from kept ones)."""
    g = torch.Generator().manual_seed(0)
    tensors = random_sae_weights(g, "jumprelu", D_IN, D_SAE, 0.05, 0.0)
    cfg = SAEConfig("jumprelu", D_IN, D_SAE)
    SAE.from_tensors(cfg, tensors).save(folder / "a")
    perm = torch.randperm(D_SAE, generator=g)  # B's feature perm[i] = A's feature i
    other = {n: t.clone() for n, t in tensors.items()}
    for name in ("W_dec", "b_enc", "threshold"):
        other[name][perm] = tensors[name]
    other["W_enc"][:, perm] = tensors["W_enc"]
    replaced = np.arange(D_SAE - REPLACED, D_SAE)  # A's features B loses
    fresh = torch.randn(REPLACED, D_IN, generator=g) * 0.05
    other["W_dec"][perm[replaced]] = fresh
    other["W_enc"][:, perm[replaced]] = torch.randn(D_IN, REPLACED, generator=g) * 0.05
    other["b_enc"][perm[:silenced]] = -1e4  # B's copies of A's first features never fire
    SAE.from_tensors(cfg, other).save(folder / "b")
    return perm.numpy(), replaced


def test_shared_features_are_the_ones_b_kept(tmp_path: Path) -> None:
    perm, replaced = _pair(tmp_path)
    r = compare(str(tmp_path / "a"), str(tmp_path / "b"), n=REPLACED)
    assert (r.matching, r.pairs) == ("hungarian", D_SAE)
    assert r.shared == D_SAE - REPLACED
    assert r.a.shared == pytest.approx((D_SAE - REPLACED) / D_SAE)
    # A's least matched features are exactly the replaced ones, and random directions in
    # 384 dimensions are far from all of B's
    assert sorted(u.feature for u in r.only_a) == replaced.tolist()
    assert all(u.max_cos < 0.4 for u in r.only_a)
    assert r.a.mmcs == pytest.approx(
        ((D_SAE - REPLACED) + sum(u.max_cos for u in r.only_a)) / D_SAE, abs=1e-4
    )
    # the most alike pairs are A's kept features with their permuted places in B
    assert all(p.b == perm[p.a] and p.decoder_cos > 0.999 for p in r.top_shared)
    # the histogram counts every feature once per side
    assert sum(row[2] for row in r.histogram) == sum(row[3] for row in r.histogram) == D_SAE
    assert r.histogram[-1][2] == D_SAE - REPLACED


def test_above_the_hungarian_limit_mutual_nearest_pairs_find_the_same(
    tmp_path: Path, monkeypatch
) -> None:
    import saescope.compare.match as match

    perm, replaced = _pair(tmp_path)
    monkeypatch.setattr(match, "HUNGARIAN_MAX", 1)
    r = compare(str(tmp_path / "a"), str(tmp_path / "b"), n=3)
    assert r.matching == "mutual nearest"
    assert r.shared == D_SAE - REPLACED and r.pairs >= r.shared
    assert all(p.b == perm[p.a] for p in r.top_shared)


def test_on_a_store_activations_correlate_and_silent_features_leave(
    news_run: Path, tmp_path: Path, capsys
) -> None:
    from saescope import ActivationStore, load_sae

    perm, replaced = _pair(tmp_path, silenced=10)
    args = [str(tmp_path / "a"), str(tmp_path / "b"), "--run", str(news_run), "--rows", "900"]
    assert main(["compare", *args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"] == 600  # every row of the store, when fewer than asked
    # live: firing on some row; a pair needs both its features live
    store = ActivationStore(news_run / "acts")
    with torch.no_grad():
        live_a = (load_sae(tmp_path / "a").encode(store.rows(np.arange(600))) > 0).any(0).numpy()
    kept_live = set(np.flatnonzero(live_a)) - set(replaced) - set(range(10))
    assert doc["a"]["alive"] == int(live_a.sum())
    assert doc["shared"] == len(kept_live) > 0
    assert doc["b"]["alive"] <= D_SAE - 10
    # a kept feature is the same function of the input: its codes correlate perfectly
    assert doc["mean_correlation"] == pytest.approx(1.0, abs=1e-4)
    fired = [p["correlation"] for p in doc["top_shared"] if p["correlation"] is not None]
    assert fired and all(c == pytest.approx(1.0, abs=1e-4) for c in fired)
    # features silent on the rows are left out of the live counts
    assert sum(row[2] for row in doc["histogram"]) == doc["a"]["alive"]
    assert main(["compare", *args]) == 0
    text = capsys.readouterr().out
    assert "activation correlation of shared pairs: mean 1.000" in text
    assert "firing on 600 rows" in text


def test_refusals(tmp_path: Path) -> None:
    _pair(tmp_path)
    g = torch.Generator().manual_seed(1)
    small = SAE.from_tensors(
        SAEConfig("topk", 16, 32, k=4), random_sae_weights(g, "topk", 16, 32, 0.1, 0.0)
    )
    small.save(tmp_path / "small")
    with pytest.raises(SaescopeError, match="different spaces"):
        compare(str(tmp_path / "a"), str(tmp_path / "small"))
    with pytest.raises(SaescopeError, match="--threshold must be in"):
        compare(str(tmp_path / "a"), str(tmp_path / "b"), threshold=0)
    with pytest.raises(SaescopeError, match="does not exist"):
        compare(str(tmp_path / "a"), str(tmp_path / "nothing"))
