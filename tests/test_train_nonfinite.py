"""A NaN or inf in training stops the run at its step and never reaches a file."""

import json

import pytest
import torch
from test_train_stage import _copy_run, make_store, small

from saescope.errors import SaescopeError
from saescope.io import write_json
from saescope.paths import RunPaths, SAEPaths
from saescope.store import ActivationStore
from saescope.train import run
from saescope.train.loggers import JsonlLogger
from saescope.train.trainer import NonFiniteTraining, Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store_run(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("nanstore") / "run")


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


def _poison_batch(monkeypatch, at_batch: int, row: int = 3) -> None:
    """The training iterator's batch number `at_batch` (1-based) carries one NaN."""
    real = ActivationStore.iter_batches
    seen = {"n": 0}

    def iter_batches(self, batch_size, *args, **kw):
        for batch in real(self, batch_size, *args, **kw):
            if kw.get("drop_last"):  # the training loop's batches, not the init sample
                seen["n"] += 1
                if seen["n"] == at_batch:
                    batch = batch.clone()
                    batch[row, 5] = float("nan")
            yield batch

    monkeypatch.setattr(ActivationStore, "iter_batches", iter_batches)


def _finite_checkpoint(path) -> bool:
    state = torch.load(path, weights_only=True)
    tensors = [t for tr in state["trainees"] for t in tr["weights"].values()]
    tensors += [t for tr in state["trainees"] for t in tr["optimizer"]["m"] + tr["optimizer"]["v"]]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def test_nan_in_a_batch_stops_at_its_step_and_keeps_the_last_good_checkpoint(
    store_run, tmp_path, monkeypatch
):
    run_dir = _copy_run(store_run, tmp_path / "r")
    _poison_batch(monkeypatch, at_batch=8)
    with pytest.raises(SaescopeError, match=r"step 8: sae got a non-finite loss") as info:
        run(small(run_dir, checkpoint_every=5, keep_checkpoints=1))
    first = SAEPaths(RunPaths(run_dir).sae)
    ckpts = sorted(first.checkpoints.glob("step-*.pt"))
    assert [p.name for p in ckpts] == ["step-00000005.pt"]
    assert str(ckpts[0]) in str(info.value) and "is kept" in str(info.value)
    assert _finite_checkpoint(ckpts[0])
    assert not first.weights.exists() and not first.config.exists()
    assert not first.metrics.exists()
    lines = first.train_log.read_text().splitlines()
    assert [_strict(x)["step"] for x in lines] == [3, 6]  # nothing logged for the bad step


class _InfGrad(torch.autograd.Function):
    """The identity on the loss, whose backward sends an infinite gradient."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad * float("inf")


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_loss_or_gradient_names_the_step_and_the_variant(
    store_run, tmp_path, monkeypatch, kind
):
    """The second of two SAEs goes bad at step 3: an inf loss, or an inf gradient under a
    finite loss (the case a loss check alone would miss)."""
    run_dir = _copy_run(store_run, tmp_path / kind)
    real = Trainer._loss

    def loss(self, tr, x, ctx):
        out = real(self, tr, x, ctx)
        if self.step == 2 and tr.name == "sae-64-k8":
            bad = out.loss * float("inf") if kind == "loss" else _InfGrad.apply(out.loss)
            out = out._replace(loss=bad)
        return out

    monkeypatch.setattr(Trainer, "_loss", loss)
    with pytest.raises(SaescopeError) as info:
        run(small(run_dir, k=[4, 8], checkpoint_every=5))
    msg = str(info.value)
    assert f"step 3: sae-64-k8 got a non-finite {kind}" in msg
    assert "no checkpoint had been written yet" in msg
    rp = RunPaths(run_dir)
    assert not list(rp.checkpoints.glob("step-*.pt"))
    assert not rp.sae_weights.exists() and not (rp.sae_variant(64, 8) / "sae.safetensors").exists()


def test_weights_gone_bad_are_never_checkpointed(store_run):
    store = ActivationStore(RunPaths(store_run).acts)
    cfg = small(store_run)
    sample = next(iter(store.iter_batches(400, seed=0)))
    trainer = Trainer(cfg, store.d_in, sample, total_steps=10, names=["sae"])
    trainer.check_finite_weights()  # a fresh trainer is fine
    with torch.no_grad():
        trainer.trainees[0].sae.W_dec[2, 1] = float("nan")
    with pytest.raises(NonFiniteTraining, match="sae got a non-finite weight; nothing was saved"):
        trainer.check_finite_weights()


def test_json_outputs_stay_strict(tmp_path):
    """A non-finite value (an unset BatchTopK threshold is inf) is written as null."""
    log = JsonlLogger(tmp_path / "metrics.jsonl")
    log.log(1, {"loss": 0.5, "threshold": float("inf"), "aux": float("nan")})
    log.close()
    row = _strict((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 1, "loss": 0.5, "threshold": None, "aux": None}
    write_json(tmp_path / "m.json", {"recall_at_k": float("nan"), "l0": [1.0, float("-inf")]})
    assert _strict((tmp_path / "m.json").read_text()) == {"recall_at_k": None, "l0": [1.0, None]}


def test_eval_refuses_an_sae_with_nan_weights(store_run, tmp_path):
    from saescope import evaluate
    from saescope.sae import SAE, SAEConfig

    sae = SAE(SAEConfig("topk", 32, 16, k=2))
    with torch.no_grad():
        sae.W_dec[3, 0] = float("nan")
    sae.save(tmp_path / "bad", extra_config={"training": {"eval_fraction": 0.2}})
    with pytest.raises(SaescopeError, match="NaN or inf in W_dec"):
        evaluate.run(evaluate.EvalConfig(run=str(store_run), sae=str(tmp_path / "bad")))
    assert not (tmp_path / "bad" / "metrics.json").exists()
