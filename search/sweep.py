"""A sweep: a validated Plan run as one Ray Tune experiment, logged to MLflow, resumable.

    plan -> check store, Ray, resources, data -> parent MLflow run -> Tuner(SlotSearcher) -> summary

Each Tune trial is a *trial driver* (`run_trial`, a function trainable that
holds no CPU) which opens the trial's nested MLflow run and calls the body that
trains: by default `trainables.launch.fit`, which runs the trainable's
TorchTrainer and reports to Tune through `TuneReportCallback`. The body is a
parameter (`--trainable MODULE:FUNCTION`), so tests run the orchestration with
cheap bodies.

Identity: `--name` (default: the space file's stem) names the MLflow
experiment, the Ray experiment folder and the Optuna studies. A name that
exists is resumed with `--resume`, never silently reused.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from search import tracking
from search.space import NAME_PATTERN, Plan, resolve_paths
from trainables import workspace
from trainables.config import load_config
from trainables.errors import UserError

DEFAULT_BODY = "trainables.launch:fit"
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",  # no token-auth message on a local cluster
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # no actor warning per Train run
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard loggers per trial: MLflow has it all
    "TUNE_GLOBAL_CHECKPOINT_S": "2",  # snapshot often: a trial started after the last snapshot reruns on --resume
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0, Tune prints no tables (SweepCallback prints a line per change)
    # Ray Train's controller polls its workers every 2 s by default and exports Prometheus metrics:
    # polling every 0.2 s without metrics cut the fixed cost of a Train run from ~13 s to ~8.5 s
    # (measured, 1-step runs on 2 cores); a sweep pays it once per trial.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}
# Ray puts Unix sockets under its temp folder; their paths must stay below the OS limit (107 bytes).
MAX_RAY_TEMP_LENGTH = 40


@dataclass
class SweepOptions:
    name: str | None = None
    tracking_uri: str | None = None
    address: str | None = None
    max_concurrent: int | None = None
    resume: bool = False
    storage: str | None = None
    """Ray results folder (shared by all nodes on a cluster); default <workdir>/ray_results."""
    workdir: str | None = None
    body: str | Callable | None = None
    """The function that trains one trial, or 'module:function'; default trainables.launch:fit."""
    verbose: bool = False
    """Forward Ray's and the workers' logs to the console."""


@dataclass
class Summary:
    name: str
    total: int
    counts: dict[str, int]
    wall_seconds: float
    complete: bool
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"{self.counts.get(key, 0)} {key}" for key in ("finished", "failed", "pruned", "stopped", "not run")
                 if self.counts.get(key, 0) or key in ("finished", "failed", "pruned")]
        state = "complete" if self.complete else "incomplete: resume with --resume"
        return f"sweep {self.name!r}: {self.total} trials: {', '.join(parts)} ({state}; {_duration(self.wall_seconds)})"

    @property
    def exit_code(self) -> int:
        """0 when every trial ran and none failed; 1 otherwise (the summary says which)."""
        return 0 if self.complete and not self.counts.get("failed") else 1


@dataclass
class TrialContext:
    """What every trial driver needs, shipped once through the object store."""

    sweep: str
    study: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    base: dict[str, Any]
    slots: list[dict[str, Any]]  # per slot: overrides (paths absolute), cell key, levels, seed, sample
    out_root: str
    train_storage: str
    body: str | Callable


def sweep_name(plan: Plan, name: str | None) -> str:
    name = name or plan.path.stem
    if not re.match(NAME_PATTERN, name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (at most 100), starting with a letter or digit")
    return name


def run_sweep(plan: Plan, options: SweepOptions) -> Summary:
    """Run (or resume) the sweep of `plan`; returns the summary of all its trials so far.

    Everything that can be checked is checked before anything is written to MLflow.
    """
    started = time.monotonic()
    name = sweep_name(plan, options.name)
    folder = workspace.workdir(options.workdir)
    uri = workspace.tracking_uri(options.tracking_uri, folder)
    storage = Path(options.storage or folder / "ray_results").resolve()
    experiment_dir = storage / name
    resolve_body(options.body or DEFAULT_BODY)  # fail now on a bad --trainable, not in every trial
    if options.address:
        _check_reachable(options.address)
    else:
        concurrency_for(plan, cluster_resources(None, plan.space.resources.gpus_per_worker > 0), options.max_concurrent)
    if options.resume and _missing_store(uri):
        raise UserError(f"no sweep named {name!r} to resume: {uri} does not exist yet")

    client = tracking.connect(uri)
    experiment = tracking.experiment_id(client, name, create=False)
    parent = _parent_run(client, experiment) if experiment else None
    trial_runs = tracking.runs(client, experiment, "trial") if experiment else []
    _check_identity(plan, name, options.resume, experiment_dir, parent, trial_runs)

    from ray.tune import Tuner

    if options.resume and not Tuner.can_restore(str(experiment_dir)):
        if parent is not None and parent.info.status == "FINISHED":
            summary = summarize(client, experiment, name, len(plan.slots), time.monotonic() - started)
            print(f"uvlm: {summary.line()} (already finished; nothing to resume)", file=sys.stderr)
            return summary
        raise UserError(f"sweep {name!r} has no Ray experiment state at {experiment_dir} to resume from; "
                        f"start it afresh under another --name")

    cluster = start_ray(options.address, folder, options.verbose)
    parent_id = None
    try:
        concurrency = concurrency_for(plan, cluster, options.max_concurrent)
        slots = resolved_slots(plan)
        prepare_data(plan, slots)
        experiment = tracking.experiment_id(client, name, _artifact_location(options.tracking_uri, folder))
        parent_id = _open_parent(client, experiment, name, plan, parent, concurrency, cluster)
        if options.resume:
            tracking.close_stale(client, experiment, "the sweep driver stopped before the trial ended")
        else:
            _drop_stale_studies(name, folder)
        context = TrialContext(
            sweep=name, study=plan.study, tracking_uri=uri, experiment_id=experiment, parent_run_id=parent_id,
            base=plan.base, slots=slots, out_root=str(folder / "runs" / name),
            train_storage=str(storage / f"{name}.train"), body=options.body or DEFAULT_BODY,
        )
        print(f"uvlm: sweep {name!r}: {len(plan.slots)} trials ({_shape(plan)}), {concurrency} at a time; "
              f"MLflow experiment {name!r} at {uri}", file=sys.stderr)
        _fit(plan, name, options.resume, experiment_dir, context, concurrency, folder)
    finally:
        stop_ray()
        if parent_id is not None:  # whatever happened, no run of this sweep stays RUNNING
            tracking.close_stale(client, experiment, "the sweep stopped before the trial ended")
            summary = summarize(client, experiment, name, len(plan.slots), time.monotonic() - started)
            _close_parent(client, experiment, parent_id, summary)
    print(f"uvlm: {summary.line()}", file=sys.stderr)
    for failure in summary.failures:
        print(f"uvlm:   failed: {failure}", file=sys.stderr)
    return summary


def _missing_store(uri: str) -> bool:
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def _fit(plan: Plan, name: str, resume: bool, experiment_dir: Path, context: TrialContext, concurrency: int,
         folder: Path) -> None:
    """Build or restore the Tuner and run it to the end, or until Ctrl-C (Tune then saves its state)."""
    from ray import tune

    from search.progress import SweepCallback

    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), {"memory": 1})
    if resume:
        tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        space = plan.space
        objective = space.objective
        scheduler = None
        if space.early_stopping.enabled:
            from ray.tune.schedulers import ASHAScheduler

            max_steps = max(int(plan.config(slot).budget.value) for slot in plan.first_of_each_cell())
            # max_t above the last step: ASHA stops trials at rungs only, never at their own end, so a trial
            # that runs its whole budget ends itself and its run ends FINISHED.
            scheduler = ASHAScheduler(time_attr="step", metric=objective.metric, mode=objective.mode.value,
                                      max_t=max_steps + 1, grace_period=space.early_stopping.grace_steps,
                                      reduction_factor=space.early_stopping.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=build_searcher(plan, name, folder), num_samples=len(plan.slots),
                max_concurrent_trials=concurrency, scheduler=scheduler, time_budget_s=space.budget.time_budget_s,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=str(experiment_dir.parent), verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[SweepCallback(name, context.tracking_uri, context.experiment_id, len(plan.slots),
                                         early_stopping=space.early_stopping.enabled,
                                         metric=objective.metric if objective else None)],
            ),
        )
    tuner.fit()


def build_searcher(plan: Plan, name: str, folder: Path):
    from search.searcher import SlotRef, SlotSearcher

    objective = plan.space.objective
    refs = [SlotRef(slot.index, slot.cell.index, slot.cell.key) for slot in plan.slots]
    cell_values = {slot.cell.index: plan.config(slot).flatten() for slot in plan.first_of_each_cell()}
    return SlotSearcher(refs, cell_values, plan.space.search,
                        metric=objective.metric if objective else None,
                        mode=objective.mode.value if objective else None,
                        study_prefix=name, storage_url=workspace.optuna_storage(folder))


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The Tune function trainable of one trial: open its MLflow run, train, end the run, report.

    A body that raises, or returns a non-finite metric, ends the run FAILED
    with the error and fails the Tune trial; the sweep goes on.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    slot = context.slots[config["slot"]]
    searched = config.get("searched") or {}
    train_config = load_config(context.base, {**slot["overrides"], **searched})
    client = tracking.client(context.tracking_uri)
    tags = trial_tags(context, slot, trial_id, train_config)
    existing = tracking.trial_run(client, context.experiment_id, trial_id)
    if existing is not None and existing.info.status in ("FINISHED", "FAILED"):
        # Ended before the driver was killed, after Tune's last snapshot: MLflow knows, so don't run it again.
        if existing.info.status == "FAILED":
            raise RuntimeError(f"failed before the sweep was resumed: {existing.data.tags.get('uvlm.error', '')}")
        tune.report(dict(existing.data.metrics))
        return
    if existing is None:
        run_id = tracking.start_run(client, context.experiment_id, f"{context.sweep}-{slot['index']:04d}",
                                    {**tags, "uvlm.attempt": 1})
    else:
        run_id = existing.info.run_id
        attempt = int(existing.data.tags.get("uvlm.attempt", "1")) + 1
        tracking.reopen(client, run_id, {**tags, "uvlm.attempt": attempt})
    out_dir = Path(context.out_root) / trial_id
    began = time.monotonic()
    try:
        body = resolve_body(context.body)
        metrics = body(train_config, out_dir, run_name=trial_id, storage_path=context.train_storage,
                       mlflow_run={"tracking_uri": context.tracking_uri, "run_id": run_id},
                       callbacks=[TuneReportCallback()])
        bad = sorted(key for key, value in (metrics or {}).items() if isinstance(value, float) and not math.isfinite(value))
        if bad:
            raise FloatingPointError(f"non-finite final metrics: {', '.join(bad)}")
    except Exception as error:
        if not client.get_run(run_id).data.params:
            tracking.log_params(client, run_id, train_config.flatten())
        tracking.finish(client, run_id, "FAILED", error)
        raise
    metrics = {**metrics, "time/fit_seconds": time.monotonic() - began}  # the body's wall time, for the overhead benchmark
    _complete_run(client, run_id, out_dir, Path(context.train_storage) / trial_id, metrics)
    tracking.finish(client, run_id, "FINISHED")
    tune.report({key: value for key, value in metrics.items() if isinstance(value, (int, float))})


def trial_tags(context: TrialContext, slot: dict[str, Any], trial_id: str, config) -> dict[str, Any]:
    """The nested run's tags (docs/ARCHITECTURE.md, "MLflow layout")."""
    tags = {
        "mlflow.parentRunId": context.parent_run_id, "uvlm.role": "trial", "uvlm.sweep": context.sweep,
        "uvlm.study": context.study, "uvlm.trial_id": trial_id, "uvlm.slot": slot["index"],
        "uvlm.arm": config.data.arm.value, "uvlm.seed": config.seed, "uvlm.cell": slot["cell"],
        "uvlm.sample": slot["sample"],
    }
    tags.update({f"uvlm.factor.{name}": label for name, label in slot["levels"]})
    return tags


