"""One sweep trial, as it runs inside Ray: the Tune function trainable (`run_trial`) and its MLflow run.

    slot's TrainConfig (+ Optuna's values) -> open or reopen the nested MLflow run -> body -> complete, end, report

The trial driver runs in a Tune trial actor that Tune reuses from trial to
trial (`reuse_actors=True`), so torch and transformers are imported once per
actor and the trainable's content-keyed caches (dataset shards, probes,
codebooks) outlive a trial. The body that trains is a parameter
(`--trainable MODULE:FUNCTION`, default `trainables.launch:fit_in_trial`: one
worker trains in this very process, several run a TorchTrainer worker group),
so tests run the orchestration with cheap bodies.
"""

from __future__ import annotations

import importlib
import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from search import tracking
from search.sweep_plan import Slot
from trainables import mlflow_io, mlflow_names
from trainables.config import TrainConfig
from trainables.mlflow_names import FAILED, FINISHED, RUN_FILES, Metric, Tag
from trainables.errors import UserError
from trainables.launch import fit

DEFAULT_BODY = "trainables.launch:fit_in_trial"
BODY_KEYWORDS = ("run_name", "storage_path", "mlflow_run", "callbacks")
"""What `run_trial` passes its body by keyword after the config and the output folder: arguments of
trainables.launch.fit (not those fit has for other callers)."""


@dataclass
class TrialContext:
    """What every trial driver needs, shipped once through the object store."""

    sweep: str
    study: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    slots: list[Slot]  # each with its resolved, validated TrainConfig (absolute paths)
    out_root: str
    train_storage: str  # TorchTrainer runs (several workers) keep their checkpoints here
    experiment_dir: str  # Tune's; in-process runs keep their checkpoints in its trial folders
    body: str | Callable
    samples: int = 1  # searched configurations per (cell, seed); run names show the sample when > 1


def trains_here(config: TrainConfig, body: str | Callable) -> bool:
    """Whether `body` trains `config` in the trial's own process: a body marked `trains_in_trial` (the
    default one) with one worker. Otherwise it starts a TorchTrainer worker group."""
    return config.runtime.num_workers == 1 and getattr(resolve_body(body), "trains_in_trial", False)


def resources(config: TrainConfig, body: str | Callable) -> dict[str, float]:
    """What a trial actor holds. A body that trains here makes the actor its one worker: it holds the
    worker's CPUs (and GPU). Otherwise a TorchTrainer's workers hold them and the actor holds nothing."""
    runtime = config.runtime
    if trains_here(config, body):
        return {"CPU": runtime.threads_per_worker} | ({"GPU": 1} if runtime.use_gpu else {})
    return {"memory": 1}  # {"CPU": 0} is refused by Tune ("empty head and zero worker bundles")


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The Tune function trainable of one trial: open its MLflow run, train, end the run, report.

    A body that raises, or returns a non-finite metric, ends the run FAILED
    with the error and fails the Tune trial; the sweep goes on.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    slot = context.slots[config["slot"]]
    train_config = slot.config.with_overrides(config.get("searched") or {})
    client = tracking.client(context.tracking_uri)
    existing = mlflow_io.trial_run(client, context.experiment_id, trial_id)
    if existing is not None and existing.info.status in (FINISHED, FAILED):
        # Ended before the driver was killed, after Tune's last snapshot: MLflow knows, so don't run it again.
        if existing.info.status == FAILED:
            raise RuntimeError(f"failed before the sweep was resumed: {existing.data.tags.get(Tag.ERROR, '')}")
        tune.report(dict(existing.data.metrics))
        return
    if existing is None:
        tags = trial_tags(context, slot, trial_id, train_config, attempt=1, optuna_trial=config.get("optuna"))
        earlier = len(mlflow_io.slot_runs(client, context.experiment_id, slot.index))
        run_id = mlflow_io.start_run(client, context.experiment_id, trial_run_name(context, slot, earlier), tags)
    else:
        run_id = existing.info.run_id
        attempt = int(existing.data.tags.get(Tag.ATTEMPT, "1")) + 1
        mlflow_io.reopen(client, run_id, trial_tags(context, slot, trial_id, train_config, attempt=attempt,
                                                  optuna_trial=config.get("optuna")))
    link_optuna_trial(config.get("optuna"), slot, run_id)
    out_dir = Path(context.out_root) / trial_id
    began = time.monotonic()
    try:
        body = resolve_body(context.body)
        # A TorchTrainer's workers report to Tune through this callback. Its queue is an actor process
        # of its own, made anew each trial and polled every 0.2 s, so a body that trains here (and
        # reports to Tune itself) gets none.
        callbacks = [] if trains_here(train_config, body) else [TuneReportCallback()]
        metrics = body(train_config, out_dir, run_name=trial_id, storage_path=context.train_storage,
                       mlflow_run={"tracking_uri": context.tracking_uri, "run_id": run_id}, callbacks=callbacks)
        bad = sorted(key for key, value in (metrics or {}).items() if isinstance(value, float) and not math.isfinite(value))
        if bad:
            raise FloatingPointError(f"non-finite final metrics: {', '.join(bad)}")
    except Exception as error:
        if not client.get_run(run_id).data.params:
            mlflow_io.log_params(client, run_id, train_config.flatten())
        mlflow_io.finish(client, run_id, FAILED, error)
        raise
    metrics = {**metrics, Metric.FIT_SECONDS: time.monotonic() - began}  # the body's wall time, for the overhead benchmark
    checkpoint_dirs = [Path(context.train_storage) / trial_id, *Path(context.experiment_dir).glob(f"*_{trial_id}_*")]
    _complete_run(client, run_id, out_dir, checkpoint_dirs, metrics)
    mlflow_io.finish(client, run_id, FINISHED)
    tune.report({key: value for key, value in metrics.items() if isinstance(value, (int, float))})


