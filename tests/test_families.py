"""Feature families and splitting on planted structure, through the real stages and files.

The planted run: vectors built from a known orthonormal dictionary of 8 topics, each
with 4 sub-topics, each with 4 leaves. A row holds one chain (topic, one of its
sub-topics, one of that sub-topic's leaves), sometimes two chains of different
topics, plus a little noise. The SAE of the run is the dictionary itself (encoder =
decoder transposed, a ReLU threshold above the noise), its feature ids shuffled; the
real latents stage caches its codes and co-occurrence, and the families stage must
find exactly the planted tree. A narrower SAE (one feature per topic, one per
sub-topic blended with its leaves) must be split by the wider one as planted.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import record_hand_made_names, run_cli

from saescope.errors import SaescopeError
from saescope.families.methods import rules
from saescope.families.stage import run as families
from saescope.families.tables import read_families
from saescope.io import read_json
from saescope.latents import LatentsConfig
from saescope.latents import run as latents
from saescope.options.families import METHODS, FamiliesConfig
from saescope.paths import RunPaths
from saescope.sae import SAE, SAEConfig
from saescope.store import StoreWriter

N_TOPICS, N_SUBS, N_LEAVES = 8, 4, 4  # sub-topics per topic, leaves per sub-topic
N_ROWS = 24_000
D_IN = 192
TWO_CHAINS = 0.12  # rows that hold a second chain, of another topic


@dataclass(frozen=True)
class Planted:
    run: Path
    topic: list[int]  # feature id of topic t
    sub: list[list[int]]  # feature id of sub-topic s of topic t
    leaf: list[list[list[int]]]  # feature id of leaf l of sub-topic s of topic t
    narrow_topic: list[int]  # the narrower SAE's feature of topic t
    narrow_sub: list[list[int]]  # the narrower SAE's feature of sub-topic (t, s)

    def subtree(self, t: int) -> set[int]:
        return {self.topic[t], *self.sub[t], *(f for s in self.leaf[t] for f in s)}


def _atoms(g: np.random.Generator) -> np.ndarray:
    """(n_atoms, D_IN) orthonormal rows."""
    n = N_TOPICS * (1 + N_SUBS * (1 + N_LEAVES))
    q, _ = np.linalg.qr(g.standard_normal((D_IN, n)))
    return q.T.astype(np.float32)


def _relu_sae(directions: np.ndarray, bias: float) -> SAE:
    d_sae = len(directions)
    sae = SAE(SAEConfig("relu", D_IN, d_sae))
    w = torch.from_numpy(directions)
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.fill_(-bias)
    return sae


def make_planted(run: Path, seed: int = 0) -> Planted:
    g = np.random.default_rng(seed)
    atoms = _atoms(g)
    n_atoms = len(atoms)
    ids = g.permutation(n_atoms)  # atom a is feature ids[a]
    a = iter(range(n_atoms))
    topic_atom = [next(a) for _ in range(N_TOPICS)]
    sub_atom = [[next(a) for _ in range(N_SUBS)] for _ in range(N_TOPICS)]
    leaf_atom = [
        [[next(a) for _ in range(N_LEAVES)] for _ in range(N_SUBS)] for _ in range(N_TOPICS)
    ]
    codes = np.zeros((N_ROWS, n_atoms), np.float32)
    for row in range(N_ROWS):
        n_chains = 2 if g.random() < TWO_CHAINS else 1
        for t in g.choice(N_TOPICS, n_chains, replace=False):
            s, leaf = g.integers(N_SUBS), g.integers(N_LEAVES)
            chain = [topic_atom[t], sub_atom[t][s], leaf_atom[t][s][leaf]]
            codes[row, chain] = g.uniform(0.5, 1.5, 3)
    x = codes @ atoms + g.normal(0, 0.01, (N_ROWS, D_IN)).astype(np.float32)
    rp = RunPaths(run)
    w = StoreWriter(rp.acts, D_IN, shard_rows=8192, meta={"source": "vectors"})
    w.append(torch.from_numpy(x))
    w.close()
    _relu_sae(atoms[np.argsort(ids)], bias=0.2).save(rp.sae)  # feature f is atom argsort[f]
    # the narrower SAE: each topic's direction, and each sub-topic's blended with its leaves
    narrow = [atoms[topic_atom[t]] for t in range(N_TOPICS)]
    for t in range(N_TOPICS):
        for s in range(N_SUBS):
            d = atoms[sub_atom[t][s]] + 0.5 * atoms[leaf_atom[t][s]].sum(0)
            narrow.append(d / np.linalg.norm(d))
    _relu_sae(np.stack(narrow), bias=0.2).save(rp.sae_variant(len(narrow), None))
    latents(LatentsConfig(run=str(run), shard_rows=8192, top_n=5, n_quantiles=3))
    f = ids.tolist()
    return Planted(
        run,
        topic=[f[x] for x in topic_atom],
        sub=[[f[x] for x in row] for row in sub_atom],
        leaf=[[[f[x] for x in s] for s in row] for row in leaf_atom],
        narrow_topic=list(range(N_TOPICS)),
        narrow_sub=[[N_TOPICS + t * N_SUBS + s for s in range(N_SUBS)] for t in range(N_TOPICS)],
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Planted:
    return make_planted(tmp_path_factory.mktemp("planted") / "run")


@pytest.fixture(scope="module")
def found(planted: Planted) -> Planted:
    """The planted run after `saescope families` with the defaults (saerch)."""
    families(FamiliesConfig(run=str(planted.run), progress=False))
    return planted


def _copy(p: Planted, dest: Path) -> Planted:
    """A copy of the planted run without the families or report made from it."""
    shutil.copytree(p.run, dest, ignore=shutil.ignore_patterns("families", "report"))
    return Planted(dest, p.topic, p.sub, p.leaf, p.narrow_topic, p.narrow_sub)


# --- the hierarchy ------------------------------------------------------------------


def test_planted_hierarchy_is_recovered(found: Planted) -> None:
    rp = RunPaths(found.run)
    fams = pd.read_parquet(rp.families_table)
    members = pd.read_parquet(rp.family_members)
    by_parent = {int(r.parent): set(int(m) for m in r.members) for r in fams.itertuples()}
    # one family per topic (all its sub-topics and leaves), one per sub-topic (its leaves)
    assert len(fams) == N_TOPICS + N_TOPICS * N_SUBS
    for t in range(N_TOPICS):
        assert by_parent[found.topic[t]] == found.subtree(t)
        for s in range(N_SUBS):
            assert by_parent[found.sub[t][s]] == {found.sub[t][s], *found.leaf[t][s]}
    # every leaf hangs from its sub-topic, every sub-topic from its topic, in every family
    up = members.groupby("feature")["tree_parent"].agg(set).to_dict()
    for t in range(N_TOPICS):
        for s in range(N_SUBS):
            assert up[found.sub[t][s]] == {found.topic[t], -1}
            for leaf in found.leaf[t][s]:
                assert up[leaf] == {found.sub[t][s]}
    topic_fams = fams[fams["parent"].isin(found.topic)]
    assert (topic_fams["depth"] == 2).all() and (topic_fams["n_children"] == N_SUBS).all()
    assert (topic_fams["size"] == 1 + N_SUBS * (1 + N_LEAVES)).all()
    # the tree file holds the same trees
    tree = read_json(rp.family_tree)
    first = tree["families"][0]["tree"]
    assert first["feature"] in found.topic
    t = found.topic.index(first["feature"])
    assert {c["feature"] for c in first["children"]} == set(found.sub[t])
    assert all(len(c["children"]) == N_LEAVES for c in first["children"])


def test_statistics_of_the_planted_families(found: Planted) -> None:
    rp = RunPaths(found.run)
    summ = read_json(rp.families_summary)
    assert summ["n_families"] == N_TOPICS * (1 + N_SUBS)
    assert summ["coverage"] == pytest.approx(1.0)
    assert summ["families_by_round"] == {"0": N_TOPICS * (1 + N_SUBS)}
    # co-occurrence is block-diagonal by topic: far above the same blocks over shuffled features
    assert summ["block_ratio"] > 0.7 and summ["block_ratio_random"] < 0.2
    assert summ["block_ratio_lift"] > 5
    fams = pd.read_parquet(rp.families_table)
    sub_fams = fams[~fams["parent"].isin(found.topic)]
    # a leaf fires only with its sub-topic: parent-child 1; two leaves never together: 0
    np.testing.assert_allclose(sub_fams["parent_child"], 1.0)
    np.testing.assert_allclose(sub_fams["child_child"], 0.0, atol=1e-6)
    topic_fams = fams[fams["parent"].isin(found.topic)]
    assert (topic_fams["parent_child"] > 0.99).all()
    assert (topic_fams["cooc_ratio"] > 3).all()
    assert summ["rules"] == rules(FamiliesConfig()).to_json()


def test_splits_of_the_narrower_sae_are_the_planted_ones(found: Planted) -> None:
    rp = RunPaths(found.run)
    splits = pd.read_parquet(rp.family_splits)
    n_narrow = N_TOPICS * (1 + N_SUBS)
    assert set(splits["small_sae"]) == {f"sae-{n_narrow}"} and set(splits["large_sae"]) == {"sae"}
    by_parent = splits.groupby("parent")
    for t in range(N_TOPICS):
        (row,) = by_parent.get_group(found.narrow_topic[t]).itertuples()
        assert row.child == found.topic[t] and row.cosine == pytest.approx(1.0, abs=1e-5)
        assert row.share == pytest.approx(1.0) and row.inside == pytest.approx(1.0)
        for s in range(N_SUBS):
            g = by_parent.get_group(found.narrow_sub[t][s]).set_index("child")
            assert set(g.index) == {found.sub[t][s], *found.leaf[t][s]}
            # the sub-topic's own direction is nearest; each leaf takes its share of the rows
            assert g.index[0] == found.sub[t][s]
            assert g.loc[found.sub[t][s], "cosine"] == pytest.approx(2**-0.5, abs=1e-4)
            leaves = g.loc[found.leaf[t][s]]
            np.testing.assert_allclose(leaves["cosine"], 0.5 * 2**-0.5, atol=1e-4)
            np.testing.assert_allclose(leaves["inside"], 1.0)
            assert leaves["share"].sum() == pytest.approx(1.0)
            assert (g["covered"] == 1.0).all()
    pair = read_json(rp.families_summary)["split_pairs"][0]
    assert pair["parents"] == n_narrow
    assert pair["parents_split_in_2_or_more"] == N_TOPICS * N_SUBS


def test_thesis_method_keeps_features_by_keyword_score(planted: Planted, tmp_path: Path) -> None:
    p = _copy(planted, tmp_path / "run")
    rp = RunPaths(p.run)
    # topics, sub-topics and the leaves of each topic's first sub-topic score high (43% of
    # the features), the other leaves low: the 75th percentile leaves those out
    words, scores, feats = [], [], []
    for t in range(N_TOPICS):
        high = [(p.topic[t], 0.9)] + [(s, 0.8) for s in p.sub[t]]
        high += [(leaf, 0.85) for leaf in p.leaf[t][0]]
        low = [(x, 0.1) for s in p.leaf[t][1:] for x in s]
        for f, score in high + low:
            feats.append(f)
            words.append([f"word{f}", "word"])
            scores.append([score, 0.05])
    _write_keywords(rp, feats, words, scores)
    families(FamiliesConfig(run=str(p.run), method="thesis", splits=False, progress=False))
    fams = pd.read_parquet(rp.families_table)
    got = {int(r.parent): set(r.members) for r in fams.itertuples()}
    # round 0: each topic with what is left below it; round 1: the first sub-topics (the
    # other sub-topics lost their leaves); leaves have no children
    want = {p.topic[t]: {p.topic[t], *p.sub[t], *p.leaf[t][0]} for t in range(N_TOPICS)}
    want |= {p.sub[t][0]: {p.sub[t][0], *p.leaf[t][0]} for t in range(N_TOPICS)}
    assert got == want
    assert read_json(rp.families_summary)["rules"]["keyword_percentile"] == 75.0


def test_every_method_has_its_published_rules() -> None:
    for method in METHODS:
        r = rules(FamiliesConfig(method=method))
        assert r.method == method and r.threshold == 0.1 and r.jaccard == 0.6
    assert rules(FamiliesConfig()).max_density == 0.2
    assert rules(FamiliesConfig(threshold=0.3)).threshold == 0.3


# --- names ----------------------------------------------------------------------------


def _write_keywords(rp: RunPaths, feats: list[int], words: list, scores: list) -> None:
    rp.interp.mkdir(exist_ok=True)
    table = pa.table(
        {
            "feature": pa.array(feats, pa.int32()),
            "keywords": words,
            "scores": pa.array(scores, pa.list_(pa.float32())),
            "method": ["contrastive"] * len(feats),
            "status": ["ok"] * len(feats),
        }
    )
    pq.write_table(table, rp.keywords)
    record_hand_made_names(rp.root)


def test_family_names_come_from_the_parent_and_the_children(planted: Planted, tmp_path) -> None:
    p = _copy(planted, tmp_path / "run")
    rp = RunPaths(p.run)
    feats, words = [], []
    for t in range(N_TOPICS):
        feats.append(p.topic[t])
        words.append([f"economy{t}", f"markets{t}", "news"])
        for s in range(N_SUBS):
            feats.append(p.sub[t][s])
            words.append([f"sub{t}-{s}", f"markets{t}", f"theme{t}"])
            for leaf in p.leaf[t][s]:
                feats.append(leaf)
                words.append([f"leaf{leaf}", f"theme{t}"])
    _write_keywords(rp, feats, words, [[1.0] * len(w) for w in words])
    rp.explanations.write_text(
        json.dumps({"feature": p.topic[0], "explanation": "Texts about trade.", "method": "llm"})
        + "\n"
    )
    record_hand_made_names(rp.root)  # the explanations describe this run's cache
    families(FamiliesConfig(run=str(p.run), splits=False, progress=False))
    fams = pd.read_parquet(rp.families_table).set_index("parent")
    # the parent's label, then the words most descendants share that it does not hold
    # the parent's label; the words many descendants share that it lacks; the direct
    # children's first keywords, strongest edge first
    members = pd.read_parquet(rp.family_members)
    kids = members[members["tree_parent"] == p.topic[1]]["feature"].tolist()
    first, second = (p.sub[1].index(k) for k in kids[:2])
    assert (
        fams.loc[p.topic[1], "name"] == f"economy1, markets1: theme1, sub1-{first}, sub1-{second}"
    )
    assert fams.loc[p.topic[1], "name_source"] == "keywords"
    assert fams.loc[p.topic[0], "name"] == "Texts about trade: theme0, markets0, sub0-" + str(
        p.sub[0].index(members[members["tree_parent"] == p.topic[0]]["feature"].iloc[0])
    )
    assert fams.loc[p.topic[0], "name_source"] == "explanations"
    assert fams.loc[p.sub[2][3], "name"].startswith("sub2-3, markets2: theme2, leaf")


def test_without_names_a_family_has_no_name_not_a_placeholder(found: Planted) -> None:
    fams = pd.read_parquet(RunPaths(found.run).families_table)
    assert fams["name"].isna().all() and (fams["name_source"] == "none").all()


# --- inspect and report ---------------------------------------------------------------


def test_inspect_shows_the_family_and_the_splits(found: Planted, capsys) -> None:
    from saescope.inspect import feature_view, format_feature

    leaf = found.leaf[3][1][2]
    v = feature_view(found.run, leaf, n_top=2)
    (sub_fam,) = [f for f in v.families if f.parent == found.sub[3][1]]
    assert sub_fam.depth == 1 and sub_fam.tree_parent == found.sub[3][1]
    (topic_fam,) = [f for f in v.families if f.parent == found.topic[3]]
    assert topic_fam.depth == 2 and topic_fam.size == 1 + N_SUBS * (1 + N_LEAVES)
    (split,) = v.splits
    assert split.relation == "split from" and split.feature == found.narrow_sub[3][1]
    text = format_feature(v, str(found.run), 100)
    assert f"family of feature {found.topic[3]}" in text and "split from" in text
    top = feature_view(found.run, found.topic[3])
    (own,) = top.families
    assert own.depth == 0 and sorted(own.children) == sorted(found.sub[3])


def test_report_draws_the_family_trees(found: Planted) -> None:
    from saescope.report import ReportConfig
    from saescope.report import run as report

    page = report(ReportConfig(run=str(found.run))).read_text()
    blob = page.split('type="application/json">', 1)[1].split("</script>", 1)[0]
    data = json.loads(blob)
    assert len(data["families"]) == N_TOPICS * (1 + N_SUBS)
    top = data["families"][0]
    assert top["tree"][0] in found.topic and len(top["tree"][1]) == N_SUBS
    cards = {f["id"]: f for f in data["features"]}
    leaf = found.leaf[0][0][0]
    assert {fam[0] for fam in cards[leaf]["families"]} == {
        k for k, fam in enumerate(data["families"]) if leaf in _flat(fam["tree"])
    }
    assert cards[leaf]["splits"][0][1] == "split from"


def test_family_tree_opens_and_its_nodes_open_cards_in_chromium(found: Planted, tmp_path) -> None:
    from test_report import chromium_page

    from saescope.report import ReportConfig
    from saescope.report import run as report

    site = tmp_path / "site"
    shutil.copytree(report(ReportConfig(run=str(found.run))).parent, site)
    problems: list[str] = []
    with chromium_page(problems) as page:
        page.goto((site / "index.html").as_uri())
        page.wait_for_selector("details.family")
        first = page.locator("details.family").first
        topic = int(first.locator("summary .fid").inner_text().lstrip("#"))
        t = found.topic.index(topic)
        assert first.locator("ul.tree").count() == 0  # drawn only when opened
        first.locator("summary").click()
        # the tree is drawn on the "toggle" event, which the browser fires as a task after
        # the click: wait for it (reading at once raced it and found no node, once in a
        # fresh clone)
        first.locator("ul.tree").first.wait_for()
        nodes = first.locator("a.flink")
        assert sorted(int(x.lstrip("#")) for x in nodes.all_inner_texts()) == sorted(
            found.subtree(t)
        )
        leaf = found.leaf[t][2][1]
        first.get_by_text(f"#{leaf}", exact=True).click()
        page.wait_for_function("document.getElementById('count').textContent.startsWith('1 of')")
        body = page.locator(f'.card[data-feature="{leaf}"] .card-body')
        assert body.is_visible()
        text = body.inner_text()
        assert f"depth 2 in the family of #{topic}" in text
        assert f"depth 1 in the family of #{found.sub[t][2]}" in text
        assert f"split from #{found.narrow_sub[t][2]} of sae-40" in text
    assert problems == []


def _flat(node: list) -> list[int]:
    return [node[0], *(f for c in node[1] for f in _flat(c))]


# --- re-runs and bad input ---------------------------------------------------------


def test_rerun_skips_and_other_options_need_overwrite(planted: Planted, tmp_path: Path) -> None:
    p = _copy(planted, tmp_path / "run")
    rp = RunPaths(p.run)
    cfg = FamiliesConfig(run=str(p.run), splits=False, progress=False)
    families(cfg)
    before = rp.families_table.stat().st_mtime_ns
    families(cfg)
    assert rp.families_table.stat().st_mtime_ns == before
    with pytest.raises(SaescopeError, match="option threshold: None -> 0.5"):
        families(FamiliesConfig(run=str(p.run), splits=False, threshold=0.5))
    assert rp.families_table.stat().st_mtime_ns == before
    families(FamiliesConfig(run=str(p.run), splits=False, threshold=1.0, overwrite=True))
    assert len(pd.read_parquet(rp.families_table)) == 0  # no pair co-occurs on every row
    # families of another latent cache (another SAE's codes) are not shown as this one's
    assert read_families(p.run) is not None
    sae = SAE.load(rp.sae)
    with torch.no_grad():
        sae.b_enc.fill_(-0.3)
    sae.save(rp.sae)
    latents(LatentsConfig(run=str(p.run), shard_rows=8192, overwrite=True))
    assert read_families(p.run) is None


def _error(*args: str) -> str:
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_bad_input_is_a_one_line_error(planted: Planted, tmp_path: Path) -> None:
    run = tmp_path / "nolatents"
    shutil.copytree(planted.run / "acts", run / "acts")
    assert "run `saescope latents" in _error("families", "--run", str(run))
    p = _copy(planted, tmp_path / "run")
    (p.run / "latents" / "cooccurrence.safetensors").unlink()
    assert "--cooccurrence true" in _error("families", "--run", str(p.run))
    assert "--threshold must be between 0 and 1" in _error(
        "families", "--run", str(planted.run), "--threshold", "2"
    )
    assert (
        "invalid float value"
        in run_cli("families", "--run", str(planted.run), "--threshold", "high", check=False).stderr
    )
    assert "does not exist" in _error(
        "families", "--run", str(planted.run), "--split-saes", str(tmp_path / "nope")
    )
    other = tmp_path / "other-sae"
    SAE(SAEConfig("relu", 12, 48)).save(other)
    q = _copy(planted, tmp_path / "run2")
    assert "d_in=12" in _error("families", "--run", str(q.run), "--split-saes", str(other))
    assert "the thesis method keeps features by their keyword score" in _error(
        "families", "--run", str(q.run), "--method", "thesis", "--splits", "false"
    )
    assert "feature 100000 is out of range" in _error("inspect", "100000", "--run", str(q.run))


# --- the pieces, and a real embedding run --------------------------------------------


def test_pair_lookups_and_chunks_agree_with_the_dense_table(found: Planted) -> None:
    from saescope.families.pairs import Pairs
    from saescope.features import Cooccurrence, read_cooccurrence

    co = read_cooccurrence(RunPaths(found.run).cooccurrence)
    dense = co.dense()
    g = np.random.default_rng(0)
    a, b = g.integers(0, len(dense), 5000), g.integers(0, len(dense), 5000)
    a, b = a[a != b], b[a != b]
    # the table as written (sorted), and the same pairs in another order
    perm = g.permutation(len(co.counts))
    shuffled = Cooccurrence(co.indices[:, perm], co.counts[perm], co.diagonal)
    for table in (co, shuffled):
        pairs = Pairs(table)
        np.testing.assert_array_equal(pairs.count(a, b), dense[a, b])
        n = co.diagonal
        np.testing.assert_allclose(pairs.m(a, b), dense[a, b] / np.minimum(n[a], n[b]))
        seen = sum(int(c.count.sum()) for c in pairs.chunks(size=1000))
        assert seen == int(np.triu(dense, 1).sum())


def test_families_of_real_embeddings_through_the_cli(news_run: Path, tmp_path: Path) -> None:
    from test_latents import CFG, new_run

    run = new_run(news_run, tmp_path / "run", "topk")
    latents(LatentsConfig(run=str(run), **CFG))
    out = run_cli("families", "--run", str(run)).stdout
    rp = RunPaths(run)
    fams = pd.read_parquet(rp.families_table)
    assert f"found {len(fams)} families" in out and len(fams) > 0
    members = pd.read_parquet(rp.family_members)
    feats = pd.read_parquet(rp.features).set_index("feature")
    for r in fams.itertuples():
        m = members[members["family"] == r.family].set_index("feature")
        assert list(m.index) == list(r.members) and m.index.is_unique
        assert (m["tree_parent"] == r.parent).sum() == r.n_children >= 3
        assert r.size - 1 >= 4 and m["depth"].max() == r.depth
        below = m[m["tree_parent"] >= 0]
        assert below["tree_parent"].isin(m.index).all()
        # every edge goes from the denser feature to the sparser one, above the threshold
        assert (
            feats.loc[below["tree_parent"], "count"].to_numpy()
            >= feats.loc[below.index, "count"].to_numpy()
        ).all()
        assert (below["weight"] >= 0.1).all()
        assert (feats.loc[list(r.members), "density"] <= 0.2).all()
    shown = json.loads(
        run_cli("inspect", str(int(fams["parent"][0])), "--run", str(run), "--json").stdout
    )
    assert shown["families"][0]["depth"] == 0 and shown["families"][0]["family"] == 0


def test_families_of_other_names_are_left_out_and_said_so(found: Planted, tmp_path) -> None:
    """Names made after the families (they named them, and with some methods chose who
    joins) make the families stale: inspect and the report leave them out and say so,
    until `families` runs again."""
    from saescope.inspect import feature_view, format_feature
    from saescope.report import ReportConfig
    from saescope.report import run as report

    run = tmp_path / "run"
    shutil.copytree(found.run, run, ignore=shutil.ignore_patterns("report"))
    rp = RunPaths(run)
    assert read_families(run) is not None
    _write_keywords(rp, [found.topic[0]], [["renamed", "topic"]], [[1.0, 0.5]])
    record_hand_made_names(run)
    assert read_families(run) is None
    v = feature_view(run, found.topic[0])
    assert v.families == [] and any("families/" in s for s in v.stale)
    assert "left out: families/" in format_feature(v, str(run), 120)
    report(ReportConfig(run=str(run)))
    assert "families/ (made from another latent cache or other names)" in (
        rp.report_index.read_text()
    )
    families(FamiliesConfig(run=str(run), splits=False, progress=False, overwrite=True))
    assert read_families(run) is not None and feature_view(run, found.topic[0]).stale == []
