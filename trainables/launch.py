"""`fit`: one run of the trainable under Ray Train (a TorchTrainer), from any driver; `fit_in_trial`:
the same run as the body of a sweep's Tune trial.

In Ray 2.60 a TorchTrainer cannot be handed to a Tuner; a sweep's Tune
function trainable calls `fit_in_trial` instead (with `callbacks=[TuneReportCallback()]`
when it runs several workers), and `uvlm train` calls `fit` on a local Ray. Ray must be
initialised by the caller.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainables.config import TrainConfig
from trainables.errors import UserError


class RunFailed(UserError):
    """The run stopped with an error (a worker raised, or the loss became NaN)."""


def resolved(config: TrainConfig) -> TrainConfig:
    """The config with its folders made absolute (Ray workers do not share the driver's working directory), and
    lm.pretrained_path naming the text-pretrained LM's folder when it is pretrained."""
    update = {"data": config.data.model_copy(update={"path": str(Path(config.data.path).resolve())})}
    if config.runtime.cache_dir:
        update["runtime"] = config.runtime.model_copy(update={"cache_dir": str(Path(config.runtime.cache_dir).resolve())})
    if config.lm.pretraining.steps:
        from trainables.pretrain import text_lm_folder

        update["lm"] = config.lm.model_copy(update={"pretrained_path": str(text_lm_folder(config).resolve())})
    return config.model_copy(update=update)


def loop_config(config: TrainConfig, out_dir: str | Path, mlflow_run: dict[str, str] | None,
                fail_at_step: int | None = None) -> dict[str, Any]:
    """The train_loop_per_worker argument (contract in docs/ARCHITECTURE.md)."""
    return {"train": resolved(config), "out_dir": str(Path(out_dir).resolve()), "mlflow": mlflow_run,
            "fail_at_step": fail_at_step}


def fit_in_trial(config: TrainConfig, out_dir: str | Path, *, run_name: str, storage_path: str | Path,
                 mlflow_run: dict[str, str] | None = None, callbacks: Sequence[Any] = ()) -> dict[str, float]:
    """A sweep trial's run. One worker trains in this process, the Tune trial's own, reporting and
    checkpointing to Tune directly: a TorchTrainer would start a controller and a worker process per
    trial (~11 s, and ~5 s to import transformers there), while Tune reuses this process from trial to
    trial. (Ray Train's own local mode, `ScalingConfig(num_workers=0)`, runs no RunConfig callbacks, so
    Tune would see no intermediate results, and keeps checkpoints in memory only.) Several workers run
    `fit`, a real TorchTrainer worker group."""
    if config.runtime.num_workers > 1:
        return fit(config, out_dir, run_name=run_name, storage_path=storage_path, mlflow_run=mlflow_run,
                   callbacks=callbacks)
    from trainables.train import run_in_tune_trial

    metrics = run_in_tune_trial(loop_config(config, out_dir, mlflow_run))
    check_finite(metrics, run_name)
    return metrics


fit_in_trial.trains_in_trial = True  # the sweep gives its trial actors the worker's CPUs (search.trial.resources)


def fit(config: TrainConfig, out_dir: str | Path, *, run_name: str, storage_path: str | Path,
        mlflow_run: dict[str, str] | None = None, callbacks: Sequence[Any] = (), fail_at_step: int | None = None,
        ) -> dict[str, float]:
    """Train and evaluate one run with Ray Train; -> its final metrics. Raises RunFailed on failure or NaN.
    `fail_at_step`: a rehearsed failure there, once; Ray Train then restarts the workers, which resume from
    the last checkpoint (the path a preempted GPU run takes)."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainables.train import train_loop_per_worker

    runtime = config.runtime
    resources = {"CPU": runtime.threads_per_worker} | ({"GPU": 1} if runtime.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(config, out_dir, mlflow_run, fail_at_step),
        torch_config=TorchConfig(backend="nccl" if runtime.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=runtime.num_workers, use_gpu=runtime.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=str(Path(storage_path).resolve()), callbacks=list(callbacks),
            # a sweep retries at its own level; a rehearsal's one failure is retried here
            failure_config=ray.train.FailureConfig(max_failures=0 if fail_at_step is None else 1),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Ray Train's console lines from WARNING up: not a line per report and checkpoint (its log files keep all)
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as error:
        raise RunFailed(f"run {run_name!r} failed: {worker_error(error)}") from error
    metrics = dict(result.metrics or {})
    check_finite(metrics, run_name)
    return metrics


def check_finite(metrics: dict[str, float], run_name: str) -> None:
    bad = [key for key, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        raise RunFailed(f"run {run_name!r} produced non-finite metrics: {', '.join(sorted(bad))}")


def worker_error(error: BaseException) -> str:
    """The last line of the worker's own exception (Ray wraps it in layers of traceback text)."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line.split(":", 1)[0] or "NonFiniteLoss" in line:
            return line
    return lines[-1] if lines else type(error).__name__
