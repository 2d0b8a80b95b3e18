"""`saescope eval`: held-out quality of a trained SAE.

In: `<run>/acts` and an SAE folder (`<run>/sae` by default; any saescope SAE
folder works). The held-out split is the training config's `eval_fraction` of row
ids (`store.split_mask`); when nothing was held out, every row is used and the
result says so.
Out: `<sae folder>/metrics.json` with
    nmse                 sum |x - x_hat|^2 / sum |x - mean(x)|^2
    fve                  1 - nmse (fraction of variance explained)
    l0                   mean active latents per row
    dead_fraction        latents that never fire on the split
    mean_log10_density   mean over alive latents of log10(rows fired / rows)
    mean_active_value    mean value of a non-zero code
    cosine               mean cosine(x, x_hat)
    recall_at_k          (sentence embeddings) share of each row's k nearest neighbours
                         (cosine, within the first `retrieval_rows` held-out rows) that are
                         still its neighbours when every row is replaced by its reconstruction
and its provenance record `metrics.provenance.json`. A re-run with the same options,
the same SAE weights and the same store skips the work; a change of any of them
redoes it (metrics are derived data: no --overwrite needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saescope import provenance
from saescope.config import config_to_dict
from saescope.device import pick_device
from saescope.errors import SaescopeError
from saescope.io import read_json, write_json
from saescope.options.evaluate import EvalConfig
from saescope.paths import RunPaths, SAEPaths
from saescope.sae import SAE
from saescope.store import ActivationStore

EMBEDDING_SOURCES = ("sentence-transformers", "vectors")


def sae_dir(cfg: EvalConfig) -> Path:
    inside = RunPaths(cfg.run).root / cfg.sae
    return inside if inside.exists() or not Path(cfg.sae).exists() else Path(cfg.sae)


@dataclass
class _Sums:
    n: int = 0
    x_sum: torch.Tensor | None = None  # (d_in,) float64
    x_sq: float = 0.0
    err_sq: float = 0.0
    cos_sum: float = 0.0
    active: int = 0
    value_sum: float = 0.0
    fires: torch.Tensor | None = None  # (d_sae,) int64


def _accumulate(s: _Sums, x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor) -> None:
    xd = x.double()
    s.n += x.shape[0]
    s.x_sum = xd.sum(0) if s.x_sum is None else s.x_sum + xd.sum(0)
    s.x_sq += float(xd.pow(2).sum())
    s.err_sq += float((x_hat.double() - xd).pow(2).sum())
    s.cos_sum += float(torch.nn.functional.cosine_similarity(x_hat.double(), xd, dim=1).sum())
    on = codes != 0
    s.active += int(on.sum())
    s.value_sum += float(codes.double().sum())
    fires = on.sum(0).to(torch.int64)
    s.fires = fires if s.fires is None else s.fires + fires


def recall_at_k(x: torch.Tensor, x_hat: torch.Tensor, k: int, chunk: int = 1024) -> float:
    """Mean share of each row's k cosine neighbours (among x) kept among x_hat's neighbours."""
    m = x.shape[0]
    k = min(k, m - 1)
    if k < 1:
        return math.nan
    a = torch.nn.functional.normalize(x.float(), dim=1)
    b = torch.nn.functional.normalize(x_hat.float(), dim=1)
    hits = 0
    for start in range(0, m, chunk):
        rows = torch.arange(start, min(m, start + chunk))
        sa = a[rows] @ a.t()  # (chunk, m)
        sb = b[rows] @ b.t()
        sa[torch.arange(len(rows)), rows] = -math.inf
        sb[torch.arange(len(rows)), rows] = -math.inf
        na = torch.topk(sa, k, dim=1).indices
        nb = torch.topk(sb, k, dim=1).indices
        hits += int((na[:, :, None] == nb[:, None, :]).any(2).sum())
    return hits / (m * k)


def evaluate_sae(
    sae: SAE, store: ActivationStore, split: str, eval_fraction: float, cfg: EvalConfig
) -> dict[str, Any]:
    """Stream the split through `sae` and return the metrics (see module docstring)."""
    sums = _Sums()
    keep_x: list[torch.Tensor] = []
    keep_hat: list[torch.Tensor] = []
    kept = 0
    batches = store.iter_batches(
        cfg.batch_size, shuffle=False, split=split, eval_fraction=eval_fraction
    )
    with torch.no_grad():
        for x in tqdm(batches, desc="eval", unit="batch", leave=False):
            if cfg.max_rows and sums.n >= cfg.max_rows:
                break
            if cfg.max_rows:
                x = x[: cfg.max_rows - sums.n]
            x = x.to(sae.W_enc.device)
            out = sae(x)
            _accumulate(sums, x, out.x_hat, out.codes)
            if kept < cfg.retrieval_rows:
                take = min(cfg.retrieval_rows - kept, x.shape[0])
                keep_x.append(x[:take].cpu())
                keep_hat.append(out.x_hat[:take].cpu())
                kept += take
    if sums.n == 0 or sums.x_sum is None or sums.fires is None:
        raise SaescopeError(f"no rows to evaluate in the {split} split of {store.dir}")
    total_var = sums.x_sq - float(sums.x_sum.pow(2).sum()) / sums.n
    nmse = sums.err_sq / max(total_var, 1e-30)
    if not math.isfinite(nmse):
        raise SaescopeError(
            f"the {split} split of {store.dir} gives a non-finite reconstruction error: "
            "the store holds NaN or inf values (rebuild it) or the SAE overflows on them"
        )
    density = sums.fires.double() / sums.n
    alive = density > 0
    metrics: dict[str, Any] = {
        "n_rows": sums.n,
        "nmse": nmse,
        "fve": 1.0 - nmse,
        "mse_per_row": sums.err_sq / sums.n,
        "l0": sums.active / sums.n,
        "dead_fraction": float((~alive).double().mean()),
        "mean_log10_density": float(density[alive].log10().mean()) if alive.any() else None,
        "mean_active_value": sums.value_sum / sums.active if sums.active else 0.0,
        "cosine": sums.cos_sum / sums.n,
    }
    want = cfg.retrieval == "on" or (
        cfg.retrieval == "auto" and store.meta.get("source") in EMBEDDING_SOURCES
    )
    if want and keep_x:
        metrics["recall_at_k"] = recall_at_k(
            torch.cat(keep_x), torch.cat(keep_hat), cfg.retrieval_k
        )
        metrics["retrieval_k"] = cfg.retrieval_k
        metrics["retrieval_rows"] = kept
    return metrics


# options that change no output
_IGNORED = ("run", "batch_size", "device")


@provenance.locked("eval")
def run(cfg: EvalConfig) -> Path:
    """Write `<sae folder>/metrics.json`; returns its path."""
    folder = SAEPaths(sae_dir(cfg))
    store = ActivationStore(RunPaths(cfg.run).acts)
    sae = SAE.load(folder.dir).to(pick_device(cfg.device))
    bad = [n for n, t in sae.state_tensors().items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise SaescopeError(
            f"the SAE in {folder.dir} has NaN or inf in {', '.join(bad)}; retrain or reconvert it"
        )
    if sae.cfg.d_in != store.d_in:
        raise SaescopeError(
            f"the SAE in {folder.dir} takes d_in={sae.cfg.d_in}, the store {store.dir} has {store.d_in}"
        )
    fraction = cfg.eval_fraction
    if fraction < 0:
        fraction = float(read_json(folder.config).get("training", {}).get("eval_fraction", 0.0))
    split = "eval" if fraction > 0 else "all"
    rp = RunPaths(cfg.run)
    upstream = provenance.upstream_ids({"acts": rp.acts_manifest, "sae": folder.weights})
    config = config_to_dict(cfg) | {"eval_fraction": fraction}  # the fraction actually used
    record = provenance.Record.make(folder.eval_record, "eval", config, upstream, _IGNORED)
    # metrics of an SAE are redone whenever the SAE or the store changed: overwrite
    if record.decide(True, folder.metrics) is provenance.Decision.SKIP:
        return folder.metrics
    record.start()
    metrics = evaluate_sae(sae, store, split, fraction, cfg)
    write_json(
        folder.metrics,
        {
            "split": split,
            "eval_fraction": fraction,
            **metrics,
            "sae_sha256": upstream["sae"],
            "config": config_to_dict(cfg),
        },
    )
    record.finish()
    return folder.metrics
