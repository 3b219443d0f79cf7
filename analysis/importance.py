"""Searched hyperparameters: which ones mattered (Optuna's importance evaluators) and the best configuration per arm.

The sweep's own Optuna study lives in another store and mixes arms, so the
importance is computed on a study rebuilt from the MLflow runs: per arm, one
in-memory study whose trials are the finished runs, with the searched
parameters and the arm's objective: the objective metric minus its mean over
the runs of the same cell (crossed factors), so that a crossed factor such as
the data size does not drown the searched ones. PED-ANOVA is the default evaluator
(no extra dependency); fANOVA is used when `evaluator="fanova"` and
scikit-learn is installed.

A parameter counts as searched when it is a TrainConfig key (not a value the
trainable derives and logs, such as a parameter count), varies between finished runs, is not a
crossed factor, and is neither determined by the seed alone (e.g. a seed-derived
affine seed) nor by the crossed factors alone (e.g. a loss implied by the space,
or the settings a named variant bundles: the cell tag identifies those).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from analysis.frames import factor_names
from trainables.config import Arm, TrainConfig
from trainables.mlflow_names import FINISHED, Metric, overall

OBJECTIVES = {Arm.UNDERSTANDING: (overall(Metric.VQA),), Arm.MIXED: (overall(Metric.VQA),),
              Arm.GENERATION: (overall(Metric.GEN_PROBE), Metric.GEN_COSINE)}


@dataclass
class ArmImportance:
    arm: str
    objective: str
    n_trials: int
    importances: dict[str, float] = field(default_factory=dict)
    """Parameter -> importance (normalised to sum to 1); empty when not computable."""
    note: str = ""


def searched_params(runs: pl.DataFrame) -> list[str]:
    """Dotted names of the searched parameters (module docstring)."""
    done = runs.filter(pl.col("status") == FINISHED)
    factors = [f"params.{f}" for f in factor_names(runs) if f"params.{f}" in runs.columns]
    found = []
    config_keys = {f"params.{key}" for key in TrainConfig().flatten()}  # not derived values the trainable logs
    for column in (c for c in runs.columns if c in config_keys):
        if column in factors or column == "params.seed" or done[column].n_unique() < 2:
            continue
        cell = factors + (["cell"] if done["cell"].n_unique() > 1 else [])
        if _determined_by(done, column, ["seed"]) or (cell and _determined_by(done, column, cell)):
            continue
        found.append(column.removeprefix("params."))
    return found


def _determined_by(frame: pl.DataFrame, column: str, by: list[str]) -> bool:
    return bool((frame.group_by(by).agg(pl.col(column).n_unique().alias("k"))["k"] <= 1).all())


def objective_for(arm: str, runs: pl.DataFrame) -> str | None:
    return next((m for m in OBJECTIVES.get(arm, (overall(Metric.VQA),)) if f"metrics.{m}" in runs.columns), None)


def param_importance(runs: pl.DataFrame, evaluator: str = "ped_anova") -> list[ArmImportance]:
    """Importance of the searched parameters per arm, on studies rebuilt from the finished runs."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = searched_params(runs)
    out = []
    for arm in sorted(runs["arm"].drop_nulls().unique().to_list()):
        objective = objective_for(arm, runs)
        rows = runs.filter((pl.col("arm") == arm) & (pl.col("status") == FINISHED))
        if objective is None:
            out.append(ArmImportance(arm, "", rows.height, note="no objective metric logged"))
            continue
        rows = rows.filter(pl.col(f"metrics.{objective}").is_not_null() & pl.col(f"metrics.{objective}").is_not_nan())
        result = ArmImportance(arm, objective, rows.height)
        out.append(result)
        varying = [n for n in names if rows[f"params.{n}"].n_unique() > 1]
        if not varying:
            result.note = "no searched parameter varies within this arm"
            continue
        if rows.height < 4:
            result.note = f"{rows.height} finished trials: too few to rank parameters"
            continue
        study = optuna.create_study(direction="maximize")
        distributions = {n: _distribution(rows[f"params.{n}"]) for n in varying}
        cell = [c for c in ("cell",) if rows[c].n_unique() > 1]
        target = pl.col(f"metrics.{objective}") - (pl.col(f"metrics.{objective}").mean().over(cell) if cell else 0.0)
        rows = rows.with_columns(target.alias("_target"))
        study.add_trials([optuna.trial.create_trial(
            params={n: _plain(row[f"params.{n}"]) for n in varying}, distributions=distributions,
            value=float(row["_target"])) for row in rows.iter_rows(named=True)])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study, evaluator=_evaluator(evaluator))
            result.importances = {k: float(v) for k, v in importances.items()}
        except (ValueError, RuntimeError) as error:
            result.note = f"importance not computable: {error}"
    return out


def _evaluator(name: str):
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    if name == "fanova":
        return FanovaImportanceEvaluator(seed=0)
    return PedAnovaImportanceEvaluator()


def _plain(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _distribution(column: pl.Series):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    values = column.drop_nulls()
    if column.dtype.is_integer():
        return IntDistribution(int(values.min()), int(values.max()))
    if column.dtype.is_float():
        low, high = float(values.min()), float(values.max())
        return FloatDistribution(low, high, log=low > 0 and high / low >= 10)
    return CategoricalDistribution(sorted(values.unique().to_list(), key=str))


def best_configs(runs: pl.DataFrame) -> pl.DataFrame:
    """The best finished run per arm on the arm's objective: arm, objective, value, run_id, trial_id, factors, searched."""
    names = searched_params(runs)
    factors = [f for f in factor_names(runs) if f != "data.arm" and f"params.{f}" in runs.columns]
    rows = []
    for arm in sorted(runs["arm"].drop_nulls().unique().to_list()):
        objective = objective_for(arm, runs)
        if objective is None:
            continue
        done = runs.filter((pl.col("arm") == arm) & (pl.col("status") == FINISHED)
                           & pl.col(f"metrics.{objective}").is_not_null() & pl.col(f"metrics.{objective}").is_not_nan())
        if done.is_empty():
            continue
        best = done.sort(f"metrics.{objective}", descending=True).row(0, named=True)
        rows.append({"arm": arm, "objective": objective, "value": best[f"metrics.{objective}"], "run_id": best["run_id"],
                     "trial_id": best["trial_id"], "seed": best["seed"],
                     **{f: str(best[f"params.{f}"]) for f in factors}, **{n: best[f"params.{n}"] for n in names}})
    return pl.DataFrame(rows) if rows else pl.DataFrame()
