"""A sweep's MLflow runs as polars frames: one row per trial, and the per-step metrics in long form.

The runs are those of docs/ARCHITECTURE.md "MLflow layout": the experiment named
after the sweep, trial runs tagged `uvlm.role=trial`. Two readers give the same
frame: for a `sqlite:` URI the store is read directly with SQL (read-only; one
query per table, pivoted by polars), otherwise `MlflowClient.search_runs` is
paged. Both feed one assembly step, so column names and types cannot drift.

`load_runs(sweep, tracking_uri)` columns (stable; rows sorted by trial_id, run_id):

    run_id          str       MLflow run id
    run_name        str
    experiment_id   str
    sweep           str       the sweep (= experiment) name
    status          str       FINISHED | FAILED | KILLED | RUNNING | SCHEDULED
    start_time      datetime  UTC, ms
    end_time        datetime  UTC, ms (null while running)
    duration_s      f64
    artifact_uri    str
    trial_id        str       tag uvlm.trial_id
    arm             str       tag uvlm.arm (else param data.arm)
    seed            i64       tag uvlm.seed (else param seed)
    cell            str       tag uvlm.cell: crossed factors except the seed, "k=v;k=v"
    error           str       tag uvlm.error (null unless failed)
    params.<dotted> typed     every logged parameter; values are parsed once: "None"/"null"/"" -> null,
                              True/False -> bool, integers -> i64, numbers -> f64, else str
    tags.<key>      str       every tag, e.g. tags.uvlm.factor.data.arm, tags.mlflow.parentRunId
    metrics.<name>  f64       the final value (MLflow's latest: the highest step), e.g. metrics.test/vqa/overall

`load_history(sweep, tracking_uri, metrics=None)` columns (rows sorted by run_id, metric, step, timestamp):

    run_id str, metric str, step i64, timestamp datetime (UTC, ms), value f64

Join it with `load_runs(...)` on run_id for arm, seed and factors.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Literal

import polars as pl

from trainables.errors import UserError, nearest
from trainables.mlflow_names import Role, Tag, role_filter
from trainables.mlflow_store import check_store, sqlite_path
from trainables.workspace import tracking_uri as resolve_uri

Method = Literal["auto", "sql", "client"]
FIXED_COLUMNS = ("run_id", "run_name", "experiment_id", "sweep", "status", "start_time", "end_time", "duration_s",
                 "artifact_uri", "trial_id", "arm", "seed", "cell", "error")
NULL_STRINGS = ("None", "null", "")
TRUE_FALSE = {"True": True, "true": True, "False": False, "false": False}
PAGE = 50_000  # MLflow's largest search page


# ----------------------------------------------------------------------------- public API

def load_runs(sweep: str, tracking_uri: str | None = None, *, method: Method = "auto") -> pl.DataFrame:
    """One row per trial run of `sweep`: fixed columns, typed params.*, tags.*, final metrics.* (module docstring)."""
    uri = resolve_uri(tracking_uri)
    if _use_sql(uri, method):
        with _connect(uri) as db:
            experiment_id = _sql_experiment(db, sweep)
            runs, params, tags, metrics = _sql_runs(db, experiment_id)
    else:
        experiment_id, runs, params, tags, metrics = _client_runs(uri, sweep)
    return assemble(sweep, experiment_id, runs, params, tags, metrics)


def load_history(sweep: str, tracking_uri: str | None = None, *, metrics: Sequence[str] | None = None,
                 method: Method = "auto") -> pl.DataFrame:
    """Every logged value of the trial runs' metrics (all, or those named) in long form (module docstring)."""
    uri = resolve_uri(tracking_uri)
    if _use_sql(uri, method):
        with _connect(uri) as db:
            experiment_id = _sql_experiment(db, sweep)
            keys = "" if metrics is None else f" AND m.key IN ({','.join('?' * len(metrics))})"
            rows = db.execute(
                f"SELECT m.run_uuid, m.key, m.step, m.timestamp, m.value, m.is_nan FROM metrics m "
                f"JOIN ({_TRIALS_SQL}) r ON r.run_uuid = m.run_uuid WHERE 1=1{keys}",
                (experiment_id, *(metrics or ()))).fetchall()
    else:
        rows = _client_history(uri, sweep, metrics)
    frame = _frame(rows, {"run_id": pl.String, "metric": pl.String, "step": pl.Int64, "timestamp": pl.Int64,
                          "value": pl.Float64, "is_nan": pl.Int64}).with_columns(pl.col("is_nan").cast(pl.Boolean))
    return (frame.with_columns(
        pl.when(pl.col("is_nan")).then(float("nan")).otherwise(pl.col("value")).alias("value"),
        pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))
        .drop("is_nan").unique(maintain_order=False).sort("run_id", "metric", "step", "timestamp"))


