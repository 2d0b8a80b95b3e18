"""Steering generation on a tiny random Llama: the KV cache, no-op edits, ablation, the stage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

from saescope.edits import Edit
from saescope.errors import SaescopeError
from saescope.lm import hooks
from saescope.lm.model import load_lm
from saescope.paths import RunPaths
from saescope.sae import SAE
from saescope.steer.generate import generate, prompt_ids
from saescope.steer.hook import Positions, Steerer

PROMPTS = ["The weather today", "Once upon a time there was a small", "I", "Markets fell as"]


@pytest.fixture(scope="module")
def steer_run(tiny_lm_run, tmp_path_factory):
    """The tiny LM run with a trained SAE and its latent cache."""
    from saescope.latents import LatentsConfig
    from saescope.latents import run as latents
    from saescope.train import TrainConfig
    from saescope.train import run as train

    run = tmp_path_factory.mktemp("steer") / "run"
    shutil.copytree(tiny_lm_run, run)
    train(TrainConfig(run=str(run), d_sae=[128], k=[8], batch_size=256, epochs=2.0, lr=3e-3,
                      progress=False, eval_at_end=False, checkpoint_every=0))  # fmt: skip
    latents(LatentsConfig(run=str(run), plots=False))
    return run


@pytest.fixture(scope="module")
def parts(steer_run):
    from saescope.io import read_json

    meta = read_json(RunPaths(steer_run).acts_manifest)["meta"]
    lm = load_lm(meta["model"])
    hp = hooks.resolve(lm.model, meta["hookpoint"])
    sae = SAE.load(RunPaths(steer_run).sae).eval().requires_grad_(False)
    return lm, hp, sae


def _gen(lm, steerer, use_cache=True, batch=4):
    return generate(lm, prompt_ids(lm, PROMPTS, 10), 10, steerer, batch, use_cache=use_cache)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "from:3"])
def test_the_kv_cache_changes_nothing_steered_or_not(parts, positions, one_torch_thread):
    lm, hp, sae = parts
    st = Steerer(lm.model, hp, sae, [Edit(5, "add", 40.0, "absolute")], Positions.parse(positions))
    cached, recomputed, alone = _gen(lm, st), _gen(lm, st, use_cache=False), _gen(lm, st, batch=1)
    plain = _gen(lm, None)
    for a, b, c in zip(cached.ids, recomputed.ids, alone.ids, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)  # left padding changes nothing either
    assert [x.tolist() for x in cached.ids] != [x.tolist() for x in plain.ids]  # it did steer
    nocache_plain = _gen(lm, None, use_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(plain.ids, nocache_plain.ids, strict=True))


def test_generated_positions_steer_every_new_token_with_the_cache(parts, one_torch_thread):
    """The bug of the SAELens tutorial: a hook skipped at sequence length 1 never steers
    the tokens generated with a KV cache. Here the generated positions alone do steer."""
    lm, hp, sae = parts
    st = Steerer(lm.model, hp, sae, [Edit(5, "add", 40.0, "absolute")], Positions("generated"))
    seen = []
    orig = st._edit

    def spy(h):
        out = orig(h)
        seen.append((h.shape[1], bool((out != h).any())))
        return out

    st._edit = spy  # type: ignore[method-assign]
    _gen(lm, st)
    assert seen[0] == (max(len(p) for p in prompt_ids(lm, PROMPTS, 10)), False)  # prompt untouched
    assert all(changed for n, changed in seen[1:]) and all(n == 1 for n, _ in seen[1:])


def test_zero_strength_and_clamping_to_its_own_value_change_nothing(parts, one_torch_thread):
    lm, hp, sae = parts
    plain = _gen(lm, None)
    zero = _gen(lm, Steerer(lm.model, hp, sae, [Edit(5, "add", 0.0, "absolute")]))
    assert all(torch.equal(a, b) for a, b in zip(plain.ids, zero.ids, strict=True))
    ids = torch.tensor([prompt_ids(lm, PROMPTS[:1], 1)[0]])
    x = hooks.capture(lm.model, hp, ids)[0]
    f = int(sae.encode(x).sum(0).argmax())
    own = float(sae.encode(x)[-1, f])
    # clamp f to the value it has at the last position; only that position is steered
    st = Steerer(
        lm.model,
        hp,
        sae,
        [Edit(f, "clamp", own, "absolute")],
        Positions.parse(f"from:{ids.shape[1] - 1}"),
    )
    with torch.inference_mode():
        clean = lm.model(input_ids=ids).logits
        with st:
            clamped = lm.model(input_ids=ids).logits
    assert torch.allclose(clean, clamped, atol=1e-4)


def test_ablation_removes_the_feature_from_the_reconstruction(parts):
    lm, hp, sae = parts
    ids = torch.tensor(prompt_ids(lm, PROMPTS[1:2], 1))
    x = hooks.capture(lm.model, hp, ids)[0]
    z = sae.encode(x)
    f = int((z > 0).sum(0).argmax())
    assert (z[:, f] > 0).any()
    # the next block's input is what the steered hookpoint (block 1's output) passed on
    with Steerer(lm.model, hp, sae, [Edit(f, "zero")]):
        got = hooks.capture(lm.model, hooks.resolve(lm.model, "resid_pre.2"), ids)[0]
    # x minus the feature's part of the reconstruction (scaled back by the row's std when
    # the SAE standardises rows, as it does by default on token stores)
    _, _, std = sae._standardize(x)
    part = z[:, f : f + 1] * sae.W_dec[f]
    want = x - (part if std is None else part * std)
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, x)


def test_steer_stage_ranks_sweeps_and_writes_its_tables(steer_run):
    proc = run_cli(
        "steer", "--run", str(steer_run), "--rank", "12", "--pick", "1", "--sweep",
        "--strengths", "1", "4", "16", "--max-new-tokens", "8", "--max-ppl-ratio", "100",
    )  # fmt: skip
    rp = RunPaths(steer_run)
    ranking = pd.read_parquet(rp.steer_ranking)
    assert len(ranking) == 12 and ranking["output_score"].is_monotonic_decreasing
    summary = json.loads(rp.steer_summary.read_text())
    (g,) = summary["groups"]
    assert g["features"] == [int(ranking["feature"][0])]
    assert g["chosen_strength"] in (1.0, 4.0, 16.0) and g["strength"] == g["chosen_strength"]
    sweep = pd.read_parquet(rp.steer_sweep)
    assert set(sweep["half"]) == {"choose", "report"} and len(sweep) == 6
    # the chosen strength has the largest concept gain on the choosing half (bound is loose)
    choose = sweep[sweep["half"] == "choose"]
    assert choose.loc[choose["concept_gain"].idxmax(), "strength"] == g["chosen_strength"]
    gens = pd.read_parquet(rp.steer_generations)
    assert len(gens) == summary["n_prompts"] == 20
    assert (gens["steered"] != gens["unsteered"]).any()
    assert rp.steer_plot.exists() and "unsteered" in proc.stderr and "steered" in proc.stderr
    # the same options again: nothing redone
    before = rp.steer_generations.stat().st_mtime_ns
    run_cli("steer", "--run", str(steer_run), "--rank", "12", "--pick", "1", "--sweep",
            "--strengths", "1", "4", "16", "--max-new-tokens", "8", "--max-ppl-ratio", "100")  # fmt: skip
    assert rp.steer_generations.stat().st_mtime_ns == before


def test_steering_a_feature_raises_its_activation_in_the_text(steer_run, parts):
    from saescope.steer.measure import measure_texts

    lm, hp, sae = parts
    ids = prompt_ids(lm, PROMPTS, 12)
    f = 7
    plain = generate(lm, ids, 12)
    steered = generate(lm, ids, 12, Steerer(lm.model, hp, sae, [Edit(f, "add", 60.0, "absolute")]))
    a = measure_texts(lm, hp, sae, plain, [f])
    b = measure_texts(lm, hp, sae, steered, [f])
    assert b.concept.mean() > a.concept.mean()
    assert np.isfinite(a.perplexity) and np.isfinite(b.perplexity)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--features", "100000"], "out of range"),
        (["--features", "1", "--strength", "nan"], "not finite"),
        (["--features", "1", "--positions", "from:9999"], "beyond every sequence"),
        (["--features", "1", "--positions", "middle"], "unknown positions"),
        (["--features", "1", "--max-new-tokens", "250"], "exceeds the model's 256 positions"),
        (["--features", "1", "--op", "ablate", "--sweep"], "ablation has none"),
        (["--rank", "5", "--lens-tokens", "0"], "lens_tokens must be >= 1"),
        (["--features", "1", "--sample", "--temperature", "0"], "temperature must be > 0"),
    ],
)
def test_bad_steering_input_is_a_one_line_error(steer_run, flags, message):
    # --overwrite: past the record of the earlier test's steer/, to the checks of the input
    proc = run_cli("steer", "--run", str(steer_run), "--overwrite", *flags, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("saescope steer: error:")


def test_an_sae_from_another_hookpoint_is_refused(steer_run, tmp_path):
    sae = SAE.load(RunPaths(steer_run).sae)
    meta = dict(sae.cfg.metadata)
    meta["store_meta"] = dict(meta["store_meta"], hookpoint="resid_post.0")
    import dataclasses

    other = SAE.from_tensors(dataclasses.replace(sae.cfg, metadata=meta), sae.state_tensors())
    other.save(tmp_path / "other")
    proc = run_cli("steer", "--run", str(steer_run), "--sae", str(tmp_path / "other"),
                   "--features", "1", "--overwrite", check=False)  # fmt: skip
    assert proc.returncode == 2 and "hookpoint" in proc.stderr
    meta["store_meta"] = dict(sae.cfg.metadata["store_meta"], model="another/llama-b")
    other = SAE.from_tensors(dataclasses.replace(sae.cfg, metadata=meta), sae.state_tensors())
    other.save(tmp_path / "other-model")
    proc = run_cli("steer", "--run", str(steer_run), "--sae", str(tmp_path / "other-model"),
                   "--features", "1", "--overwrite", check=False)  # fmt: skip
    assert proc.returncode == 2 and "trained on another/llama-b" in proc.stderr


def test_embedding_runs_are_refused(news_run):
    with pytest.raises(SaescopeError, match="needs an LM run"):
        from saescope.steer.stage import SteerConfig
        from saescope.steer.stage import run as steer

        steer(SteerConfig(run=str(news_run), features=[1]))


@pytest.mark.slow
def test_packaged_smollm2_steering_raises_the_concept_and_ablation_lowers_it(tmp_path):
    """On SmolLM2: a feature ranked steerable by its output score raises the probability of
    its logit-lens tokens and its own activation in the generated text when added, and
    ablating a feature that fires on the prompts lowers the probability of its tokens."""
    from saescope import CorpusConfig, make_corpus
    from saescope.latents import LatentsConfig
    from saescope.latents import run as latents
    from saescope.lm.acts import run as acts
    from saescope.options.acts import ActsConfig
    from saescope.steer.measure import output_score
    from saescope.steer.stage import SteerConfig
    from saescope.steer.stage import run as steer
    from saescope.train import TrainConfig
    from saescope.train import run as train

    lm = load_lm()
    run = tmp_path / "run"
    make_corpus(CorpusConfig(run=str(run), source="news", shuffle=True, limit=500))
    acts(ActsConfig(run=str(run), ctx_len=128), lm=lm)
    train(TrainConfig(run=str(run), d_sae=[2304], k=[32], batch_size=1024, epochs=4.0, lr=1e-3,
                      progress=False, checkpoint_every=0, eval_at_end=False))  # fmt: skip
    latents(LatentsConfig(run=str(run), plots=False))
    steer(SteerConfig(run=str(run), rank=40, pick=1, strength=4.0), lm=lm)
    rp = RunPaths(run)
    ranking = pd.read_parquet(rp.steer_ranking)
    best = ranking.iloc[0]
    assert best["output_score"] > 0.05 and best["lens_rank"] < 50
    summary = json.loads(rp.steer_summary.read_text())
    assert summary["groups"][0]["concept_gain"] > 0
    # ablation: the feature most active at the prompts' last positions, where the output
    # score reads the next token, loses its promoted tokens' probability there. (Whether
    # an ablation changes greedy text is left alone: ablating one of the five features most
    # active on a generation changed at most 2 of the 4 generations and often none,
    # standardised rows or not. The test used to pick by a sum over the BOS row too, and
    # with unstandardised rows got a feature active only there, whose ablation did.)
    hp = hooks.resolve(lm.model, "resid_post.15")
    sae = SAE.load(rp.sae).eval().requires_grad_(False)
    ids = prompt_ids(lm, PROMPTS, 16)
    last = torch.stack([hooks.capture(lm.model, hp, torch.tensor([p]))[0][-1] for p in ids])
    f = int(sae.encode(last).sum(0).argmax())
    lens = [
        int(i)
        for i in pd.read_parquet(rp.features).set_index("feature").loc[f, "promoted_ids"][:10]
    ]
    assert output_score(lm, hp, sae, ids, Edit(f, "zero"), lens).score < 0


def test_a_refused_feature_leaves_no_record_that_blocks_the_next_call(steer_run, tmp_path):
    """A feature with no typical activation is refused before steer/ is marked as being
    made, so the corrected call runs without --overwrite (it used to find a 'running'
    record of the refused options and refuse in turn)."""
    run = tmp_path / "run"
    shutil.copytree(steer_run, run)
    rp = RunPaths(run)
    shutil.rmtree(rp.steer, ignore_errors=True)
    table = pd.read_parquet(rp.features)
    table.loc[3, "max_act"] = 0.0  # feature 3 never fires, as far as the table knows
    table.to_parquet(rp.features, index=False)
    proc = run_cli("steer", "--run", str(run), "--features", "3", check=False)
    assert proc.returncode == 2 and "has no typical activation" in proc.stderr, proc.stderr
    assert not rp.steer_record.exists()
    alive = int(table.loc[table["max_act"] > 0, "feature"].iloc[0])
    run_cli("steer", "--run", str(run), "--features", str(alive), "--max-new-tokens", "4")
    assert json.loads(rp.steer_summary.read_text())["groups"][0]["features"] == [alive]


def test_another_sae_is_steered_with_its_own_inputs_and_units(steer_run, tmp_path):
    """`--sae` with a SAELens folder: the record hashes its weights, so a re-export with
    other weights is a change, not 'up to date'; typical units, which the run's
    features.parquet gives for the cache's SAE only, are refused for it."""
    from saescope.sae import export_saelens

    run = tmp_path / "run"
    shutil.copytree(steer_run, run)
    shutil.rmtree(RunPaths(run).steer, ignore_errors=True)
    sae = SAE.load(RunPaths(run).sae)
    lens = tmp_path / "lens"
    export_saelens(sae, lens)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The weather today\n")
    args = ("steer", "--run", str(run), "--sae", str(lens), "--features", "1",
            "--prompts", str(prompts), "--max-new-tokens", "2", "--overwrite")  # fmt: skip
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2 and "latent cache made with this SAE" in proc.stderr
    absolute = (*args[:-1], "--unit", "absolute", "--strength", "5")
    run_cli(*absolute)
    with torch.no_grad():
        sae.W_dec.mul_(2.0)
    export_saelens(sae, lens)
    proc = run_cli(*absolute, check=False)
    assert proc.returncode == 2 and "other inputs" in proc.stderr, proc.stderr


def test_a_sweep_needs_two_prompts_and_says_when_no_strength_passed(steer_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(steer_run, run)
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("The weather today\n")
    two.write_text("The weather today\nMarkets fell as\n")
    args = ("steer", "--run", str(run), "--features", "1", "--sweep", "--strengths", "1",
            "--max-new-tokens", "2", "--overwrite")  # fmt: skip
    proc = run_cli(*args, "--prompts", str(one), check=False)
    assert proc.returncode == 2 and "give 2 prompts or more" in proc.stderr, proc.stderr
    proc = run_cli(*args, "--prompts", str(two), "--max-ppl-ratio", "0.001")
    assert "found no strength that kept the perplexity within x0.001" in proc.stderr
    summary = json.loads(RunPaths(run).steer_summary.read_text())["groups"][0]
    assert summary["chosen_strength"] is None and summary["strength"] == 1.0
    proc = run_cli("steer", "--run", str(run), "--features", "1", "--op", "ablate",
                   "--prompts", str(two), "--max-new-tokens", "2", "--overwrite")  # fmt: skip
    assert "feature 1, ablate: concept" in proc.stderr, proc.stderr
