"""A sweep: a validated Plan run as one Ray Tune experiment, logged to MLflow, resumable.

    plan -> check store, Ray, resources, data -> parent MLflow run -> Tuner(SlotSearcher) -> summary

Each Tune trial runs `search.trial.run_trial` (the trial driver: its nested
MLflow run and the body that trains); `search.cluster` starts and stops Ray.
This module orchestrates, keeps the sweep's parent run and summarises.

Identity: `--name` (default: the space file's stem) names the MLflow
experiment, the Ray experiment folder and the Optuna studies. A name that
exists is resumed with `--resume`, never silently reused.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from search import cluster as ray_cluster
from search import tracking
from search.space_schema import NAME_PATTERN
from search.sweep_plan import Plan
from search.trial import DEFAULT_BODY, TrialContext, resolve_body, run_trial
from trainables import mlflow_io, workspace
from trainables.config import TrainConfig
from trainables.errors import UserError
from trainables.mlflow_names import (FAILED, FINISHED, KILLED, TRIAL_TABLE, TRIALS_FILE, VERSIONS_FILE, Metric, Role, Tag,
                                     sweep_tags)


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
    """The function that trains one trial, or 'module:function'; default trainables.launch:fit_in_trial."""
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
        ray_cluster.check_reachable(options.address)
    else:
        concurrency_for(plan, ray_cluster.resources(None, plan.space.resources.gpus_per_worker > 0), options.max_concurrent)
    if options.resume and _missing_store(uri):
        raise UserError(f"no sweep named {name!r} to resume: {uri} does not exist yet")
    check_optuna(plan, name, folder)

    client = tracking.connect(uri)
    experiment = mlflow_io.experiment_id(client, name, create=False)
    parent = _parent_run(client, experiment) if experiment else None
    trial_runs = mlflow_io.runs(client, experiment, Role.TRIAL) if experiment else []
    _check_identity(plan, name, options.resume, experiment_dir, parent, trial_runs)

    from ray.tune import Tuner

    if options.resume and not Tuner.can_restore(str(experiment_dir)):
        if parent is not None and parent.info.status == FINISHED:
            summary = summarize(client, experiment, name, len(plan.slots), time.monotonic() - started)
            print(f"uvlm: {summary.line()} (already finished; nothing to resume)", file=sys.stderr)
            return summary
        raise UserError(f"sweep {name!r} has no Ray experiment state at {experiment_dir} to resume from; "
                        f"start it afresh under another --name")

    if options.resume and not options.address:
        stopped = ray_cluster.stop_leftovers(folder, name)
        if stopped:
            print(f"uvlm: stopped {len(stopped)} Ray processes left by the killed driver of sweep {name!r} "
                  f"(pids {', '.join(map(str, stopped))})", file=sys.stderr)
    cluster = ray_cluster.start(options.address, folder, options.verbose, label=name)
    parent_id = None
    try:
        concurrency = concurrency_for(plan, cluster, options.max_concurrent)
        prepare_data(plan)
        experiment = mlflow_io.experiment_id(client, name, _artifact_location(options.tracking_uri, folder))
        parent_id = _open_parent(client, experiment, name, plan, parent, concurrency, cluster)
        if options.resume:
            mlflow_io.close_stale(client, experiment, "the sweep driver stopped before the trial ended")
        else:
            _drop_stale_studies(name, folder)
        context = TrialContext(
            sweep=name, study=plan.study, tracking_uri=uri, experiment_id=experiment, parent_run_id=parent_id,
            slots=plan.slots, out_root=str(folder / "runs" / name),
            train_storage=str(storage / f"{name}.train"), experiment_dir=str(experiment_dir), body=options.body or DEFAULT_BODY,
            samples=plan.space.search.samples,
        )
        print(f"uvlm: sweep {name!r}: {len(plan.slots)} trials ({_shape(plan)}), {concurrency} at a time; "
              f"MLflow experiment {name!r} at {uri}", file=sys.stderr)
        _fit(plan, name, options.resume, experiment_dir, context, concurrency, folder)
    finally:
        ray_cluster.stop()
        if parent_id is not None:  # whatever happened, no run of this sweep stays RUNNING
            mlflow_io.close_stale(client, experiment, "the sweep stopped before the trial ended")
            summary = summarize(client, experiment, name, len(plan.slots), time.monotonic() - started)
            _close_parent(client, experiment, parent_id, summary)
    print(f"uvlm: {summary.line()}", file=sys.stderr)
    for failure in summary.failures:
        print(f"uvlm:   failed: {failure}", file=sys.stderr)
    return summary


def check_optuna(plan: Plan, name: str, folder: Path) -> None:
    """A searched sweep's Optuna storage opens and takes writes, and its studies (if any) search this space."""
    if not plan.space.search.params:
        return
    from search.tuning import check_storage, check_studies

    url = workspace.optuna_storage(folder)
    check_storage(url)
    check_studies(plan, name, url)  # on --resume too: the digest check finds a changed file, this a changed store


