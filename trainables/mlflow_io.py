"""Writing and reading uvlm's MLflow runs in the layout of trainables.mlflow_names.

    run lifecycle            start_run, reopen, finish, close_stale (nothing is ever left RUNNING)
    batched logging          log_params, log_metrics, set_tags, RunLogger (rank 0 of a training run)
    finding runs             experiment_id, runs, trial_run, slot_runs

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
from pathlib import Path
from typing import Any, Sequence

from trainables.errors import UserError
from trainables.mlflow_names import ERROR_FILE, EXPERIMENT_TAGS, KILLED, RUNNING, TERMINAL, Role, Tag, role_filter

# ---- experiments and runs -------------------------------------------------------------------------

# MLflow's limits (mlflow.utils.validation): values beyond them are refused.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
BATCH = 100  # params or tags per log_batch call
METRIC_BATCH = 1000  # metrics per log_batch call


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
    client.update_run(run_id, status=RUNNING)
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
            client.log_text(run_id, text, ERROR_FILE)
    client.set_terminated(run_id, status=status)


def pruned(client, run_id: str) -> None:
    """ASHA stopped the trial: its run ends KILLED, tagged uvlm.pruned=true."""
    finish(client, run_id, KILLED, tags={Tag.PRUNED: "true"})


def interrupted(client, run_id: str, reason: str) -> None:
    """The trial was stopped before it could end its run (time budget, the driver stopped)."""
    finish(client, run_id, KILLED, tags={Tag.INTERRUPTED: reason})


def is_pruned(run) -> bool:
    return run.data.tags.get(Tag.PRUNED) == "true"


def close_stale(client, experiment: str, reason: str, role: Role = Role.TRIAL) -> int:
    """Mark every RUNNING run of the role KILLED: called when no live process owns them any more."""
    stale = [run for run in runs(client, experiment, role) if run.info.status == RUNNING]
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
