"""`saescope steer`: steer an LM's generations with SAE features, and measure what it did.

In: an LM run (`acts/` names the model and hookpoint), its SAE (the latent cache's,
or `--sae`, any format `load_sae` reads, checked to sit at the store's hookpoint),
`latents/features.parquet` (each feature's largest activation, the unit of
`--unit typical`, and its logit-lens tokens), and prompts (neutral ones shipped
with saescope, or `--prompts FILE`). Out, under `steer/`:
  ranking.parquet      features ranked by output score (how steerable they are)
  generations.parquet  per steered feature (or group) and prompt: the unsteered and
                       steered continuation, the concept (feature activation read by
                       the unsteered model) and NLL of each
  sweep.parquet        with --sweep: per strength and half of the prompts, concept
                       gain and perplexity ratio; sweep.png plots them
  summary.json         per feature: strength used (or chosen), concept gain, perplexity
                       ratio, output score
  config.json, provenance.json
The CLI prints the first generations side by side. Measures: saescope/steer/measure.py;
the strength choice: saescope/steer/sweep.py; the hook: saescope/steer/hook.py.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from saescope import provenance
from saescope.config import config_to_dict
from saescope.device import pick_device
from saescope.edits import Edit, check_features, resolve, typical_activation
from saescope.errors import SaescopeError
from saescope.io import atomic_path, read_frame, write_json
from saescope.lm import hooks
from saescope.lm.model import LM, load_lm
from saescope.options.steer import SteerConfig
from saescope.paths import STAGE_CONFIG, RunPaths
from saescope.sae.fit import check_fits_store
from saescope.steer.generate import Generations, generate, prompt_ids
from saescope.steer.hook import Positions, Steerer
from saescope.steer.measure import TextMeasures, measure_texts, output_score
from saescope.steer.sweep import choose_strength
from saescope.store import ActivationStore

_IGNORED = ("run", "batch_size", "device", "overwrite")


def shipped_prompts() -> list[str]:
    text = resources.files("saescope.steer").joinpath("prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_prompts(path: str | None) -> list[str]:
    if path is None:
        return shipped_prompts()
    p = Path(path)
    if not p.is_file():
        raise SaescopeError(f"prompts file {p} does not exist")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise SaescopeError(f"prompts file {p} holds no prompt")
    return prompts


def _sae_folder(cfg: SteerConfig, rp: RunPaths) -> Path:
    if cfg.sae:
        return rp.sae_folder(cfg.sae)
    if rp.latents_manifest.exists():
        from saescope.latents import LatentCache

        return LatentCache(rp.root).sae_dir()
    return rp.sae


def _edits(cfg: SteerConfig, feats: list[int], strength: float) -> list[Edit]:
    if cfg.op == "ablate":
        return [Edit(f, "zero") for f in feats]
    return [Edit(f, cfg.op, strength, cfg.unit) for f in feats]


def _lens_ids(
    lm: LM, sae, table: pd.DataFrame | None, feats: list[int], n: int
) -> dict[int, list[int]]:
    """Each feature's top `n` promoted tokens: from features.parquet, else computed."""
    if table is not None and "promoted_ids" in table.columns:
        col = table.set_index("feature")["promoted_ids"]
        return {f: [int(i) for i in col.loc[f]][:n] for f in feats}
    from saescope.lm.logit_lens import logit_lens, unembedding

    lens = logit_lens(unembedding(lm.model, len(lm.tokenizer)), sae.W_dec[feats].detach(), n)
    return {f: lens.promoted_ids[i].tolist() for i, f in enumerate(feats)}