def _complete_run(client, run_id: str, out_dir: Path, train_dir: Path, metrics: dict[str, float]) -> None:
    """What rank 0 did not log: final metrics, the run's artifacts, and the checkpoint path tag."""
    run = client.get_run(run_id)
    missing = {key: value for key, value in metrics.items() if key not in run.data.metrics}
    if missing:
        tracking.log_metrics(client, run_id, missing, step=int(metrics.get("step", 0) or 0))
    logged = {artifact.path for artifact in client.list_artifacts(run_id)}
    for name in ("config.yaml", "metrics.json", "generated.png", "affine.pt"):
        if (out_dir / name).is_file() and name not in logged:
            client.log_artifact(run_id, str(out_dir / name))
    checkpoints = sorted(path for path in train_dir.glob("checkpoint_*") if path.is_dir())
    if checkpoints and "uvlm.checkpoint" not in run.data.tags:
        tracking.set_tags(client, run_id, {"uvlm.checkpoint": str(checkpoints[-1])})


def resolve_body(body: str | Callable) -> Callable:
    """'module:function' -> the function; UserError when it cannot be imported."""
    if callable(body):
        return body
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


def resolved_slots(plan: Plan) -> list[dict[str, Any]]:
    """Each slot's overrides with relative paths made absolute (trials run elsewhere)."""
    root = Path.cwd()
    return [
        {"index": slot.index, "cell": slot.cell.key, "levels": list(slot.cell.levels), "seed": slot.seed,
         "sample": slot.sample, "overrides": resolve_paths(slot.overrides, plan.config(slot), root)}
        for slot in plan.slots
    ]


