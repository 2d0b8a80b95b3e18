"""`saescope eval`: held-out quality of a trained SAE.

In: `<run>/acts` and an SAE folder (`<run>/sae` by default; any saescope SAE
folder, or a SAELens, sparsify or BatchTopK-repo folder, which `load_sae` reads).
The held-out split is the training config's `eval_fraction` of row ids
(`store.split_mask`; token stores hash the row's context); when nothing was held
out, every row is used and the result says so. A foreign SAE never saw the store:
with no `--eval-fraction`, all of it is used.
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
    lm                   (LM runs, `--lm-contexts` > 0) the model's next-token loss with the
                         SAE spliced in at its hookpoint, over up to `lm_contexts` contexts of
                         `lm_split` (held-out by default): ce_loss_score, kl_div_score,
                         delta_loss, CE/KL clean, spliced, zero-ablated and with the error
                         added back (definitions: saescope/lm/metrics.py), plus split,
                         hookpoint, model and sae_hookpoint
and its provenance record `metrics.provenance.json`. On an LM run the SAE's
hookpoint (its store's, or a foreign file's `hook_name`: sparsify `layers.L`,
SAELens `blocks.L.hook_resid_post`...) must be the store's; any other, or one with
no Hugging Face module, is refused. A one-line summary goes to stderr.
A re-run with the same options,
the same SAE weights and the same store skips the work; a change of any of them
redoes it (metrics are derived data: no --overwrite needed).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from saescope import provenance
from saescope.config import config_to_dict
from saescope.device import pick_device
from saescope.errors import SaescopeError
from saescope.io import read_json, write_json
from saescope.options.evaluate import EvalConfig
from saescope.paths import RunPaths, SAEPaths
from saescope.sae import SAE, detect_format, load_sae
from saescope.sae.fit import check_fits_store
from saescope.sae.formats.hub import is_hub_name
from saescope.store import ActivationStore, split_mask

EMBEDDING_SOURCES = ("sentence-transformers", "vectors")


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


def stream_metrics(
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
        for x in tqdm(batches, desc="eval", unit="batch", leave=False, disable=not cfg.progress):
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
    # rows all alike (one row, say) leave no variance to explain: no NMSE or FVE, not a
    # ratio of rounding errors
    flat = total_var <= 1e-9 * max(sums.x_sq, 1e-30)
    nmse = None if flat else sums.err_sq / total_var
    if nmse is not None and not math.isfinite(nmse):
        raise SaescopeError(
            f"the {split} split of {store.dir} gives a non-finite reconstruction error: "
            "the store holds NaN or inf values (rebuild it) or the SAE overflows on them"
        )
    density = sums.fires.double() / sums.n
    alive = density > 0
    metrics: dict[str, Any] = {
        "n_rows": sums.n,
        "nmse": nmse,
        "fve": None if nmse is None else 1.0 - nmse,
        "mse_per_row": sums.err_sq / sums.n,
        "l0": sums.active / sums.n,
        "dead_fraction": float((~alive).double().mean()),
        "mean_log10_density": float(density[alive].log10().mean()) if alive.any() else None,
        "mean_active_value": sums.value_sum / sums.active if sums.active else 0.0,
        "cosine": min(1.0, sums.cos_sum / sums.n),  # rounding took one row to 1 + 4e-16
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
_IGNORED = ("run", "batch_size", "device", "lm_batch_size", "progress")


def load_for_eval(folder: Path, device: torch.device) -> tuple[SAE, Path, str]:
    """(SAE, its weights file, format) of an SAE folder of any folder format."""
    where = detect_format(folder)
    if where.format == "saerch":
        raise SaescopeError(
            f"{where.path} is a single {where.format} file; eval writes metrics.json beside the "
            f"SAE: convert it into a folder first (saescope convert --src {where.path} --out DIR)"
        )
    sae = load_sae(where.path, device=str(device))
    return sae, where.weights, where.format


def _trained_store_id(folder: SAEPaths, fmt: str) -> str | None:
    """The manifest hash of the store a native SAE was trained on (its training record's
    input), where it says: the store compared by what it holds, not by a path that was
    relative to wherever `train` ran."""
    saved = provenance.read_record(folder.train_record) if fmt == "saescope" else None
    if not saved or saved.get("stage") != "train":
        return None
    return saved.get("upstream", {}).get("acts")


def _fraction(cfg: EvalConfig, folder: SAEPaths, fmt: str, same_store: bool) -> float:
    """The held-out fraction: the option, else the one the SAE was trained with (foreign: 0).
    `same_store`: the SAE was (or may have been) trained on this store's rows."""
    trained = None
    if fmt == "saescope":
        trained = read_json(folder.config).get("training", {}).get("eval_fraction")
    if cfg.eval_fraction < 0:
        return float(trained or 0.0)
    if trained is not None and same_store and cfg.eval_fraction > float(trained):
        # the held-out rows of a fraction are the row ids whose hash falls under it, so a
        # larger fraction takes rows the SAE trained on as well
        raise SaescopeError(
            f"eval_fraction {cfg.eval_fraction} is larger than the {trained} this SAE was "
            f"trained with: rows it trained on would count as held out; use at most {trained} "
            "(or leave it out for that one)"
        )
    return cfg.eval_fraction