class _Steering:
    """What every step of the stage shares: model, hookpoint, SAE, prompts, units."""

    def __init__(self, cfg: SteerConfig, lm: LM, hp, sae, table: pd.DataFrame | None) -> None:
        self.cfg, self.lm, self.hp, self.sae, self.table = cfg, lm, hp, sae, table
        self.typical = typical_activation(table) if table is not None else None
        self.positions = Positions.parse(cfg.positions)
        self.prompts = read_prompts(cfg.prompts)
        self.ids = prompt_ids(lm, self.prompts, cfg.max_new_tokens)
        longest = max(len(p) for p in self.ids) + cfg.max_new_tokens
        if self.positions.kind == "from" and self.positions.start >= longest:
            raise SaescopeError(
                f"positions from:{self.positions.start} lie beyond every sequence (the longest "
                f"prompt plus {cfg.max_new_tokens} new tokens has {longest} tokens)"
            )

    def absolute(self, edits: list[Edit]) -> list[Edit]:
        return resolve(edits, self.typical, self.sae.cfg.d_sae)

    def generate(self, edits: list[Edit] | None) -> Generations:
        c = self.cfg
        steerer = None
        if edits:
            steerer = Steerer(
                self.lm.model, self.hp, self.sae, self.absolute(edits), self.positions
            )
        return generate(
            self.lm, self.ids, c.max_new_tokens, steerer, c.batch_size, c.sample,
            c.temperature, c.seed, c.use_cache,
        )  # fmt: skip

    def measure(self, gens: Generations, feats: list[int]) -> TextMeasures:
        return measure_texts(self.lm, self.hp, self.sae, gens, feats, self.cfg.batch_size)


def rank_features(st: _Steering, candidates: list[int]) -> pd.DataFrame:
    """Output score of each candidate, added at --strength (typical units) at every position."""
    lens = _lens_ids(st.lm, st.sae, st.table, candidates, st.cfg.lens_tokens)
    rows = []
    for f in tqdm(candidates, desc="steer: output score", unit="feature"):
        (edit,) = st.absolute([Edit(f, "add", st.cfg.strength, st.cfg.unit)])
        s = output_score(st.lm, st.hp, st.sae, st.ids, edit, lens[f], st.cfg.batch_size)
        tokens = st.lm.tokenizer.batch_decode([[i] for i in lens[f][:5]])
        rows.append({"feature": f, "output_score": s.score, "lens_prob": s.prob,
                     "lens_rank": s.rank, "lens_tokens": tokens})  # fmt: skip
    df = pd.DataFrame(rows)
    return df.sort_values("output_score", ascending=False, kind="stable").reset_index(drop=True)


def _candidates(st: _Steering, n: int) -> list[int]:
    if st.table is None:
        raise SaescopeError(
            "ranking features needs latents/features.parquet; run `saescope latents` or give --features"
        )
    alive = st.table[~st.table["dead"]].sort_values(["count", "feature"], ascending=[False, True])
    return [int(f) for f in alive["feature"].head(n)]