def list_sweeps(tracking_uri: str | None = None) -> list[str]:
    """Names of the experiments that hold a sweep's parent run (tag uvlm.role=sweep), sorted."""
    uri = resolve_uri(tracking_uri)
    if _use_sql(uri, "auto"):
        with _connect(uri) as db:
            return [row[0] for row in db.execute(
                "SELECT DISTINCT e.name FROM experiments e JOIN runs r ON r.experiment_id = e.experiment_id "
                f"JOIN tags t ON t.run_uuid = r.run_uuid WHERE t.key = '{Tag.ROLE}' AND t.value = '{Role.SWEEP}' "
                "AND e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active' ORDER BY e.name")]
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    names = set()
    for experiment in client.search_experiments():
        if client.search_runs([experiment.experiment_id], role_filter(Role.SWEEP), max_results=1):
            names.add(experiment.name)
    return sorted(names)


def sweep_parent(sweep: str, tracking_uri: str | None = None) -> dict[str, object]:
    """The sweep's parent run: {'run_id', 'status', 'tags'} (the latest started, if a resume made several)."""
    from mlflow import MlflowClient

    uri = resolve_uri(tracking_uri)
    check_store(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        raise unknown_sweep(sweep, list_sweeps(uri))
    parents = client.search_runs([experiment.experiment_id], role_filter(Role.SWEEP), order_by=["attributes.start_time DESC"])
    if not parents:
        raise UserError(f"sweep {sweep!r} has no parent run tagged uvlm.role=sweep")
    run = parents[0]
    return {"run_id": run.info.run_id, "status": run.info.status, "tags": dict(run.data.tags)}


def unknown_sweep(sweep: str, known: Sequence[str]) -> UserError:
    listed = ", ".join(known) if known else "none yet (run `uvlm sweep SPACE.yaml` first)"
    return UserError(f"no sweep named {sweep!r} in the MLflow store{nearest(sweep, known)}; sweeps there: {listed}")


def factor_names(runs: pl.DataFrame) -> list[str]:
    """Dotted config keys the sweep crossed (from tags uvlm.factor.<key>), in column order."""
    prefix = f"tags.{Tag.FACTOR}"
    return [name.removeprefix(prefix) for name in runs.columns if name.startswith(prefix)]


# ----------------------------------------------------------------------------- readers

_TRIALS_SQL = (f"SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = '{Tag.ROLE}' "
               f"AND t.value = '{Role.TRIAL}' WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active'")


def _use_sql(uri: str, method: Method) -> bool:
    if method == "client":
        return False
    if method == "sql" and not uri.startswith("sqlite:"):
        raise UserError(f"the SQL reader needs a sqlite: tracking URI, not {uri!r}")
    return uri.startswith("sqlite:")


@contextlib.contextmanager
def _connect(uri: str) -> Iterator[sqlite3.Connection]:
    """The store read-only; a missing or damaged one is a UserError (opening a missing one would create it)."""
    check_store(uri)
    path = sqlite_path(uri)
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield db
    except sqlite3.DatabaseError as error:
        raise UserError(f"MLflow store {str(path)!r} cannot be read: {error}") from None
    finally:
        db.close()


def _sql_experiment(db: sqlite3.Connection, sweep: str) -> str:
    row = db.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'", (sweep,)).fetchone()
    if row is None:
        known = [r[0] for r in db.execute(
            "SELECT DISTINCT e.name FROM experiments e JOIN runs r ON r.experiment_id = e.experiment_id "
            f"JOIN tags t ON t.run_uuid = r.run_uuid WHERE t.key = '{Tag.ROLE}' AND t.value = '{Role.SWEEP}' "
            "AND e.lifecycle_stage = 'active' ORDER BY e.name")]
        raise unknown_sweep(sweep, known)
    return str(row[0])


def _sql_runs(db: sqlite3.Connection, experiment_id: str):
    runs = db.execute(
        "SELECT r.run_uuid, r.name, r.status, r.start_time, r.end_time, r.artifact_uri FROM runs r "
        f"JOIN ({_TRIALS_SQL}) k ON k.run_uuid = r.run_uuid", (experiment_id,)).fetchall()
    params = db.execute(f"SELECT p.run_uuid, p.key, p.value FROM params p JOIN ({_TRIALS_SQL}) k ON k.run_uuid = p.run_uuid",
                        (experiment_id,)).fetchall()
    tags = db.execute(f"SELECT g.run_uuid, g.key, g.value FROM tags g JOIN ({_TRIALS_SQL}) k ON k.run_uuid = g.run_uuid",
                      (experiment_id,)).fetchall()
    metrics = db.execute(
        "SELECT m.run_uuid, m.key, CASE WHEN m.is_nan THEN NULL ELSE m.value END, m.is_nan FROM latest_metrics m "
        f"JOIN ({_TRIALS_SQL}) k ON k.run_uuid = m.run_uuid", (experiment_id,)).fetchall()
    return runs, params, tags, [(r, k, float("nan") if nan else v) for r, k, v, nan in metrics]


def _client_trials(uri: str, sweep: str):
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    check_store(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None or experiment.lifecycle_stage != "active":
        raise unknown_sweep(sweep, list_sweeps(uri))
    found, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], role_filter(Role.TRIAL), ViewType.ACTIVE_ONLY,
                                  max_results=PAGE, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return client, experiment.experiment_id, found


def _client_runs(uri: str, sweep: str):
    _, experiment_id, found = _client_trials(uri, sweep)
    runs = [(r.info.run_id, r.info.run_name, r.info.status, r.info.start_time, r.info.end_time, r.info.artifact_uri)
            for r in found]
    params = [(r.info.run_id, k, v) for r in found for k, v in r.data.params.items()]
    tags = [(r.info.run_id, k, v) for r in found for k, v in r.data.tags.items()]
    metrics = [(r.info.run_id, k, v) for r in found for k, v in r.data.metrics.items()]
    return experiment_id, runs, params, tags, metrics


def _client_history(uri: str, sweep: str, metrics: Sequence[str] | None) -> list[tuple]:
    client, _, found = _client_trials(uri, sweep)
    rows = []
    for run in found:
        for key in metrics if metrics is not None else sorted(run.data.metrics):
            if key not in run.data.metrics:
                continue
            for m in client.get_metric_history(run.info.run_id, key):
                nan = m.value != m.value
                rows.append((run.info.run_id, m.key, m.step, m.timestamp, m.value, int(nan)))
    return rows


# ----------------------------------------------------------------------------- assembly

def _frame(rows: list[tuple], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Fetched rows straight into Arrow memory (polars' row constructor: 2-3x faster than transposing in Python)."""
    return pl.DataFrame(rows, schema=schema, orient="row")


def _long(rows: list[tuple], value_type: pl.DataType) -> pl.DataFrame:
    return _frame(rows, {"run_id": pl.String, "key": pl.String, "value": value_type})


def _wide(long: pl.DataFrame, prefix: str) -> pl.DataFrame:
    if long.is_empty():
        return pl.DataFrame({"run_id": []}, schema={"run_id": pl.String})
    wide = long.pivot(on="key", index="run_id", values="value", aggregate_function="first")
    names = sorted(c for c in wide.columns if c != "run_id")
    return wide.select("run_id", *[pl.col(c).alias(f"{prefix}{c}") for c in names])


def typed(column: pl.Series) -> pl.Series:
    """Parse a column of parameter strings once: nulls, then bool, i64, f64, else str."""
    column = pl.select(pl.when(column.is_in(NULL_STRINGS)).then(None).otherwise(column).alias(column.name)).to_series()
    present = column.drop_nulls()
    if present.is_empty():
        return column
    if present.is_in(list(TRUE_FALSE)).all():
        return column.replace_strict(TRUE_FALSE, default=None, return_dtype=pl.Boolean)
    as_int = column.str.to_integer(strict=False)
    if as_int.null_count() == column.null_count():
        return as_int
    as_float = column.cast(pl.Float64, strict=False)
    if as_float.null_count() == column.null_count():
        return as_float
    return column


def assemble(sweep: str, experiment_id: str, runs, params, tags, metrics) -> pl.DataFrame:
    """The runs frame from fetched rows: the one assembly step of both readers (and of analysis.synthetic.runs_frame)."""
    frame = _frame(runs, {"run_id": pl.String, "run_name": pl.String, "status": pl.String, "start_time": pl.Int64,
                          "end_time": pl.Int64, "artifact_uri": pl.String})
    params_wide = _wide(_long(params, pl.String), "params.")
    params_wide = params_wide.with_columns([typed(params_wide[c]) for c in params_wide.columns if c != "run_id"])
    tags_wide = _wide(_long(tags, pl.String), "tags.")
    metrics_wide = _wide(_long(metrics, pl.Float64), "metrics.")
    for part in (params_wide, tags_wide, metrics_wide):
        frame = frame.join(part, on="run_id", how="left")

    def column(name: str, dtype=pl.String) -> pl.Expr:
        return pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype)

    frame = frame.with_columns(
        pl.lit(experiment_id, pl.String).alias("experiment_id"),
        pl.lit(sweep, pl.String).alias("sweep"),
        ((pl.col("end_time") - pl.col("start_time")) / 1000.0).alias("duration_s"),
        pl.col("start_time").cast(pl.Datetime("ms", "UTC")),
        pl.col("end_time").cast(pl.Datetime("ms", "UTC")),
        column(f"tags.{Tag.TRIAL_ID}").alias("trial_id"),
        pl.coalesce(column(f"tags.{Tag.ARM}"), column("params.data.arm")).alias("arm"),
        pl.coalesce(column(f"tags.{Tag.SEED}").str.to_integer(strict=False), column("params.seed", pl.Int64)).alias("seed"),
        column(f"tags.{Tag.CELL}").alias("cell"),
        column(f"tags.{Tag.ERROR}").alias("error"),
    )
    rest = [c for prefix in ("params.", "tags.", "metrics.") for c in frame.columns if c.startswith(prefix)]
    return frame.select(*FIXED_COLUMNS, *rest).sort("trial_id", "run_id", nulls_last=True)