def lm_contexts(n_contexts: int, want: int, split: str, fraction: float) -> tuple[np.ndarray, str]:
    """(context ids, split used): the first `want` contexts of `split`, in context order.

    Held-out contexts are those the store holds out (`split_mask` of the context id);
    when nothing was held out (fraction 0), every context is used and the split is "all".
    """
    ids = np.arange(n_contexts, dtype=np.int64)
    if split == "all" or fraction <= 0:
        return ids[:want], "all"
    held = split_mask(ids, fraction)
    return (ids[held] if split == "eval" else ids[~held])[:want], split


class LMJob(NamedTuple):
    """What the LM metrics run on: the loaded model, its hookpoint and the chosen contexts."""

    lm: Any  # saescope.lm.model.LM
    hp: Any  # saescope.lm.hooks.Hookpoint
    tokens: dict[str, np.ndarray]  # input_ids, attention_mask, keep: (n_contexts, ctx_len)
    split: str  # the split the contexts come from: eval, train or all


def prepare_lm(
    cfg: EvalConfig, store: ActivationStore, sae: SAE, where: Path, fraction: float
) -> LMJob:
    """Load the store's model and contexts; refuse an SAE that reads another hookpoint."""
    from safetensors.numpy import load_file

    from saescope.lm import hooks
    from saescope.lm.metrics import check_hookpoint, sae_hookpoint
    from saescope.lm.model import load_lm

    tokens_path = RunPaths(cfg.run).acts_tokens
    if not tokens_path.exists():
        raise SaescopeError(f"{tokens_path} is missing; re-run `saescope acts` on {cfg.run}")
    tokens = load_file(str(tokens_path))
    ids, split = lm_contexts(len(tokens["input_ids"]), cfg.lm_contexts, cfg.lm_split, fraction)
    if len(ids) == 0:
        raise SaescopeError(
            f"the store {store.dir} has no {cfg.lm_split} contexts for the LM metrics; "
            "use --lm-split all or --lm-contexts 0"
        )
    meta = store.meta
    lm = load_lm(
        str(meta["model"]), pick_device(cfg.device), str(meta.get("model_dtype", "float32"))
    )
    hp = hooks.resolve(lm.model, str(meta["hookpoint"]))
    check_hookpoint(sae_hookpoint(sae), meta, str(where), lm.model)
    chosen = {k: tokens[k][ids] for k in ("input_ids", "attention_mask", "keep")}
    return LMJob(lm, hp, chosen, split)


def evaluate_lm(job: LMJob, sae: SAE, batch_size: int) -> dict[str, Any]:
    """The `lm` section of metrics.json: CE/KL with the SAE spliced into the store's model."""
    from saescope.lm.metrics import lm_metrics, sae_hookpoint

    t = job.tokens
    result = lm_metrics(
        job.lm,
        job.hp,
        sae.to(job.lm.device),
        t["input_ids"],
        t["attention_mask"],
        t["keep"],
        batch_size,
    )
    return {
        "split": job.split,
        "model": job.lm.name,
        "hookpoint": job.hp.name,
        "sae_hookpoint": sae_hookpoint(sae),
        **result.to_dict(),
    }


