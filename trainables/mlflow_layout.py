"""The MLflow layout (docs/ARCHITECTURE.md, "MLflow layout"): the one contract between sweeps and analysis.

Everything that writes or reads uvlm's MLflow runs takes its names from here:

    tag keys and values      Tag.*, Role, the tag sets a sweep's parent run and its trial runs carry
    run names                trial_run_name: <study>/<factor>=<level>/.../seed=<n>[/sample=<k>]
    run lifecycle            start_run, reopen, finish, close_stale (nothing is ever left RUNNING)
    batched logging          log_params, log_metrics, set_tags, RunLogger (rank 0 of a training run)
    metric names             Metric.*, per_attribute(group), per_corner(group), metric_names()
    attribute, corner names  ATTRIBUTES, CORNERS (defined once, in trainables.data.records)

The sweep driver owns run lifecycles: it creates the experiment and the
sweep's parent run, each trial driver creates (or, on a retry, reopens) its
nested run and ends it; a run that no process can end any more is marked
KILLED by the next driver that opens the sweep. Train rank 0 logs params,
metrics and artifacts into a run it is given (`RunLogger`), never creating or
ending one. MLflow itself is imported inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterable, Sequence

from trainables.data.records import ATTRIBUTES, CORNERS, Task
from trainables.errors import UserError

# ---- tags -----------------------------------------------------------------------------------------


class Role(StrEnum):
    """Value of tag uvlm.role."""

    SWEEP = "sweep"  # a sweep's parent run
    TRIAL = "trial"  # one trial of a sweep, nested under the parent
    TRAIN = "train"  # a single `uvlm train` run


class Tag:
    """Tag keys."""

    PARENT = "mlflow.parentRunId"
    ROLE = "uvlm.role"
    SWEEP = "uvlm.sweep"
    STUDY = "uvlm.study"
    # the parent run
    GIT_COMMIT = "uvlm.git_commit"
    SPACE_DIGEST = "uvlm.space_digest"
    TRIALS = "uvlm.trials"
    CONCURRENCY = "uvlm.concurrency"
    SESSIONS = "uvlm.sessions"
    SUMMARY = "uvlm.summary"
    # a trial run
    TRIAL_ID = "uvlm.trial_id"
    SLOT = "uvlm.slot"
    SAMPLE = "uvlm.sample"
    ATTEMPT = "uvlm.attempt"
    ARM = "uvlm.arm"
    SEED = "uvlm.seed"
    CELL = "uvlm.cell"
    FACTOR = "uvlm.factor."  # + the factor's name (a dotted key, or a named factor's name)
    CHECKPOINT = "uvlm.checkpoint"
    PHASE = "uvlm.phase"  # tune | holdout | untuned (search.space.Phase)
    OPTUNA_STUDY = "uvlm.optuna_study"  # the Optuna study and trial whose configuration the run trains
    OPTUNA_TRIAL = "uvlm.optuna_trial"
    # how a run ended
    ERROR = "uvlm.error"
    PRUNED = "uvlm.pruned"
    INTERRUPTED = "uvlm.interrupted"


SWEEP_TAGS = frozenset({Tag.ROLE, Tag.SWEEP, Tag.STUDY, Tag.GIT_COMMIT, Tag.SPACE_DIGEST, Tag.TRIALS, Tag.CONCURRENCY,
                        Tag.SESSIONS, Tag.SUMMARY})
"""The uvlm tags of a sweep's ended parent run."""
TRIAL_TAGS = frozenset({Tag.PARENT, Tag.ROLE, Tag.SWEEP, Tag.STUDY, Tag.TRIAL_ID, Tag.SLOT, Tag.SAMPLE, Tag.ATTEMPT,
                        Tag.ARM, Tag.SEED, Tag.CELL, Tag.PHASE})
"""Tags of every trial run, besides one Tag.FACTOR tag per crossed factor, OPTUNA_TAGS when a searcher proposed
its configuration, and the ENDING_TAGS."""
OPTUNA_TAGS = frozenset({Tag.OPTUNA_STUDY, Tag.OPTUNA_TRIAL})
ENDING_TAGS = frozenset({Tag.CHECKPOINT, Tag.ERROR, Tag.PRUNED, Tag.INTERRUPTED})
"""Tags a trial run may get as it ends: its last checkpoint, or why it did not finish."""
TRAIN_TAGS = frozenset({Tag.ROLE, Tag.ARM, Tag.SEED})
"""Tags of a `uvlm train` run."""


def factor_tag(name: str) -> str:
    return Tag.FACTOR + name


def cell_key(levels: Iterable[tuple[str, str]]) -> str:
    """Tag uvlm.cell: 'data.arm=mixed;data.train_images=500', the levels sorted by factor; '' without factors."""
    return ";".join(f"{name}={label}" for name, label in sorted(levels))


