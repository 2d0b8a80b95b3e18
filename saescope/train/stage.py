"""`saescope train`: train SAEs on a run's activation store.

In: `<run>/acts` (the training split: rows not held out by `eval_fraction`).
Out, for the first (d_sae, k) in `sae/` and for every further one in `sae-<d_sae>-k<k>/`:
    config.json        SAE shape and inference rule, "training" (this config), versions
    sae.safetensors    weights for raw inputs (training scale folded in)
    metrics.jsonl      training metrics every `log_every` steps
    metrics.json       held-out metrics (`saescope eval`, run at the end)
and `sae/checkpoints/step-NNNNNNNN.pt` for resuming. A re-run with the same config
skips finished work and resumes an interrupted one from its latest checkpoint.
Under `torchrun --nproc_per_node N -m saescope train ...` each process trains on
its slice of every global batch (data parallel); rank 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from saescope import provenance
from saescope._version import __version__
from saescope.config import config_to_dict
from saescope.device import pick_device
from saescope.errors import SaescopeError
from saescope.paths import RunPaths, SAEPaths
from saescope.sae import SAE
from saescope.store import ActivationStore
from saescope.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from saescope.train.config import EXECUTION_FIELDS, TrainConfig
from saescope.train.ddp import Dist, close_dist, init_dist, rank_device
from saescope.train.loggers import JsonlLogger, MetricLogger, make_loggers
from saescope.train.trainer import NonFiniteTraining, Throughput, Trainer


def sae_folders(cfg: TrainConfig) -> list[SAEPaths]:
    rp = RunPaths(cfg.run)
    out = []
    for i, (d_sae, k) in enumerate(cfg.variants()):
        out.append(SAEPaths(rp.sae if i == 0 else rp.sae_variant(d_sae, k)))
    return out


def _record(cfg: TrainConfig, rp: RunPaths) -> provenance.Record:
    """What a training reads: its options (not the execution ones) and the activation store."""
    up = provenance.upstream_ids({"acts": rp.acts_manifest})
    path = sae_folders(cfg)[0].train_record
    return provenance.Record.make(path, "train", cfg, up, ignore=EXECUTION_FIELDS)


def _decide(cfg: TrainConfig, record: provenance.Record, folders: list[SAEPaths]) -> str:
    """ "done" when training is finished, "resume" to continue what is there, "fresh" to
    start again (what is there is cleared only once training can start: `_clear`).

    A checkpoint is resumed only when the provenance record says it was made from the
    same store and options; anything else needs --overwrite (see saescope.provenance).
    """
    first = folders[0]
    exists = first.config.exists() or latest_checkpoint(first) is not None
    decision = record.decide(cfg.overwrite, first.dir, exists=exists, quiet=True)
    if decision is provenance.Decision.SKIP:
        if all(f.config.exists() and f.weights.exists() for f in folders):
            record.up_to_date(first.dir)
            return "done"
        return "resume"
    return "fresh" if decision is provenance.Decision.FRESH else "resume"


def _clear(folders: list[SAEPaths], dist: Dist) -> None:
    """Remove the SAEs --overwrite replaces: after the options, the store and the first
    batch have been checked, so a refused or failed start leaves them as they were."""
    if dist.is_main:
        for f in folders:
            if f.dir.exists():
                shutil.rmtree(f.dir)


def _threads(cfg: TrainConfig, dist: Dist) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    elif dist.world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.world))


@provenance.locked("train")
def run(cfg: TrainConfig) -> Path:
    """Train (or resume, or skip) every SAE of `cfg`; returns the first SAE's folder."""
    rp = RunPaths(cfg.run)
    store = ActivationStore(rp.acts)
    folders = sae_folders(cfg)
    device = rank_device(pick_device(cfg.device))  # under torchrun: cuda:LOCAL_RANK
    dist = init_dist(device)
    try:
        _threads(cfg, dist)
        record = _record(cfg, rp)
        decision = _decide(cfg, record, folders)
        fresh = decision == "fresh"
        finished = decision != "done" and _train(cfg, record, store, folders, device, dist, fresh)
        if finished and dist.is_main:
            for f in folders:  # each SAE of the sweep carries the record of its training
                dataclasses.replace(record, path=f.train_record).finish()
        if cfg.eval_at_end and dist.is_main and all(f.weights.exists() for f in folders):
            from saescope import evaluate

            for f in folders:  # eval's own record decides whether metrics.json is current
                evaluate.run(
                    evaluate.EvalConfig(
                        run=cfg.run, sae=f.dir.name, device=str(device), progress=cfg.progress
                    )
                )
        # the other ranks wait on a gloo group with a long timeout (ddp.MAIN_WAIT): the
        # default group's barrier would time out if evaluating took over 10 minutes
        dist.wait_for_main()
    finally:
        close_dist(dist)
    return folders[0].dir