def _missing_store(uri: str) -> bool:
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def _fit(plan: Plan, name: str, resume: bool, experiment_dir: Path, context: TrialContext, concurrency: int,
         folder: Path) -> None:
    """Build or restore the Tuner and run it to the end, or until Ctrl-C (Tune then saves its state)."""
    from ray import tune

    from search.concurrency import SessionLimiter, restore_tuner
    from search.progress import SweepCallback
    from search.trial import resources

    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), resources(plan.slots[0].config, context.body))
    if resume:
        tuner = restore_tuner(experiment_dir, trainable, concurrency)
    else:
        space = plan.space
        objective = space.objective
        scheduler = None
        if space.early_stopping.enabled:
            from search.tuning import PairedASHA

            scheduler = PairedASHA(
                {slot.index: slot.cell.index for slot in plan.slots},
                {slot.cell.index: int(slot.config.budget.value) for slot in plan.first_of_each_cell()},
                time_attr="step", metric=objective.metric, mode=objective.mode.value,
                grace_period=space.early_stopping.grace_steps, reduction_factor=space.early_stopping.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=SessionLimiter(build_searcher(plan, name, folder), max_concurrent=concurrency),
                num_samples=len(plan.slots), scheduler=scheduler, time_budget_s=space.budget.time_budget_s,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=str(experiment_dir.parent), verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # --resume needs the last one only
                callbacks=[SweepCallback(name, context.tracking_uri, context.experiment_id, len(plan.slots),
                                         early_stopping=space.early_stopping.enabled,
                                         metric=objective.metric if objective else None)],
            ),
        )
    tuner.fit()


def build_searcher(plan: Plan, name: str, folder: Path):
    from search.searcher import SlotRef, SlotSearcher

    objective = plan.space.objective
    refs = [SlotRef(slot.index, slot.cell.index, slot.cell.key, slot.seed, slot.sample, slot.phase) for slot in plan.slots]
    cell_values = {slot.cell.index: slot.config.flatten() for slot in plan.first_of_each_cell()}
    return SlotSearcher(refs, cell_values, plan.space.search,
                        metric=objective.metric if objective else None,
                        mode=objective.mode.value if objective else None,
                        study_prefix=name, storage_url=workspace.optuna_storage(folder))


def prepare_data(plan: Plan) -> None:
    """Generate or check each distinct dataset, and pretrain each distinct text-pretrained LM, once, in the driver,
    before trials start."""
    from trainables.data.prepare import ensure_dataset
    from trainables.pretrain import ensure_text_lm

    seen = set()
    for slot in plan.slots:
        data = slot.config.data
        if data.path not in seen:
            seen.add(data.path)
            ensure_dataset(data)
    for config in text_lm_configs(plan):
        ensure_text_lm(config)


def text_lm_configs(plan: Plan) -> list[TrainConfig]:
    """One slot's config for each distinct text-pretrained LM the plan's runs load (none on random LMs)."""
    from trainables.pretrain import text_lm_folder

    configs = {}
    for slot in plan.slots:
        if slot.config.lm.pretraining.steps:
            configs.setdefault(text_lm_folder(slot.config), slot.config)
    return list(configs.values())


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
    parents = mlflow_io.runs(client, experiment, Role.SWEEP)
    return parents[-1] if parents else None


def _check_identity(plan: Plan, name: str, resume: bool, experiment_dir: Path, parent, trial_runs) -> None:
    exists = parent is not None or experiment_dir.exists() or bool(trial_runs)
    if exists and not resume:
        raise UserError(f"sweep {name!r} already exists ({len(trial_runs)} trial runs in MLflow); "
                        f"continue it with --resume, or pick another --name")
    if resume and not exists:
        raise UserError(f"no sweep named {name!r} to resume; run it without --resume first")
    if resume and parent is not None:
        digest = parent.data.tags.get(Tag.SPACE_DIGEST)
        if digest and digest != plan.digest:
            raise UserError(f"the plan of sweep {name!r} changed since it started (the space file {plan.path.name}, "
                            f"or the order this uvlm runs its trials in); resume it with the original file and "
                            f"version, or start a new sweep with another --name")


def _artifact_location(explicit_uri: str | None, folder: Path) -> str | None:
    """Artifacts of the embedded store go to <workdir>/mlartifacts; a server or database decides its own."""
    return None if (explicit_uri or os.environ.get("MLFLOW_TRACKING_URI")) else workspace.artifact_root(folder)