def prepare_data(plan: Plan, slots: list[dict[str, Any]]) -> None:
    """Generate or check each distinct dataset once, in the driver, before trials start."""
    from trainables.data.prepare import ensure_dataset

    seen = set()
    for slot in slots:
        config = load_config(plan.base, slot["overrides"])
        if config.data.path not in seen:
            seen.add(config.data.path)
            ensure_dataset(config.data)


# ---- Ray ---------------------------------------------------------------------------------------

def start_ray(address: str | None, folder: Path, verbose: bool) -> dict[str, float]:
    """Start a local Ray (temp folder under `folder`) or join the cluster at `address`; returns its resources."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        ray.shutdown()
    quiet = dict(include_dashboard=False, log_to_driver=verbose, configure_logging=True,
                 logging_level=logging.INFO if verbose else logging.WARNING)
    try:
        if address:
            _check_reachable(address)
            ray.init(address=address, runtime_env={"env_vars": RAY_ENV}, **quiet)
        else:
            ray.init(address="local", num_cpus=os.cpu_count(), _temp_dir=ray_temp_dir(folder), **quiet)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as error:
        raise UserError(f"cannot {'join the Ray cluster at ' + repr(address) if address else 'start Ray'}: "
                        f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if not verbose:
        for logger_name in ("ray", "ray.tune", "ray.train"):
            logging.getLogger(logger_name).setLevel(logging.ERROR)
    return dict(ray.cluster_resources())


def _check_reachable(address: str) -> None:
    """ray.init retries an unreachable HOST:PORT for many minutes; one TCP connection answers in seconds."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", ray:// client addresses: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise UserError(f"nothing answers at the Ray cluster address {address!r} ({error.strerror or error}); "
                        f"start the head with `ray start --head --port {port}`, or drop --address") from None


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def ray_temp_dir(folder: Path) -> str:
    """<workdir>/ray when its path is short enough for Ray's sockets, else a short one under /tmp."""
    path = folder / "ray"
    if len(str(path)) > MAX_RAY_TEMP_LENGTH:
        path = Path("/tmp") / f"uvlm-ray-{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def cluster_resources(address: str | None, gpus_needed: bool = False) -> dict[str, float]:
    """CPUs and GPUs that trials can use: this machine, or the cluster at `address` (joined briefly)."""
    if address:
        try:
            return start_ray(address, Path.cwd(), verbose=False)
        finally:
            stop_ray()
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(_local_gpus()) if gpus_needed else 0.0}


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA means no GPUs
        return 0