def _plan(cfg: TrainConfig, store: ActivationStore) -> tuple[int, int]:
    """(steps per epoch, total steps) of the training split."""
    n_train = int((~store.held_out(np.arange(store.count), cfg.eval_fraction)).sum())
    if n_train < cfg.batch_size:
        raise SaescopeError(
            f"the training split of {store.dir} has {n_train} rows, fewer than one batch "
            f"({cfg.batch_size}); lower --batch-size or --eval-fraction"
        )
    per_epoch = n_train // cfg.batch_size
    total = math.ceil(cfg.epochs * per_epoch) if cfg.epochs > 0 else cfg.max_steps
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps)
    return per_epoch, max(1, total)


def _train(
    cfg: TrainConfig,
    record: provenance.Record,
    store: ActivationStore,
    folders: list[SAEPaths],
    device: torch.device,
    dist: Dist,
    fresh: bool,
) -> bool:
    """Train until done or `stop_after_steps`; True when training finished. `fresh`:
    replace what the folders hold (--overwrite) instead of resuming it."""
    per_epoch, total = _plan(cfg, store)
    sample_rows = min(cfg.init_rows, per_epoch * cfg.batch_size)
    init_sample = next(
        iter(
            store.iter_batches(
                sample_rows,
                seed=cfg.seed,
                split="train",
                eval_fraction=cfg.eval_fraction,
                buffer_rows=cfg.shuffle_buffer,
            )
        )
    )
    names = [f.dir.name for f in folders]
    trainer = Trainer(cfg, store.d_in, init_sample, total, dist, names, device, store.rows_kind)
    if fresh:
        store.check_files()  # every shard there: a store cut short replaces no finished SAE
        _clear(folders, dist)
    dist.barrier()  # rank 0 may have cleared old folders
    if dist.is_main:
        record.start()
    ckpt = latest_checkpoint(folders[0]) if cfg.resume and not fresh else None
    if ckpt is not None:
        trainer.load_state_dict(load_checkpoint(ckpt))
        if dist.is_main:
            print(
                f"train: resuming from step {trainer.step:,} of {total:,} ({ckpt.name}; "
                "--resume false starts again)",
                file=sys.stderr,
            )
    auto_standardised = trainer.input_norm == "row_standardize" and cfg.input_norm == "auto"
    if dist.is_main and auto_standardised and store.rows_kind != "tokens":
        print(
            "train: rows standardised (input_norm auto: these rows are not all of one "
            "norm; --input-norm none keeps them as they are)",
            file=sys.stderr,
        )
    resume_step = trainer.step if ckpt is not None else None
    loggers: list[list[MetricLogger]] = []
    extra: list[MetricLogger] = []
    if dist.is_main:
        loggers = [[JsonlLogger(f.train_log, resume_step)] for f in folders]
        extra = make_loggers(
            cfg.loggers, cfg.wandb_project, Path(cfg.run).name, config_to_dict(cfg), folders[0].dir
        )
    stop_at = min(total, cfg.stop_after_steps) if cfg.stop_after_steps > 0 else total
    bar = tqdm(
        total=total,
        initial=trainer.step,
        unit="step",
        desc="train",
        dynamic_ncols=True,
        disable=not (cfg.progress and dist.is_main),
    )
    speed = Throughput()
    epoch, skip = divmod(trainer.step, per_epoch)
    t0 = time.perf_counter()
    try:
        while trainer.step < stop_at:
            batches = store.iter_batches(
                cfg.batch_size,
                seed=cfg.seed * 1_000_003 + epoch,
                split="train",
                eval_fraction=cfg.eval_fraction,
                drop_last=True,
                buffer_rows=cfg.shuffle_buffer,
            )
            for i, batch in enumerate(batches):
                if i < skip:
                    continue
                if trainer.step >= stop_at:
                    break
                want = (trainer.step + 1) % max(
                    1, cfg.log_every
                ) == 0 or trainer.step + 1 == stop_at
                trainer.train_step(batch, want_metrics=want)
                sps = speed.tick(cfg.batch_size)
                bar.update(1)
                if want and dist.is_main:
                    _log(trainer, loggers, extra, bar, sps)
                if cfg.checkpoint_every > 0 and trainer.step % cfg.checkpoint_every == 0:
                    _checkpoint(cfg, trainer, folders[0], dist)
            skip, epoch = 0, epoch + 1
        if trainer.step < total:
            _checkpoint(cfg, trainer, folders[0], dist)
            return False
        _checkpoint(cfg, trainer, folders[0], dist)
        if dist.is_main:
            seconds = time.perf_counter() - t0
            for tr, folder in zip(trainer.trainees, folders, strict=True):
                _save(cfg, trainer, tr, folder, store, seconds)
        return True
    except NonFiniteTraining as exc:
        ckpt = latest_checkpoint(folders[0])
        kept = (
            f"the last good checkpoint, {ckpt}, is kept"
            if ckpt is not None
            else "no checkpoint had been written yet"
        )
        raise SaescopeError(f"{exc}. {kept}") from exc
    finally:
        bar.close()
        for group in loggers:
            for lg in group:
                lg.close()
        for lg in extra:
            lg.close()
        dist.barrier()


