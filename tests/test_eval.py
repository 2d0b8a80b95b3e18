"""`saescope eval`: metrics that can be checked by hand."""

import pytest
import torch

from saescope import evaluate
from saescope.io import read_json
from saescope.paths import RunPaths
from saescope.sae import SAE, SAEConfig
from saescope.store import StoreWriter, split_mask


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("evalrun") / "run"
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(900, 12, generator=g) + 1.0
    w = StoreWriter(RunPaths(run).acts, 12, shard_rows=300, meta={"source": "vectors"})
    w.append(rows)
    w.close()
    return run, rows


def _save(sae: SAE, folder):
    sae.save(folder, extra_config={"training": {"eval_fraction": 0.2}})


def test_lossless_sae_scores_perfectly(run_dir):
    run, rows = run_dir
    sae = SAE(SAEConfig("relu", 12, 24))
    eye = torch.eye(12)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    _save(sae, RunPaths(run).root / "perfect")
    out = evaluate.run(evaluate.EvalConfig(run=str(run), sae="perfect"))
    m = read_json(out)
    held_out = int(split_mask(torch.arange(900).numpy(), 0.2).sum())
    assert m["split"] == "eval" and m["n_rows"] == held_out
    assert m["nmse"] == pytest.approx(0.0, abs=1e-10) and m["fve"] == pytest.approx(1.0)
    assert m["cosine"] == pytest.approx(1.0) and m["recall_at_k"] == pytest.approx(1.0)
    assert m["l0"] == pytest.approx(12.0)  # one of +x_i / -x_i is positive
    assert m["dead_fraction"] == 0.0
    assert -1.0 < m["mean_log10_density"] < 0.0


def test_mean_only_sae_has_nmse_one_and_counts_dead_latents(run_dir):
    run, rows = run_dir
    held = rows[torch.from_numpy(split_mask(torch.arange(900).numpy(), 0.2))]
    sae = SAE(SAEConfig("topk", 12, 8, k=2))
    with torch.no_grad():
        sae.b_dec.copy_(held.mean(0))
        sae.b_enc.fill_(-1.0)  # nothing ever fires
    _save(sae, RunPaths(run).root / "mean")
    m = read_json(evaluate.run(evaluate.EvalConfig(run=str(run), sae="mean", retrieval="off")))
    assert m["nmse"] == pytest.approx(1.0, rel=1e-9)
    assert m["l0"] == 0 and m["dead_fraction"] == 1.0 and m["mean_log10_density"] is None
    assert "recall_at_k" not in m


def test_recall_at_k():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(1))
    assert evaluate.recall_at_k(x, x * 3.0, 10) == 1.0
    noise = torch.randn(200, 16, generator=torch.Generator().manual_seed(2))
    assert evaluate.recall_at_k(x, noise, 10) < 0.2
    assert 0.3 < evaluate.recall_at_k(x, x + 0.3 * noise, 10) < 1.0


def test_a_fraction_that_would_take_training_rows_is_refused(run_dir):
    """Held-out rows are the row ids whose hash falls under the fraction, so a fraction
    above the training one takes rows the SAE trained on: refused (it used to report
    them as held out). A smaller one is a subset of the held-out rows and is evaluated."""
    from saescope.errors import SaescopeError

    run, _ = run_dir
    assert split_mask(torch.arange(900).numpy(), 0.2)[
        split_mask(torch.arange(900).numpy(), 0.1)
    ].all()
    _save(SAE(SAEConfig("topk", 12, 8, k=2)), RunPaths(run).root / "fractions")
    for bad, message in ((0.5, "larger than the 0.2"), (2.0, r"must lie in \[0, 1\)")):
        with pytest.raises(SaescopeError, match=message):
            evaluate.run(evaluate.EvalConfig(run=str(run), sae="fractions", eval_fraction=bad))
    m = read_json(
        evaluate.run(evaluate.EvalConfig(run=str(run), sae="fractions", eval_fraction=0.1))
    )
    assert m["n_rows"] == int(split_mask(torch.arange(900).numpy(), 0.1).sum())
    # an SAE trained on another run's store trained on none of these rows: any fraction
    from saescope import provenance
    from saescope.paths import SAEPaths

    elsewhere = RunPaths(run).root / "elsewhere"
    _save(SAE(SAEConfig("topk", 12, 8, k=2)), elsewhere)
    record = provenance.Record.make(
        SAEPaths(elsewhere).train_record, "train", {}, {"acts": "another store's manifest"}
    )
    record.start()
    record.finish()
    m = read_json(
        evaluate.run(evaluate.EvalConfig(run=str(run), sae="elsewhere", eval_fraction=0.5))
    )
    assert m["n_rows"] == int(split_mask(torch.arange(900).numpy(), 0.5).sum())