def sweep_tags(*, sweep: str, study: str, git_commit: str, space_digest: str, trials: int, concurrency: int,
               sessions: int) -> dict[str, Any]:
    """The parent run's tags while the sweep runs (Tag.SUMMARY comes when it ends)."""
    return {Tag.ROLE: Role.SWEEP.value, Tag.SWEEP: sweep, Tag.STUDY: study, Tag.GIT_COMMIT: git_commit,
            Tag.SPACE_DIGEST: space_digest, Tag.TRIALS: trials, Tag.CONCURRENCY: concurrency, Tag.SESSIONS: sessions}


def trial_tags(*, parent_run_id: str, sweep: str, study: str, trial_id: str, slot: int, sample: int, attempt: int,
               arm: str, seed: int, levels: Sequence[tuple[str, str]], phase: str = "tune",
               optuna_trial: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trial run's tags; `levels` are the crossed (factor name, level label) pairs of its cell; `optuna_trial`
    ({"study", "trial"}) the Optuna trial whose configuration it trains, if a searcher proposed it."""
    tags = {Tag.PARENT: parent_run_id, Tag.ROLE: Role.TRIAL.value, Tag.SWEEP: sweep, Tag.STUDY: study,
            Tag.TRIAL_ID: trial_id, Tag.SLOT: slot, Tag.SAMPLE: sample, Tag.ATTEMPT: attempt, Tag.ARM: arm,
            Tag.SEED: seed, Tag.CELL: cell_key(levels), Tag.PHASE: phase}
    tags.update({factor_tag(name): label for name, label in levels})
    if optuna_trial:
        tags.update({Tag.OPTUNA_STUDY: optuna_trial["study"], Tag.OPTUNA_TRIAL: optuna_trial["trial"]})
    return tags


def train_tags(*, arm: str, seed: int) -> dict[str, Any]:
    return {Tag.ROLE: Role.TRAIN.value, Tag.ARM: arm, Tag.SEED: seed}


def role_filter(role: Role | str) -> str:
    """The search_runs filter for runs of one role."""
    return f"tags.`{Tag.ROLE}` = '{Role(role).value}'"


# ---- run names ------------------------------------------------------------------------------------

def trial_run_name(study: str, levels: Sequence[tuple[str, str]], seed: int, sample: int | None = None,
                   rerun: int = 0) -> str:
    """What a trial is, readable in the MLflow UI: 'mixing/arm=mixed/seed=2'.

    Factors in the order given, each by the last part of its dotted key unless two factors share it;
    `sample` (searched configurations per cell and seed) only when the space asks for several; `rerun`
    counts earlier runs of the same slot (a trial Tune restarted under a new id after a kill -9), so
    names stay unique within a sweep.
    """
    short = [name.rsplit(".", 1)[-1] for name, _ in levels]
    parts = [study] + [f"{name if short.count(part) > 1 else part}={label}"
                       for (name, label), part in zip(levels, short)]
    parts.append(f"seed={seed}")
    if sample is not None:
        parts.append(f"sample={sample}")
    if rerun:
        parts.append(f"rerun={rerun}")
    return "/".join(parts)


# ---- metric names ---------------------------------------------------------------------------------

class Metric:
    """Metric names (flat, '/'-separated). Groups with one metric per attribute end in 'overall' too."""

    STEP = "step"
    TRAIN_LOSS = "train/loss"
    TRAIN_TEXT_LOSS = "train/text_loss"
    TRAIN_IMAGE_LOSS = "train/image_loss"
    TRAIN_SAMPLES = "train/samples"
    # per-attribute groups: <group>/overall and <group>/<attribute>
    VQA = "test/vqa"
    VQA_HIDDEN = "test/vqa_hidden"  # test images matching a data.hide_from_understanding rule
    GEN_PROBE = "test/gen/probe"  # attributes read back from free-running generations
    PROBE_TRUE = "probe/true"  # the probe's accuracy on true tokens
    BASELINE_VQA = "baseline/vqa"  # the constant-answer baseline
    BASELINE_GEN_PROBE = "baseline/gen/probe"
    # per-corner groups: <group>/overall and <group>/<corner>
    GEN_ICON = "test/gen/icon"  # the requested weather's icon drawn in the requested corner (discrete spaces)
    BASELINE_GEN_ICON = "baseline/gen/icon"
    GEN_ICON_FORCED = "test/gen/icon_forced"  # the same read with each cell's true predecessors fed back (final evaluation)
    # single metrics
    CAPTION = "test/caption/score"
    BASELINE_CAPTION = "baseline/caption/score"
    GEN_COSINE = "test/gen/cosine"
    GEN_TOKEN_ACCURACY = "test/gen/token_accuracy"  # vq spaces
    GEN_FRECHET = "test/gen/frechet"
    TRAIN_SECONDS = "time/train_seconds"
    STEP_SECONDS = "time/step_seconds"
    STEP_SECONDS_MEDIAN = "time/step_seconds_median"
    SETUP_SECONDS = "time/setup_seconds"
    EVAL_SECONDS = "time/eval_seconds"
    FIT_SECONDS = "time/fit_seconds"  # wall time of the trial body, logged by the trial driver
    RESUMED_FROM_STEP = "train/resumed_from_step"  # final metrics of a run that resumed from a checkpoint
    PEAK_MEMORY = "memory/peak_gb"  # GPU runs only


ATTRIBUTE_GROUPS = (Metric.VQA, Metric.VQA_HIDDEN, Metric.GEN_PROBE, Metric.PROBE_TRUE, Metric.BASELINE_VQA,
                    Metric.BASELINE_GEN_PROBE)
CORNER_GROUPS = (Metric.GEN_ICON, Metric.BASELINE_GEN_ICON, Metric.GEN_ICON_FORCED)
TRAIN_CURVE = (Metric.TRAIN_LOSS, Metric.TRAIN_TEXT_LOSS, Metric.TRAIN_IMAGE_LOSS)
"""Logged as a curve (their mean over every eval.log_every_steps steps)."""
SINGLE_METRICS = (Metric.STEP, *TRAIN_CURVE, Metric.TRAIN_SAMPLES, Metric.CAPTION, Metric.BASELINE_CAPTION,
                  Metric.GEN_COSINE, Metric.GEN_TOKEN_ACCURACY, Metric.GEN_FRECHET, Metric.TRAIN_SECONDS,
                  Metric.STEP_SECONDS, Metric.STEP_SECONDS_MEDIAN, Metric.SETUP_SECONDS, Metric.EVAL_SECONDS,
                  Metric.FIT_SECONDS, Metric.PEAK_MEMORY, Metric.RESUMED_FROM_STEP)


def overall(group: str) -> str:
    return f"{group}/overall"


def per_attribute(group: str) -> tuple[str, ...]:
    """'<group>/<attribute>' for each of ATTRIBUTES (without 'overall')."""
    return tuple(f"{group}/{attribute}" for attribute in ATTRIBUTES)


def per_corner(group: str) -> tuple[str, ...]:
    """'<group>/<corner>' for each of CORNERS (without 'overall')."""
    return tuple(f"{group}/{corner}" for corner in CORNERS)


def prefixed(metrics: dict[str, float], group: str) -> dict[str, float]:
    """{'overall': x, 'time': y} -> {'<group>/overall': x, '<group>/time': y}."""
    return {f"{group}/{key}": value for key, value in metrics.items()}


def scored_task(metric: str) -> Task | None:
    """The test task whose evaluation logs `metric` (None for training, timing and fixed metrics)."""
    for prefix, task in ((Metric.VQA + "/", Task.VQA), (Metric.VQA_HIDDEN + "/", Task.VQA), (Metric.CAPTION, Task.CAPTION),
                         ("test/gen/", Task.GENERATION)):
        if metric.startswith(prefix):
            return task
    return None


def metric_names() -> list[str]:
    """Every metric name a trial run may carry."""
    names = list(SINGLE_METRICS)
    for group in ATTRIBUTE_GROUPS:
        names += [overall(group), *per_attribute(group)]
    for group in CORNER_GROUPS:
        names += [overall(group), *per_corner(group)]
    return names


# ---- experiments and runs -------------------------------------------------------------------------

# MLflow's limits (mlflow.utils.validation): values beyond them are refused.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
BATCH = 100  # params or tags per log_batch call
METRIC_BATCH = 1000  # metrics per log_batch call
TERMINAL = ("FINISHED", "FAILED", "KILLED")
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
"""MLflow 3's UI opens an experiment of this kind on its Runs tab (the model-training view itself is
asked for in the address: search.commands.ui.RUNS_VIEW)."""


def experiment_id(client, name: str, artifact_location: str | None = None, create: bool = True) -> str | None:
    """The id of the experiment `name`; created when missing (and `create`); a deleted one is an error."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment {name!r} was deleted but still holds its name; restore it "
                            f"(mlflow experiments restore) or pick another --name")
        if create:  # made by an older uvlm or by hand; readers only read
            for key in EXPERIMENT_TAGS.keys() - experiment.tags.keys():
                client.set_experiment_tag(experiment.experiment_id, key, EXPERIMENT_TAGS[key])
        return experiment.experiment_id
    if not create:
        return None
    location = f"{artifact_location.rstrip('/')}/{name}" if artifact_location else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except Exception:  # noqa: BLE001 - created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def runs(client, experiment: str, role: Role | str | None = None, extra: str = "") -> list:
    """Every run of the experiment (optionally of one uvlm.role), oldest first."""
    filters = [role_filter(role)] if role else []
    if extra:
        filters.append(extra)
    found, token = [], None
    while True:
        page = client.search_runs([experiment], filter_string=" and ".join(filters), max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def trial_run(client, experiment: str, trial_id: str):
    """The run of a Tune trial id, or None."""
    matches = runs(client, experiment, Role.TRIAL, f"tags.`{Tag.TRIAL_ID}` = '{trial_id}'")
    return matches[-1] if matches else None


def slot_runs(client, experiment: str, slot: int) -> list:
    """Every run of one slot of the sweep (several after a kill -9 restarted its trial under a new id)."""
    return runs(client, experiment, Role.TRIAL, f"tags.`{Tag.SLOT}` = '{slot}'")


def start_run(client, experiment: str, run_name: str, tags: dict[str, Any]) -> str:
    run = client.create_run(experiment, run_name=run_name, tags={key: clip(value, MAX_TAG_LENGTH) for key, value in tags.items()})
    return run.info.run_id


def reopen(client, run_id: str, tags: dict[str, Any]) -> None:
    """A retried trial (or resumed sweep) continues in its run: RUNNING again, with tags refreshed."""
    client.update_run(run_id, status="RUNNING")
    set_tags(client, run_id, tags)


def finish(client, run_id: str, status: str, error: BaseException | str | None = None, tags: dict[str, Any] | None = None) -> None:
    """End a run FINISHED, FAILED (with tag uvlm.error and error.txt) or KILLED."""
    assert status in TERMINAL, status
    extra = dict(tags or {})
    if error is not None:
        extra[Tag.ERROR] = error if isinstance(error, str) else first_line(error)
    if extra:
        set_tags(client, run_id, extra)
    if isinstance(error, BaseException):
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        with contextlib.suppress(Exception):
            client.log_text(run_id, text, "error.txt")
    client.set_terminated(run_id, status=status)


def pruned(client, run_id: str) -> None:
    """ASHA stopped the trial: its run ends KILLED, tagged uvlm.pruned=true."""
    finish(client, run_id, "KILLED", tags={Tag.PRUNED: "true"})


def interrupted(client, run_id: str, reason: str) -> None:
    """The trial was stopped before it could end its run (time budget, the driver stopped)."""
    finish(client, run_id, "KILLED", tags={Tag.INTERRUPTED: reason})


def is_pruned(run) -> bool:
    return run.data.tags.get(Tag.PRUNED) == "true"


def close_stale(client, experiment: str, reason: str, role: Role = Role.TRIAL) -> int:
    """Mark every RUNNING run of the role KILLED: called when no live process owns them any more."""
    stale = [run for run in runs(client, experiment, role) if run.info.status == "RUNNING"]
    for run in stale:
        interrupted(client, run.info.run_id, reason)
    return len(stale)


# ---- batched logging ------------------------------------------------------------------------------

def set_tags(client, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(key, clip(value, MAX_TAG_LENGTH)) for key, value in tags.items()]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, tags=items[start:start + BATCH])


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """Params in batches, sorted by name, values clipped to MLflow's length limit."""
    from mlflow.entities import Param

    items = [Param(key, clip(value, MAX_PARAM_LENGTH)) for key, value in sorted(params.items())]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, params=items[start:start + BATCH])


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Metrics at one step; non-numbers and non-finite values are left out."""
    log_curve(client, run_id, tuple(metrics), [(step, list(metrics.values()))])


def log_curve(client, run_id: str, names: Sequence[str], points: list[tuple[int, Sequence[float]]]) -> None:
    """Several metrics at many steps (e.g. the training losses' curve) in as few calls as possible."""
    from mlflow.entities import Metric as Entity

    now = int(time.time() * 1000)
    rows = [Entity(name, number, now, step) for step, values in points for name, value in zip(names, values)
            if (number := _finite(value)) is not None]
    for start in range(0, len(rows), METRIC_BATCH):
        client.log_batch(run_id, metrics=rows[start:start + METRIC_BATCH])


class RunLogger:
    """Rank 0's logging into a run the driver created: one log_batch per evaluation (single log_metric calls
    cost seconds per hundred, a batch tens of milliseconds)."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri), run_id

    def params(self, flat: dict[str, Any]) -> None:
        log_params(self.client, self.run_id, flat)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        log_metrics(self.client, self.run_id, metrics, step)

    def curve(self, names: Sequence[str], points: list[tuple[int, Sequence[float]]]) -> None:
        log_curve(self.client, self.run_id, names, points)

    def tags(self, tags: dict[str, Any]) -> None:
        set_tags(self.client, self.run_id, tags)

    def artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))


def clip(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:1000]


def _finite(value: Any) -> float | None:
    """A metric value as a float; None for what MLflow should not get (flags, text, NaN, inf)."""
    if isinstance(value, (bool, str)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