# below this many rows the summary line says its figures are not steady (one row has no
# variance, so its NMSE is err / 0; a few rows leave most latents unseen)
FEW_ROWS = 100


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def summary_line(folder: Path, metrics: dict[str, Any]) -> str:
    """One line: the SAE, its NMSE and L0, and (LM runs) ce_loss_score and kl_div_score."""
    nmse = "n/a (the rows do not vary)" if metrics["nmse"] is None else _fmt(metrics["nmse"])
    line = (
        f"eval {folder}: nmse {nmse}, l0 {_fmt(metrics['l0'])}, "
        f"dead {_fmt(metrics['dead_fraction'])} on {metrics['n_rows']:,} {metrics['split']} rows"
    )
    if metrics["n_rows"] < FEW_ROWS:
        line += (
            " (too few for steady figures: NMSE divides by these rows' variance, and "
            "a latent silent on them counts as dead; hold out more rows, e.g. with a "
            "larger --eval-fraction in training)"
        )
    lm = metrics.get("lm")
    if lm:
        line += (
            f"; LM: ce_loss_score {_fmt(lm['ce_loss_score'])}, kl_div_score "
            f"{_fmt(lm['kl_div_score'])}, delta_loss {_fmt(lm['delta_loss'])} "
            f"({lm['n_tokens']:,} tokens of {lm['n_contexts']} {lm['split']} contexts)"
        )
    return line


@provenance.locked("eval")
def run(cfg: EvalConfig) -> Path:
    """Write `<sae folder>/metrics.json`; returns its path."""
    if is_hub_name(cfg.sae):  # its folder is the hub cache's, which is no place for metrics
        raise SaescopeError(
            f"eval writes metrics.json beside the SAE; copy {cfg.sae} into the run first: "
            f"saescope convert --src {cfg.sae} --out {RunPaths(cfg.run).root / 'sae-hub'}, "
            f"then saescope eval --run {cfg.run} --sae sae-hub"
        )
    folder = SAEPaths(RunPaths(cfg.run).sae_folder(cfg.sae))
    store = ActivationStore(RunPaths(cfg.run).acts)
    sae, weights, fmt = load_for_eval(folder.dir, pick_device(cfg.device))
    folder = SAEPaths(weights.parent)  # a file given as --sae stands for its folder
    bad = [n for n, t in sae.state_tensors().items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise SaescopeError(
            f"the SAE in {folder.dir} has NaN or inf in {', '.join(bad)}; retrain or reconvert it"
        )
    check_fits_store(sae, store.meta, store.d_in, str(folder.dir))
    with_lm = store.rows_kind == "tokens" and cfg.lm_contexts > 0
    rp = RunPaths(cfg.run)
    upstream = provenance.upstream_ids(
        {"acts": rp.acts_manifest, "sae": weights, "tokens": rp.acts_tokens if with_lm else None}
    )
    trained_on = _trained_store_id(folder, fmt)
    same_store = trained_on is None or trained_on == upstream["acts"]  # another's: none trained
    fraction = _fraction(cfg, folder, fmt, same_store)
    split = "eval" if fraction > 0 else "all"
    config = config_to_dict(cfg) | {"eval_fraction": fraction}  # the fraction actually used
    record = provenance.Record.make(folder.eval_record, "eval", config, upstream, _IGNORED)
    # metrics of an SAE are redone whenever the SAE or the store changed: overwrite
    if record.decide(True, folder.metrics) is provenance.Decision.SKIP:
        print(summary_line(folder.dir, read_json(folder.metrics)), file=sys.stderr)
        return folder.metrics
    job = prepare_lm(cfg, store, sae, folder.dir, fraction) if with_lm else None
    record.start()
    metrics = stream_metrics(sae, store, split, fraction, cfg)
    if job is not None:
        metrics["lm"] = evaluate_lm(job, sae, cfg.lm_batch_size)
    result = {
        "split": split,
        "eval_fraction": fraction,
        **metrics,
        "sae_sha256": upstream["sae"],
        "store_id": upstream["acts"],  # which store they describe (`report.data.sae_metrics`)
        "config": config_to_dict(cfg),
    }
    write_json(folder.metrics, result)
    record.finish()
    print(summary_line(folder.dir, result), file=sys.stderr)
    if not same_store:
        print(
            f"eval: note: {folder.metrics} now holds metrics on the store of {cfg.run}, not on "
            "the store the SAE was trained on; reports of its run leave them out until "
            "`saescope eval` measures it there again",
            file=sys.stderr,
        )
    return folder.metrics
