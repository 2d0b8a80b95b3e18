"""Experiment loggers behind one small interface.

`MetricLogger.log(step, metrics)` and `.close()`. `JsonlLogger` (always on) appends
one JSON object per line to `metrics.jsonl`; `WandbLogger` (offline unless
WANDB_MODE says otherwise, so nothing goes over the network by default),
`MLflowLogger` (a SQLite file in the output folder unless MLFLOW_TRACKING_URI is set) and
`TensorBoardLogger` are optional and imported only when asked for.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from saescope.errors import SaescopeError
from saescope.io import json_safe


class MetricLogger(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    """Appends {"step": ..., **metrics} lines (NaN/inf as null); on resume, drops lines
    past the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            keep = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in keep))
        self._fh = open(self.path, "a")  # noqa: SIM115 - kept open for the whole run

    def log(self, step: int, metrics: dict[str, float]) -> None:
        # strict JSON: a non-finite value (an unset threshold is inf) is written as null
        line = json.dumps(json_safe({"step": step, **metrics}), allow_nan=False)
        self._fh.write(line + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class WandbLogger:
    def __init__(self, project: str, name: str, config: dict[str, Any], directory: Path) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise SaescopeError("logger 'wandb' needs `pip install wandb`") from exc
        mode: Any = os.environ.get("WANDB_MODE", "offline")  # validated by wandb itself
        wdir = Path(os.environ.get("WANDB_DIR") or directory)
        wdir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project, name=name, config=config, dir=str(wdir), mode=mode, reinit=True
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def close(self) -> None:
        self._run.finish()


class MLflowLogger:
    """One MLflow run through `MlflowClient` (no process-wide tracking URI is set).

    Tracking store: MLFLOW_TRACKING_URI if set (a server or a database shared by many
    runs), else a SQLite file `<directory>/mlflow.db` beside this run's outputs, which
    holds this run only (view it with `mlflow ui --backend-store-uri
    sqlite:///<directory>/mlflow.db`; `--overwrite` deletes it with the outputs).
    """

    def __init__(self, experiment: str, name: str, config: dict[str, Any], directory: Path) -> None:
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise SaescopeError(
                "logger 'mlflow' needs `pip install mlflow` (or mlflow-skinny with sqlalchemy "
                "and alembic for the local SQLite store)"
            ) from exc
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None  # a shared store keeps its own artifact root
        if not uri:
            directory.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{directory.resolve()}/mlflow.db"
            artifacts = (directory / "artifacts").resolve().as_uri()
        self._metric = Metric
        self._client = MlflowClient(tracking_uri=uri)
        found = self._client.get_experiment_by_name(experiment)
        if found is not None:
            exp_id = found.experiment_id
        else:
            exp_id = self._client.create_experiment(experiment, artifact_location=artifacts)
        self._run_id = self._client.create_run(exp_id, run_name=name).info.run_id
        params = [Param(k, str(v)[:250]) for k, v in config.items()]
        self._client.log_batch(self._run_id, params=params)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [self._metric(k, float(v), now, step) for k, v in metrics.items()]
        self._client.log_batch(self._run_id, metrics=batch)

    def close(self) -> None:
        self._client.set_terminated(self._run_id)


class TensorBoardLogger:
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise SaescopeError("logger 'tensorboard' needs `pip install tensorboard`") from exc
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def make_loggers(
    names: list[str], project: str, run_name: str, config: dict[str, Any], directory: Path
) -> list[MetricLogger]:
    """The optional loggers named in `names` (metrics keys are '<sae>/<metric>')."""
    out: list[MetricLogger] = []
    for name in names:
        if name == "wandb":
            out.append(WandbLogger(project, run_name, config, directory / "wandb"))
        elif name == "mlflow":
            out.append(MLflowLogger(project, run_name, config, directory / "mlflow"))
        elif name == "tensorboard":
            out.append(TensorBoardLogger(directory / "tensorboard"))
        else:
            raise SaescopeError(f"unknown logger {name!r}; choose wandb, mlflow or tensorboard")
    return out