@provenance.locked("steer")
def run(cfg: SteerConfig, *, lm: LM | None = None) -> Path:
    """Steer, measure and (with --sweep) choose strengths; write `steer/`; return the folder."""
    rp = RunPaths(cfg.run)
    store = ActivationStore(rp.acts, verify=False)
    if store.rows_kind != "tokens":
        raise SaescopeError(
            f"{rp.acts} holds sentence embeddings; steering generation needs an LM run "
            "(`saescope acts`)"
        )
    if cfg.sweep and cfg.op == "ablate":
        raise SaescopeError("--sweep chooses a strength; ablation has none (use --op add or clamp)")
    if not cfg.strengths:
        raise SaescopeError("--strengths must name one strength or more")
    Positions.parse(cfg.positions)  # a bad spelling fails before any loading
    _edits(cfg, [0], cfg.strength)  # a strength that is not finite, too
    folder = _sae_folder(cfg, rp)
    from saescope.latents import cache_describes
    from saescope.sae import detect_format, load_sae

    where = detect_format(folder)
    sae = load_sae(where.path)  # any format, ready for inference
    check_features(_edits(cfg, list(cfg.features), cfg.strength), sae.cfg.d_sae)
    upstream = provenance.upstream_ids({"acts": rp.acts_manifest, "sae": where.weights})
    # features.parquet (typical activations, logit lens) describes the latent cache's SAE
    described = cache_describes(rp.root, upstream["sae"])
    if described and rp.features.exists():
        upstream |= provenance.upstream_ids({"features": rp.features})
    if cfg.prompts:
        upstream |= provenance.upstream_ids({"prompts": Path(cfg.prompts)})
    record = provenance.Record.make(rp.steer_record, "steer", cfg, upstream, _IGNORED)
    decision = record.decide(cfg.overwrite, rp.steer)
    if decision is provenance.Decision.SKIP:
        _print_side_by_side(rp)
        return rp.steer
    meta = store.meta
    device = pick_device(cfg.device)
    lm = lm if lm is not None else load_lm(str(meta["model"]), device, cfg.model_dtype)
    hp = hooks.resolve(lm.model, str(meta["hookpoint"]))
    probe = torch.tensor([[int(lm.tokenizer.eos_token_id or 0)]], device=lm.device)
    width = int(hooks.capture(lm.model, hp, probe).shape[-1])
    check_fits_store(sae, meta, width, str(folder), lm.model)
    sae = sae.to(lm.device)
    table = read_frame(rp.features) if described and rp.features.exists() else None
    st = _Steering(cfg, lm, hp, sae, table)
    if cfg.sweep and len(st.prompts) < 2:
        raise SaescopeError(
            "--sweep chooses the strength on half of the prompts and reports it on the other "
            f"half; give 2 prompts or more (the prompts file has {len(st.prompts)})"
        )
    if cfg.features:  # checked before the record says "running": a refused call leaves none
        resolve(_edits(cfg, sorted(set(cfg.features)), cfg.strength), st.typical, sae.cfg.d_sae)
    if decision is provenance.Decision.FRESH and rp.steer.exists():
        shutil.rmtree(rp.steer)
    rp.steer.mkdir(parents=True, exist_ok=True)
    record.start()
    ranking = None
    if not cfg.features and cfg.rank > 0:
        ranking = rank_features(st, _candidates(st, cfg.rank))
        with atomic_path(rp.steer_ranking) as tmp:
            ranking.to_parquet(tmp, index=False)
    if cfg.features:
        groups = [sorted(set(int(f) for f in cfg.features))]
    elif ranking is not None:
        groups = [[int(f)] for f in ranking["feature"].head(max(cfg.pick, 1))]
    else:
        raise SaescopeError("give --features, or --rank N > 0 to pick the most steerable ones")
    resolve(_edits(cfg, [f for g in groups for f in g], cfg.strength), st.typical, sae.cfg.d_sae)
    unsteered = st.generate(None)
    out_rows: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"groups": []}
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for group in groups:
        label = "+".join(map(str, group))
        base = st.measure(unsteered, group)
        strength = cfg.strength
        entry: dict[str, Any] = {"features": group, "op": cfg.op, "unit": cfg.unit,
                                 "positions": cfg.positions}  # fmt: skip
        if cfg.sweep:
            by_strength = {}
            gens_at = {}
            for s in tqdm(cfg.strengths, desc=f"steer: sweep {label}", unit="strength"):
                gens_at[s] = st.generate(_edits(cfg, group, s))
                by_strength[s] = st.measure(gens_at[s], group)
            result = choose_strength(base, by_strength, cfg.max_ppl_ratio)
            sweep_rows += [{"features": label, **asdict(r)} for r in result.rows]
            curves[label] = [(r.strength, r.ppl_ratio, r.concept_gain)
                             for r in result.rows if r.half == "choose"]  # fmt: skip
            entry["chosen_strength"] = result.chosen
            entry["max_ppl_ratio"] = cfg.max_ppl_ratio
            entry["report_half"] = asdict(result.report) if result.report else None
            strength = result.chosen if result.chosen is not None else min(cfg.strengths)
            steered, measured = gens_at[strength], by_strength[strength]
        else:
            steered = st.generate(_edits(cfg, group, strength))
            measured = st.measure(steered, group)
        entry |= {
            "strength": strength if cfg.op != "ablate" else None,
            "concept_unsteered": float(base.concept.mean()),
            "concept_steered": float(measured.concept.mean()),
            "concept_gain": float(measured.concept.mean() - base.concept.mean()),
            "perplexity_unsteered": base.perplexity,
            "perplexity_steered": measured.perplexity,
            "ppl_ratio": measured.perplexity / base.perplexity,
        }
        if ranking is not None and len(group) == 1 and group[0] in set(ranking["feature"]):
            ranked = ranking.set_index("feature").loc[group[0]]
            entry["output_score"] = float(ranked["output_score"])
            entry["lens_tokens"] = [str(t) for t in ranked["lens_tokens"]]
        summary["groups"].append(entry)
        for i, p in enumerate(st.prompts):
            out_rows.append({
                "features": label, "strength": entry["strength"], "prompt": p,
                "unsteered": unsteered.texts[i], "steered": steered.texts[i],
                "concept_unsteered": float(base.concept[i]), "concept_steered": float(measured.concept[i]),
                "nll_unsteered": float(base.nll_sum[i] / max(base.n_tokens[i], 1)),
                "nll_steered": float(measured.nll_sum[i] / max(measured.n_tokens[i], 1)),
            })  # fmt: skip
    with atomic_path(rp.steer_generations) as tmp:
        pd.DataFrame(out_rows).to_parquet(tmp, index=False)
    if cfg.sweep:
        with atomic_path(rp.steer_sweep) as tmp:
            pd.DataFrame(sweep_rows).to_parquet(tmp, index=False)
        from saescope import plots

        plots.steering_sweep(curves, cfg.max_ppl_ratio, rp.steer_plot)
    summary["n_prompts"] = len(st.prompts)
    summary["max_new_tokens"] = cfg.max_new_tokens
    write_json(rp.steer_summary, summary)
    write_json(rp.steer / STAGE_CONFIG, config_to_dict(cfg) | {"sae_dir": str(folder)})
    record.finish({"groups": len(groups)})
    _print_side_by_side(rp)
    return rp.steer