def _open_parent(client, experiment: str, name: str, plan: Plan, parent, concurrency: int, cluster) -> str:
    sessions = int(parent.data.tags.get(Tag.SESSIONS, "1")) + 1 if parent is not None else 1
    tags = sweep_tags(sweep=name, study=plan.study, git_commit=tracking.git_commit(), space_digest=plan.digest,
                      trials=len(plan.slots), concurrency=concurrency, sessions=sessions)
    if parent is not None:
        mlflow_io.reopen(client, parent.info.run_id, tags)
        return parent.info.run_id
    run_id = mlflow_io.start_run(client, experiment, name, tags)
    client.log_artifact(run_id, str(plan.path))
    client.log_dict(run_id, trial_table(plan), TRIAL_TABLE)
    client.log_dict(run_id, {**tracking.versions(), "git_commit": tags[Tag.GIT_COMMIT],
                             "cluster": cluster}, VERSIONS_FILE)
    mlflow_io.log_params(client, run_id, {"space.trials": len(plan.slots), "space.cells": len(plan.cells),
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
        "headlines": plan.headlines_record(),
    }


def _close_parent(client, experiment: str, parent_id: str, summary: Summary) -> None:
    client.log_dict(parent_id, trials_record(client, experiment), TRIALS_FILE)
    mlflow_io.log_metrics(client, parent_id, {f"{Metric.TRIALS}/{key.replace(' ', '_')}": value for key, value in summary.counts.items()})
    mlflow_io.finish(client, parent_id, FINISHED if summary.complete else KILLED, tags={Tag.SUMMARY: summary.line()})


def trials_record(client, experiment: str) -> list[dict[str, Any]]:
    return [
        {"trial_id": run.data.tags.get(Tag.TRIAL_ID), "slot": run.data.tags.get(Tag.SLOT), "run_id": run.info.run_id,
         "run_name": run.info.run_name, "status": run.info.status, "cell": run.data.tags.get(Tag.CELL),
         "seed": run.data.tags.get(Tag.SEED), "error": run.data.tags.get(Tag.ERROR)}
        for run in mlflow_io.runs(client, experiment, Role.TRIAL)
    ]


def summarize(client, experiment: str, name: str, total: int, wall: float) -> Summary:
    counts = {"finished": 0, "failed": 0, "pruned": 0, "stopped": 0}
    failures = []
    for run in _one_run_per_slot(mlflow_io.runs(client, experiment, Role.TRIAL)):
        status, tags = run.info.status, run.data.tags
        if status == FINISHED:
            counts["finished"] += 1
        elif status == FAILED:
            counts["failed"] += 1
            failures.append(f"{run.info.run_name}: {tags.get(Tag.ERROR, 'no error recorded')}")
        elif mlflow_io.is_pruned(run):
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
    rank = {FINISHED: 0, FAILED: 1}
    best: dict[str, Any] = {}
    loose = []
    for run in runs:
        slot = run.data.tags.get(Tag.SLOT)
        if slot is None:
            loose.append(run)
            continue
        key = (rank.get(run.info.status, 2 if mlflow_io.is_pruned(run) else 3), -(run.info.start_time or 0))
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
    text = " x ".join(parts)
    if plan.space.holdout:
        held = sum(1 for slot in plan.slots if slot.phase.value != "tune")
        text += f" + {held} held-out"
    return text


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
    cluster = ray_cluster.resources(options.address, gpus_needed=plan.space.resources.gpus_per_worker > 0)
    concurrency = concurrency_for(plan, cluster, options.max_concurrent)
    check_optuna(plan, name, workspace.workdir(options.workdir))
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
        search = space.search
        lines.append(f"  searched by Optuna ({search.sampler.value}{', multivariate' if search.multivariate else ''}, "
                     f"seed {search.seed}, one study per cell, {search.samples} configuration(s) per cell, "
                     f"each scored on {len(space.seeds)} seed(s)):")
        lines += [f"    {key}: {param.describe()}" for key, param in search.params.items()]
        lines.append(f"  Optuna storage: {workspace.optuna_storage(workspace.workdir(options.workdir))}")
    if space.holdout:
        lines.append(f"  held out: each cell's best configuration re-runs on seeds {space.holdout.seeds}"
                     + (" beside its untuned configuration" if space.holdout.untuned else "") + " (never pruned)")
    lines.append(f"  early stopping (ASHA): {'on, grace ' + str(space.early_stopping.grace_steps) + ' steps' if space.early_stopping.enabled else 'off'}")
    if space.budget.time_budget_s:
        lines.append(f"  time budget: {_duration(space.budget.time_budget_s)}")
    lines += [f"  data: {line}" for line in check_data(plan)]
    lines.append(table_text(plan))
    return "\n".join(lines)


def check_data(plan: Plan) -> list[str]:
    """Each distinct dataset: present and matching, or what will be generated (nothing is generated here)."""
    from trainables.data.prepare import ensure_dataset

    found, seen = [], set()
    for slot in plan.slots:
        data = slot.config.data
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
    rows = [("trial", "cell", "seed", "sample", "phase")] + [
        (str(slot.index), slot.cell.key or "-", str(slot.seed), str(slot.sample) if slot.phase.value == "tune" else "best"
         if slot.phase.value == "holdout" else "default", slot.phase.value) for slot in plan.slots]
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    return "\n".join("  " + "  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in rows)
