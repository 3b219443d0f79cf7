"""MLflow in the layout of docs/ARCHITECTURE.md ("MLflow layout"): experiments, parent and trial runs, tags.

The sweep driver owns run lifecycles: it creates the experiment and the
sweep's parent run, each trial driver creates (or, on a retry, reopens) its
nested run and ends it, and nothing is ever left RUNNING: a run that no process
can end any more is marked KILLED by the next driver that opens the sweep.
Train rank 0 logs params, metrics and artifacts into a run it is given.

Everything here takes a tracking URI; `connect` checks it once and fails fast.
"""

from __future__ import annotations

import contextlib
import math
import socket
import sqlite3
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

from trainables.errors import UserError

# MLflow's limits (mlflow.utils.validation): values beyond them are refused.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
BATCH = 100
PACKAGES = ("uvlm", "torch", "ray", "optuna", "mlflow", "transformers", "peft", "pyarrow", "polars", "pydantic", "numpy")
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def connect(uri: str):
    """An MlflowClient for `uri`, checked: a server must answer, an sqlite store is created here, once.

    A fresh sqlite store opened by several processes at once fails in its
    migrations, so the driver creates it before any trial starts.
    """
    import logging

    check_store(uri, create=True)
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure here means the store is unusable
        raise UserError(f"tracking URI {uri!r} cannot be used: {_first_line(error)}") from None
    return client


def check_store(uri: str, create: bool = False) -> None:
    """A UserError naming the store when `uri` cannot be opened, found before MLflow touches it.

    MLflow opens any sqlite file it is given and creates its tables in it (in
    another program's database too), so an existing file must already be an
    MLflow store; a missing one is created only when `create` (writers).
    """
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        _check_server(uri)
    elif scheme == "sqlite":
        _check_sqlite(uri, create)
    elif scheme not in ("file", "postgresql", "mysql", "mssql", "databricks") and not uri.startswith("/"):
        raise UserError(f"tracking URI {uri!r}: unsupported scheme {scheme or '(none)'!r}; "
                        f"use sqlite:///PATH, http(s)://HOST:PORT or a database URL")


def sqlite_path(uri: str) -> Path:
    """sqlite:///relative.db -> relative.db, sqlite:////abs/m.db -> /abs/m.db (SQLAlchemy's rule)."""
    path = uri.removeprefix("sqlite://").split("?", 1)[0]
    return Path(path[1:] if path.startswith("/") else path)


MLFLOW_TABLES = {"alembic_version", "experiments", "runs", "metrics", "params", "tags"}


def _check_sqlite(uri: str, create: bool) -> None:
    path = sqlite_path(uri)
    store = f"MLflow store {str(path)!r} (tracking URI {uri})"
    if path.is_dir():
        raise UserError(f"{store} is a folder; an sqlite store is a file, e.g. sqlite:///{path / 'mlflow.db'}")
    if not path.exists():
        if not create:
            raise UserError(f"no MLflow store at {str(path)!r} (tracking URI {uri}); pass --tracking-uri or run a sweep first")
        if not path.parent.is_dir():
            raise UserError(f"tracking URI {uri!r}: folder {str(path.parent)!r} does not exist")
        return
    try:
        with path.open("rb") as file:
            header = file.read(16)
    except OSError as error:
        raise UserError(f"{store} cannot be read ({error.strerror})") from None
    if header != b"SQLite format 3\x00":
        raise UserError(f"{store} is not an SQLite database" + (" (an empty file)" if not header else ""))
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as error:
        raise UserError(f"{store} cannot be read: {error}") from None
    if not MLFLOW_TABLES <= tables:
        raise UserError(f"{store} is an SQLite database of another program (no MLflow tables); "
                        f"point --tracking-uri at an MLflow store, or at a new file")


def client(uri: str):
    """An MlflowClient without checks, for processes started after `connect` checked the store."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """MLflow's client retries for minutes; ask /health once with a short timeout instead."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status != 200:
                raise UserError(f"tracking server {uri} answered /health with HTTP {response.status}")
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"tracking server {uri} is unreachable ({reason}); start it or drop --tracking-uri "
                        f"to use the embedded store") from None


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


def runs(client, experiment: str, role: str | None = None, extra: str = "") -> list:
    """Every run of the experiment (optionally of one uvlm.role), oldest first."""
    filters = [f"tags.`uvlm.role` = '{role}'"] if role else []
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
    matches = runs(client, experiment, "trial", f"tags.`uvlm.trial_id` = '{trial_id}'")
    return matches[-1] if matches else None


def start_run(client, experiment: str, run_name: str, tags: dict[str, Any]) -> str:
    run = client.create_run(experiment, run_name=run_name, tags={key: clip(value, MAX_TAG_LENGTH) for key, value in tags.items()})
    return run.info.run_id


def reopen(client, run_id: str, tags: dict[str, Any]) -> None:
    """A retried trial (or resumed sweep) continues in its run: RUNNING again, with tags refreshed."""
    client.update_run(run_id, status="RUNNING")
    set_tags(client, run_id, tags)


def set_tags(client, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(key, clip(value, MAX_TAG_LENGTH)) for key, value in tags.items()]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, tags=items[start:start + BATCH])


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """Params in batches, values clipped to MLflow's length limit."""
    from mlflow.entities import Param

    items = [Param(key, clip(value, MAX_PARAM_LENGTH)) for key, value in params.items()]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, params=items[start:start + BATCH])


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key, float(value), now, step) for key, value in metrics.items() if _number(value)]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, metrics=items[start:start + BATCH])


def finish(client, run_id: str, status: str, error: BaseException | str | None = None, tags: dict[str, Any] | None = None) -> None:
    """End a run FINISHED, FAILED (with tag uvlm.error and error.txt) or KILLED."""
    assert status in TERMINAL, status
    extra = dict(tags or {})
    if error is not None:
        extra["uvlm.error"] = error if isinstance(error, str) else _first_line(error)
    if extra:
        set_tags(client, run_id, extra)
    if isinstance(error, BaseException):
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        with contextlib.suppress(Exception):
            client.log_text(run_id, text, "error.txt")
    client.set_terminated(run_id, status=status)


def close_stale(client, experiment: str, reason: str, role: str = "trial") -> int:
    """Mark every RUNNING run of the role KILLED: called when no live process owns them any more."""
    stale = [run for run in runs(client, experiment, role) if run.info.status == "RUNNING"]
    for run in stale:
        finish(client, run.info.run_id, "KILLED", tags={"uvlm.interrupted": reason})
    return len(stale)


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def git_commit(folder: Path | None = None) -> str:
    """HEAD of the checkout uvlm runs from, '+dirty' when it has uncommitted changes; 'unknown' outside git."""
    folder = folder or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def clip(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:1000]