def _print_side_by_side(rp: RunPaths, n: int = 3, width: int = 48) -> None:
    """The first generations, unsteered | steered, and each group's figures, on stderr."""
    if not rp.steer_generations.exists() or not rp.steer_summary.exists():
        return
    from saescope.io import read_json

    df = read_frame(rp.steer_generations)
    summary = read_json(rp.steer_summary)
    for g in summary["groups"]:
        label = "+".join(map(str, g["features"]))
        chosen = ""
        if "chosen_strength" in g and g["chosen_strength"] is None:
            chosen = (
                " (the sweep found no strength that kept the perplexity within "
                f"x{g.get('max_ppl_ratio', '?')}: the smallest tried is shown)"
            )
        elif "chosen_strength" in g:
            chosen = " (chosen by the sweep)"
        edit = "ablate" if g["op"] == "ablate" else f"{g['op']} {g['strength']:g} ({g['unit']})"
        print(
            f"steer: feature {label}, {edit}{chosen}: concept "
            f"{g['concept_unsteered']:.3g} -> {g['concept_steered']:.3g}, perplexity x"
            f"{g['ppl_ratio']:.2f}"
            + (f", output score {g['output_score']:.3f}" if "output_score" in g else "")
            + (f", logit lens {g['lens_tokens']}" if "lens_tokens" in g else ""),
            file=sys.stderr,
        )
        sub = df[df["features"] == label].head(n)
        for _, r in sub.iterrows():
            left = textwrap.wrap(r["prompt"] + " |" + r["unsteered"], width) or [""]
            right = textwrap.wrap(r["prompt"] + " |" + r["steered"], width) or [""]
            print(f"  {'unsteered':<{width}}   steered", file=sys.stderr)
            for i in range(max(len(left), len(right))):
                a = left[i] if i < len(left) else ""
                b = right[i] if i < len(right) else ""
                print(f"  {a:<{width}}   {b}", file=sys.stderr)
            print(file=sys.stderr)