def trial_tags(context: TrialContext, slot: Slot, trial_id: str, config: TrainConfig, attempt: int,
               optuna_trial: dict[str, Any] | None = None) -> dict[str, Any]:
    return mlflow_names.trial_tags(parent_run_id=context.parent_run_id, sweep=context.sweep, study=context.study,
                                   trial_id=trial_id, slot=slot.index, sample=slot.sample, attempt=attempt,
                                   arm=config.data.arm.value, seed=config.seed, levels=slot.cell.levels,
                                   phase=slot.phase.value, optuna_trial=optuna_trial)


def trial_run_name(context: TrialContext, slot: Slot, earlier_runs: int = 0) -> str:
    return mlflow_names.trial_run_name(context.study, slot.cell.levels, slot.seed,
                                       sample=slot.sample if context.samples > 1 else None, rerun=earlier_runs)


def link_optuna_trial(optuna_trial: dict[str, Any] | None, slot: Slot, run_id: str) -> None:
    """The Optuna trial of a tuning run carries the MLflow run id of each of its seeds as user attribute
    `mlflow_run_id.seed=<seed>` (set while the Optuna trial still runs; the searcher tells it later).
    A storage that stays locked loses the link, never the trial."""
    if not optuna_trial or not optuna_trial.get("storage"):
        return
    import optuna

    storage = optuna.storages.RDBStorage(optuna_trial["storage"], engine_kwargs={"connect_args": {"timeout": 30}})
    try:
        storage.set_trial_user_attr(optuna_trial["trial_id"], f"mlflow_run_id.seed={slot.seed}", run_id)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # a rerun after a resume: the configuration was told already
    except Exception as error:  # noqa: BLE001 - e.g. sqlite locked for 30 s: the MLflow tags still link the two
        import sys

        print(f"uvlm: warning: Optuna trial {optuna_trial['trial']} of {optuna_trial['study']!r} not linked to MLflow "
              f"run {run_id}: {str(error).splitlines()[0]}", file=sys.stderr)
    finally:
        storage.remove_session()


def _complete_run(client, run_id: str, out_dir: Path, checkpoint_dirs: list[Path], metrics: dict[str, float]) -> None:
    """What rank 0 did not log: final metrics, the run's artifacts, and the checkpoint path tag."""
    run = client.get_run(run_id)
    missing = {key: value for key, value in metrics.items() if key not in run.data.metrics}
    if missing:
        mlflow_io.log_metrics(client, run_id, missing, step=int(metrics.get(Metric.STEP, 0) or 0))
    logged = {artifact.path for artifact in client.list_artifacts(run_id)}
    for name in RUN_FILES:
        if (out_dir / name).is_file() and name not in logged:
            client.log_artifact(run_id, str(out_dir / name))
    checkpoints = sorted(path for folder in checkpoint_dirs for path in folder.glob("checkpoint_*") if path.is_dir())
    if checkpoints and Tag.CHECKPOINT not in run.data.tags:
        mlflow_io.set_tags(client, run_id, {Tag.CHECKPOINT: str(checkpoints[-1])})


def resolve_body(body: str | Callable) -> Callable:
    """'module:function' (or the function) -> the function, checked to take what a trial passes it;
    UserError when it cannot be imported or does not. Checked before Ray starts: a wrong body would
    otherwise fail in every trial."""
    function = body if callable(body) else _import_body(body)
    expected = trial_signature()
    positional = [p for p in expected.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    try:
        inspect.signature(function).bind(*[None] * len(positional), **dict.fromkeys(BODY_KEYWORDS))
    except (TypeError, ValueError):  # ValueError: a builtin whose signature Python cannot read
        name = getattr(function, "__name__", repr(function))
        raise UserError(f"--trainable {body if isinstance(body, str) else name!r}: {name}{_plain(function)} does not "
                        f"take a trial's arguments, those of trainables.launch.fit{expected}") from None
    return function


def trial_signature() -> inspect.Signature:
    """trainables.launch.fit's signature cut to what a trial passes: config, out_dir and BODY_KEYWORDS."""
    signature = inspect.signature(fit)
    return _bare(signature.replace(parameters=[p for p in signature.parameters.values()
                                               if p.kind is p.POSITIONAL_OR_KEYWORD or p.name in BODY_KEYWORDS]))


def _import_body(body: str) -> Callable:
    module_name, _, attribute = body.partition(":")
    if not module_name or not attribute:
        raise UserError(f"--trainable {body!r}: expected MODULE:FUNCTION, e.g. {DEFAULT_BODY}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"--trainable {body!r}: cannot import {module_name!r} ({error})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise UserError(f"--trainable {body!r}: {module_name!r} has no function {attribute!r}")
    return function


def _plain(function: Callable) -> str:
    """'(src, dst, *, follow_symlinks=True)'; '(...)' when Python cannot read the signature."""
    try:
        return str(_bare(inspect.signature(function)))
    except (TypeError, ValueError):
        return "(...)"


def _bare(signature: inspect.Signature) -> inspect.Signature:
    """Without annotations: a one-line message shows names and defaults."""
    return signature.replace(parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
                             return_annotation=signature.empty)