def _log(trainer: Trainer, loggers, extra, bar, sps: float) -> None:
    for i, tr in enumerate(trainer.trainees):
        metrics = {"samples": float(trainer.samples), "samples_per_s": sps, **tr.last}
        for lg in loggers[i]:
            lg.log(trainer.step, metrics)
        for lg in extra:
            lg.log(trainer.step, {f"{tr.name}/{k}": v for k, v in metrics.items()})
    m = trainer.trainees[0].last
    bar.set_postfix(
        loss=f"{m['loss']:.4f}",
        nmse=f"{m['nmse']:.3f}",
        l0=f"{m['l0']:.1f}",
        dead=f"{m['dead_fraction']:.3f}",
        sps=f"{sps:,.0f}",
    )


def _checkpoint(cfg: TrainConfig, trainer: Trainer, first: SAEPaths, dist: Dist) -> None:
    trainer.check_finite_weights()  # on every rank, so all of them stop together
    if dist.is_main:
        state = trainer.state_dict() | {"config": config_to_dict(cfg)}
        save_checkpoint(first, trainer.step, state, cfg.keep_checkpoints)
    dist.barrier()


def _save(
    cfg: TrainConfig, trainer: Trainer, tr, folder: SAEPaths, store: ActivationStore, seconds: float
) -> None:
    sae = trainer.export(tr)
    meta = {
        "source": "saescope",
        "store": str(store.dir.resolve()),
        "store_meta": store.meta,
        "input_scale": trainer.scale,
    }
    # added to the architecture's own metadata (Matryoshka's prefix widths), not in its place
    merged = {**sae.cfg.metadata, **meta}
    sae = SAE.from_tensors(dataclasses.replace(sae.cfg, metadata=merged), sae.state_tensors())
    extra = {
        "training": config_to_dict(cfg),
        "trained": {
            "steps": trainer.step,
            "samples": trainer.samples,
            "seconds": round(seconds, 2),
            "world_size": trainer.dist.world,
            "selection": trainer.selection,
            "torch_version": torch.__version__,
            "saescope_version": __version__,
        },
    }
    # weights first, config last: config.json marks the folder complete
    sae.save(folder.dir, extra_config=extra)