def concurrency_for(plan: Plan, cluster: dict[str, float], requested: int | None) -> int:
    """Trials at once: --max-concurrent, else the space's budget, else what the cluster holds."""
    need = plan.space.resources.per_trial()
    have = {kind: int(cluster.get(kind, 0)) for kind in need}
    for kind, amount in need.items():
        if amount > have[kind]:
            resources = plan.space.resources
            raise UserError(
                f"a trial needs {amount} {kind}s (resources: {resources.workers} workers x "
                f"{resources.cpus_per_worker if kind == 'CPU' else resources.gpus_per_worker} {kind} per worker) "
                f"but the cluster has {have[kind]}")
    fits = min(have[kind] // amount for kind, amount in need.items() if amount)
    chosen = requested or plan.space.budget.max_concurrent or fits
    return max(1, min(chosen, len(plan.slots)))


# ---- MLflow parent run ---------------------------------------------------------------------------

def _parent_run(client, experiment: str):
    parents = tracking.runs(client, experiment, "sweep")
    return parents[-1] if parents else None


def _check_identity(plan: Plan, name: str, resume: bool, experiment_dir: Path, parent, trial_runs) -> None:
    exists = parent is not None or experiment_dir.exists() or bool(trial_runs)
    if exists and not resume:
        raise UserError(f"sweep {name!r} already exists ({len(trial_runs)} trial runs in MLflow); "
                        f"continue it with --resume, or pick another --name")
    if resume and not exists:
        raise UserError(f"no sweep named {name!r} to resume; run it without --resume first")
    if resume and parent is not None:
        digest = parent.data.tags.get("uvlm.space_digest")
        if digest and digest != plan.digest:
            raise UserError(f"the space file {plan.path.name} changed since sweep {name!r} started; "
                            f"resume it with the original file, or start a new sweep with another --name")


def _artifact_location(explicit_uri: str | None, folder: Path) -> str | None:
    """Artifacts of the embedded store go to <workdir>/mlartifacts; a server or database decides its own."""
    return None if (explicit_uri or os.environ.get("MLFLOW_TRACKING_URI")) else workspace.artifact_root(folder)


def _open_parent(client, experiment: str, name: str, plan: Plan, parent, concurrency: int, cluster) -> str:
    tags = {"uvlm.role": "sweep", "uvlm.sweep": name, "uvlm.study": plan.study, "uvlm.git_commit": tracking.git_commit(),
            "uvlm.space_digest": plan.digest, "uvlm.trials": len(plan.slots), "uvlm.concurrency": concurrency}
    if parent is not None:
        sessions = int(parent.data.tags.get("uvlm.sessions", "1")) + 1
        tracking.reopen(client, parent.info.run_id, {**tags, "uvlm.sessions": sessions})
        return parent.info.run_id
    run_id = tracking.start_run(client, experiment, name, {**tags, "uvlm.sessions": 1})
    client.log_artifact(run_id, str(plan.path))
    client.log_dict(run_id, trial_table(plan), "trial_table.json")
    client.log_dict(run_id, {**tracking.versions(), "git_commit": tags["uvlm.git_commit"],
                             "cluster": cluster}, "versions.json")
    tracking.log_params(client, run_id, {"space.trials": len(plan.slots), "space.cells": len(plan.cells),
                                         "space.seeds": len(plan.space.seeds), "space.samples": plan.space.search.samples})
    return run_id


def trial_table(plan: Plan) -> dict[str, Any]:
    space = plan.space
    return {
        "study": plan.study, "space_file": plan.path.name, "digest": plan.digest,
        "factors": {name: list(levels) for name, levels in space.factors.items()},  # values, or a named factor's labels
        "seeds": space.seeds,
        "searched": {key: param.describe() for key, param in space.search.params.items()},
        "objective": space.objective.model_dump(mode="json") if space.objective else None,
        "trials": plan.table(),
    }


def _close_parent(client, experiment: str, parent_id: str, summary: Summary) -> None:
    client.log_dict(parent_id, trials_record(client, experiment), "trials.json")
    tracking.log_metrics(client, parent_id, {f"trials/{key.replace(' ', '_')}": value for key, value in summary.counts.items()})
    tracking.finish(client, parent_id, "FINISHED" if summary.complete else "KILLED",
                    tags={"uvlm.summary": summary.line()})


def trials_record(client, experiment: str) -> list[dict[str, Any]]:
    return [
        {"trial_id": run.data.tags.get("uvlm.trial_id"), "slot": run.data.tags.get("uvlm.slot"),
         "run_id": run.info.run_id, "status": run.info.status, "cell": run.data.tags.get("uvlm.cell"),
         "seed": run.data.tags.get("uvlm.seed"), "error": run.data.tags.get("uvlm.error")}
        for run in tracking.runs(client, experiment, "trial")
    ]


def summarize(client, experiment: str, name: str, total: int, wall: float) -> Summary:
    counts = {"finished": 0, "failed": 0, "pruned": 0, "stopped": 0}
    failures = []
    for run in _one_run_per_slot(tracking.runs(client, experiment, "trial")):
        status, tags = run.info.status, run.data.tags
        if status == "FINISHED":
            counts["finished"] += 1
        elif status == "FAILED":
            counts["failed"] += 1
            failures.append(f"{run.info.run_name} ({tags.get('uvlm.cell') or 'no factors'}, seed {tags.get('uvlm.seed')}): "
                            f"{tags.get('uvlm.error', 'no error recorded')}")
        elif tags.get("uvlm.pruned") == "true":
            counts["pruned"] += 1
        else:
            counts["stopped"] += 1
    counts["not run"] = max(0, total - sum(counts.values()))
    complete = counts["not run"] == 0 and counts["stopped"] == 0
    return Summary(name, total, counts, wall, complete, failures)


def _one_run_per_slot(runs: list) -> list:
    """The run that decides each slot's outcome.

    After a kill -9 and --resume, Tune may start a slot's interrupted trial under a new
    trial id: the old run stays KILLED beside the new one. A slot counts once, by its most
    conclusive run (finished, then failed, then pruned, then stopped).
    """
    rank = {"FINISHED": 0, "FAILED": 1}
    best: dict[str, Any] = {}
    loose = []
    for run in runs:
        slot = run.data.tags.get("uvlm.slot")
        if slot is None:
            loose.append(run)
            continue
        key = (rank.get(run.info.status, 2 if run.data.tags.get("uvlm.pruned") == "true" else 3), -(run.info.start_time or 0))
        if slot not in best or key < best[slot][0]:
            best[slot] = (key, run)
    return [run for _, run in best.values()] + loose


def _drop_stale_studies(name: str, folder: Path) -> None:
    """Optuna studies of an earlier sweep of this name whose MLflow and Ray records are gone."""
    import optuna

    storage = workspace.optuna_storage(folder)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for study in optuna.study.get_all_study_names(storage):
        if study.startswith(f"{name}/"):
            optuna.delete_study(study_name=study, storage=storage)


def _shape(plan: Plan) -> str:
    parts = [f"{len(plan.cells)} cells", f"{len(plan.space.seeds)} seeds"]
    if plan.space.search.samples > 1:
        parts.append(f"{plan.space.search.samples} samples")
    return " x ".join(parts)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"



# ---- dry run -------------------------------------------------------------------------------------

def dry_run(plan: Plan, options: SweepOptions) -> str:
    """Everything `uvlm sweep` checks before compute, and the trial table it would run; UserError on a problem."""
    name = sweep_name(plan, options.name)
    if options.body:
        resolve_body(options.body)
    cluster = cluster_resources(options.address, gpus_needed=plan.space.resources.gpus_per_worker > 0)
    concurrency = concurrency_for(plan, cluster, options.max_concurrent)
    slots = resolved_slots(plan)
    space = plan.space
    resources = space.resources
    lines = [
        f"space {plan.path}: study {plan.study!r}, sweep {name!r}: {len(plan.slots)} trials ({_shape(plan)})",
        f"  resources per trial: {resources.workers} Train worker(s) x {resources.cpus_per_worker} CPU"
        + (f" + {resources.gpus_per_worker} GPU" if resources.gpus_per_worker else "")
        + f"; cluster: {int(cluster.get('CPU', 0))} CPUs, {int(cluster.get('GPU', 0))} GPUs -> {concurrency} trial(s) at a time",
    ]
    if space.objective:
        lines.append(f"  objective: {space.objective.metric} ({space.objective.mode.value})")
    if space.search.params:
        lines.append(f"  searched by Optuna ({space.search.sampler.value}, seed {space.search.seed}, one study per cell):")
        lines += [f"    {key}: {param.describe()}" for key, param in space.search.params.items()]
    lines.append(f"  early stopping (ASHA): {'on, grace ' + str(space.early_stopping.grace_steps) + ' steps' if space.early_stopping.enabled else 'off'}")
    if space.budget.time_budget_s:
        lines.append(f"  time budget: {_duration(space.budget.time_budget_s)}")
    lines += [f"  data: {line}" for line in check_data(plan, slots)]
    lines.append(table_text(plan))
    return "\n".join(lines)


def check_data(plan: Plan, slots: list[dict[str, Any]]) -> list[str]:
    """Each distinct dataset: present and matching, or what will be generated (nothing is generated here)."""
    from trainables.data.prepare import ensure_dataset

    found, seen = [], set()
    for slot in slots:
        data = load_config(plan.base, slot["overrides"]).data
        if data.path in seen:
            continue
        seen.add(data.path)
        if Path(data.path).exists():
            ensure_dataset(data)  # only checks an existing folder
            found.append(f"{data.path} (present, matches)")
        else:
            if data.train_images is not None and data.train_images > data.generate_train_images:
                raise UserError(f"data.train_images={data.train_images} but the dataset to generate at {data.path!r} "
                                f"has data.generate_train_images={data.generate_train_images}")
            hidden = f", hiding {','.join(data.hide_from_understanding)}" if data.hide_from_understanding else ""
            found.append(f"{data.path} (will be generated: {data.generate_train_images} train + "
                         f"{data.generate_test_images} test images, {data.generate_image_size} px{hidden})")
    return found


def table_text(plan: Plan) -> str:
    rows = [("trial", "cell", "seed", "sample")] + [
        (str(slot.index), slot.cell.key or "-", str(slot.seed), str(slot.sample)) for slot in plan.slots]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join("  " + "  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in rows)