def test_a_run_with_no_trained_sae_is_told_to_train_first(run_dir):
    from saescope.errors import SaescopeError
    from saescope.sae import SAE

    run, _ = run_dir
    hint = f"no SAE was trained there yet: run `saescope train --run {run}` first"
    with pytest.raises(SaescopeError, match=hint.replace("`", ".").replace("(", ".")):
        evaluate.run(evaluate.EvalConfig(run=str(run)))  # sae/ is missing
    with pytest.raises(SaescopeError, match="no SAE was trained there yet"):
        SAE.load(RunPaths(run).sae)


def test_a_split_of_few_rows_is_called_unsteady(run_dir, capsys):
    """One held-out row has no variance: its NMSE divides by ~0. The summary line says the
    figures are not steady below FEW_ROWS rows, and says nothing on a full split."""
    run, _ = run_dir
    sae = SAE(SAEConfig("topk", 12, 24, k=3))
    _save(sae, RunPaths(run).root / "few")
    for max_rows, warned in ((1, True), (evaluate.FEW_ROWS - 1, True), (0, False)):
        m = read_json(evaluate.run(evaluate.EvalConfig(run=str(run), sae="few", max_rows=max_rows)))
        line = capsys.readouterr().err
        assert f"on {m['n_rows']:,} eval rows" in line and (m["n_rows"] == max_rows or not max_rows)
        assert ("too few for steady figures" in line) is warned, line
        # one row has no variance to explain: no NMSE or FVE rather than err / 1e-30
        assert (m["nmse"] is None) is (max_rows == 1) and (m["fve"] is None) is (max_rows == 1)
        assert ("nmse n/a (the rows do not vary)" in line) is (max_rows == 1)
        assert m["cosine"] <= 1.0


def test_metrics_measured_on_another_runs_store_are_left_out_of_this_runs_pages(
    run_dir, tmp_path, capsys, monkeypatch
):
    """`eval --run B --sae A/sae` writes A's SAE folder's metrics.json; A's report showed
    B's figures as its SAE's held-out metrics."""
    import shutil

    from saescope.report.data import sae_metrics
    from saescope.train import TrainConfig
    from saescope.train.stage import run as train

    src, rows = run_dir
    run, other = tmp_path / "a", tmp_path / "b"
    shutil.copytree(RunPaths(src).acts, RunPaths(run).acts)
    w = StoreWriter(RunPaths(other).acts, 12, shard_rows=300, meta={"source": "vectors"})
    w.append(rows[:400] * 2)
    w.close()
    train(TrainConfig(run=str(run), d_sae=[24], k=[3], batch_size=100, progress=False))
    folder = RunPaths(run).sae
    mine, note = sae_metrics(run, folder)
    assert mine["n_rows"] > 0 and note is None
    assert "now holds metrics" not in capsys.readouterr().err
    evaluate.run(evaluate.EvalConfig(run=str(other), sae=str(folder)))
    assert f"now holds metrics on the store of {other}" in capsys.readouterr().err
    left, note = sae_metrics(run, folder)
    assert left == {} and note == f"sae/metrics.json (measured on the store of {other})"
    assert sae_metrics(other, folder)[1] is None
    # the store is known by what it holds: eval from another working directory, with the
    # run named relative to it, is eval on the SAE's own store
    monkeypatch.chdir(tmp_path)
    evaluate.run(evaluate.EvalConfig(run="a"))
    assert "now holds metrics" not in capsys.readouterr().err
    assert sae_metrics(run, folder)[0]["n_rows"] == mine["n_rows"]
