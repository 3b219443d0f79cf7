"""The tuning side of a searched sweep: what Optuna tried, on which seeds, what it pruned, and the finding on
held-out seeds next to the untuned one.

    runs (load_runs) -> configurations (one row per Optuna trial: params, mean and spread over its seeds)
                     -> budget per cell, tuning history, pruned runs
                     -> the objective against the mixing ratio, the best ratio with a seed-bootstrap interval
                     -> tuned finding (held-out re-runs of each cell's best) vs untuned (same held-out seeds)

A run's phase is its tag `uvlm.phase` (tune | holdout | untuned), its Optuna
trial the tags `uvlm.optuna_study` / `uvlm.optuna_trial` (docs/ARCHITECTURE.md,
"Tuning"). `finding_runs` is what the report's findings are computed on: the
held-out re-runs when the sweep has them, so no winner's curse reaches a finding.
"""

from __future__ import annotations

import json
import math
import tempfile
from typing import Any, Callable

import numpy as np
import polars as pl

from analysis import stats
from analysis.findings import mutual_benefit
from analysis.importance import searched_params
from analysis.results import FindingReport, InsufficientData, correct_as_family
from trainables.mlflow_names import FAILED, FINISHED, FLAG, TRIAL_TABLE, Tag

PHASE, STUDY, TRIAL, PRUNED = (f"tags.{tag}" for tag in (Tag.PHASE, Tag.OPTUNA_STUDY, Tag.OPTUNA_TRIAL, Tag.PRUNED))
RATIO_KEY = "data.generation_ratio"
RATIO = f"params.{RATIO_KEY}"


def objective_of(parent_run_id: str, uri: str) -> tuple[str | None, str]:
    """The sweep's objective (metric, mode) from its parent run's trial table (written by `uvlm sweep`)."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        try:
            path = MlflowClient(uri).download_artifacts(parent_run_id, TRIAL_TABLE, folder)
        except Exception:  # noqa: BLE001 - an older sweep without the table: no tuning section
            return None, "max"
        with open(path) as file:
            objective = json.load(file).get("objective") or {}
    return objective.get("metric"), objective.get("mode", "max")


def phases(runs: pl.DataFrame) -> set[str]:
    return set(runs[PHASE].drop_nulls().to_list()) if PHASE in runs.columns else set()


def finding_runs(runs: pl.DataFrame) -> pl.DataFrame:
    """The runs the findings are computed on: only the held-out re-runs of each cell's best configuration
    when the sweep has them (tuning runs would carry the winners' luck); all runs otherwise."""
    if "holdout" in phases(runs):
        return runs.filter(pl.col(PHASE) == "holdout")
    return runs


def is_tuned(runs: pl.DataFrame) -> bool:
    return STUDY in runs.columns and runs[STUDY].drop_nulls().len() > 0


def configurations(runs: pl.DataFrame, metric: str) -> pl.DataFrame:
    """One row per Optuna configuration of the tuning phase: its cell, trial number, searched values, the
    mean objective over its seeds, their spread, and its state (complete | pruned | failed)."""
    column = f"metrics.{metric}"
    tuning = runs.filter(pl.col(STUDY).is_not_null() & (pl.col(PHASE).fill_null("tune") == "tune"))
    searched = [c for c in (f"params.{name}" for name in searched_params(runs)) if c in tuning.columns]
    pruned = pl.col(PRUNED).fill_null("") == FLAG if PRUNED in tuning.columns else pl.lit(False)
    tuning = tuning.with_columns(pruned.alias("pruned"), pl.col(TRIAL).cast(pl.Int64).alias("trial"),
                                 (pl.col(column) if column in tuning.columns else pl.lit(None, pl.Float64)).alias("value"))
    frame = (tuning.group_by(["cell", "trial"], maintain_order=True)
             .agg(*[pl.col(c).first() for c in searched],
                  pl.col("value").filter(pl.col("status") == FINISHED).mean().alias("mean"),
                  pl.col("value").filter(pl.col("status") == FINISHED).min().alias("min"),
                  pl.col("value").filter(pl.col("status") == FINISHED).max().alias("max"),
                  pl.col("seed").count().alias("seeds"),
                  pl.col("pruned").any().alias("any_pruned"),
                  (pl.col("status") == FAILED).any().alias("any_failed"))
             .with_columns(pl.when(pl.col("any_failed")).then(pl.lit("failed"))
                           .when(pl.col("any_pruned")).then(pl.lit("pruned"))
                           .otherwise(pl.lit("complete")).alias("state"))
             .drop("any_pruned", "any_failed")
             .sort(["cell", "trial"]))
    return frame.rename({c: c.removeprefix("params.") for c in searched})


def best_ratio(runs: pl.DataFrame, metric: str, mode: str = "max", resamples: int = 2000) -> dict[str, Any] | None:
    """The configuration with the best mean objective, its ratio, and a 95% percentile interval of the best
    ratio from resampling seeds (each resample re-averages every configuration over the drawn seeds)."""
    column = f"metrics.{metric}"
    tuning = runs.filter((pl.col(PHASE).fill_null("tune") == "tune") & (pl.col("status") == FINISHED)
                         & pl.col(TRIAL).is_not_null())
    if RATIO_KEY not in searched_params(runs) or column not in tuning.columns or tuning.is_empty():
        return None
    varied = tuning.group_by("cell", maintain_order=True).agg(pl.col(RATIO).n_unique().alias("n")).filter(pl.col("n") > 1)
    if varied.is_empty():
        return None
    cell = varied["cell"][0]  # the (first) cell whose ratio Optuna searched
    tuning = tuning.filter(pl.col("cell") == cell)
    table = (tuning.select(pl.col(TRIAL).cast(pl.Int64).alias("trial"), pl.col("seed"),
                           pl.col(RATIO).cast(pl.Float64).alias("ratio"), pl.col(column).alias("value"))
             .pivot(on="seed", index=["trial", "ratio"], values="value").drop_nulls())
    if table.height < 2:
        return None
    values = table.drop("trial", "ratio").to_numpy()  # (configurations, seeds)
    ratios = table["ratio"].to_numpy()
    sign = 1.0 if mode == "max" else -1.0
    best = int(np.argmax(sign * values.mean(axis=1)))
    seeds = values.shape[1]
    rng = np.random.default_rng(0)
    draws = rng.integers(0, seeds, size=(resamples, seeds))
    boot_best = np.array([ratios[np.argmax(sign * values[:, draw].mean(axis=1))] for draw in draws])
    low, high = (np.percentile(boot_best, [2.5, 97.5]) if seeds >= 2 else (math.nan, math.nan))
    return {"trial": int(table["trial"][best]), "ratio": float(ratios[best]), "objective": float(values[best].mean()),
            "ci_low": float(low), "ci_high": float(high), "seeds": seeds, "configurations": table.height,
            "metric": metric, "cell": cell}


def tuned_vs_untuned(runs: pl.DataFrame) -> list[dict[str, Any]]:
    """Finding 1's headline results on the held-out seeds: tuned (each arm's best) beside untuned (defaults)."""
    found = phases(runs)
    if not {"holdout", "untuned"} <= found:
        return []
    reports: dict[str, FindingReport | None] = {}
    for phase in ("holdout", "untuned"):
        try:
            reports[phase] = mutual_benefit(runs.filter(pl.col(PHASE) == phase))
            correct_as_family([reports[phase]])  # each phase's headlines one family, as in a sweep's report
        except InsufficientData:
            reports[phase] = None
    if reports["holdout"] is None:
        return []
    rows = []
    for result in reports["holdout"].headlines:
        other = next((r for r in (reports["untuned"].headlines if reports["untuned"] else [])
                      if (r.name, r.metric) == (result.name, result.metric)), None)
        rows.append({"result": result.name, "comparison": result.comparison, "metric": result.metric,
                     "tuned": result.estimate, "tuned_ci": (result.ci_low, result.ci_high),
                     "tuned_verdict": result.verdict, "untuned": other.estimate if other else None,
                     "untuned_ci": (other.ci_low, other.ci_high) if other else (None, None),
                     "untuned_verdict": other.verdict if other else None, "seeds": result.n_seeds})
    return rows


def section(document, runs: pl.DataFrame, metric: str | None, mode: str, draw: Callable[[str, str, Callable], None]
            ) -> dict[str, Any]:
    """The report's "Tuning" section (nothing for an unsearched sweep); returns its numbers for tuning.json."""
    if not is_tuned(runs) or metric is None:
        return {}
    configs = configurations(runs, metric)
    document.h(2, "Tuning (Optuna)")
    held = phases(runs) & {"holdout", "untuned"}
    tuning = runs.filter(pl.col(PHASE).fill_null("tune") == "tune")
    seeds = sorted(tuning["seed"].drop_nulls().unique().to_list())
    budget = configs.group_by("cell", maintain_order=True).agg(
        pl.len().alias("configurations"), pl.col("seeds").max().alias("seeds each"),
        (pl.col("state") == "pruned").sum().alias("pruned"), (pl.col("state") == "failed").sum().alias("failed"))
    document.p(f"Budget: every cell (arm) gets the same Optuna budget, one study per cell: each configuration "
               f"Optuna proposes trains on the same paired seeds {seeds}, and Optuna is told the mean of "
               f"{metric} over them ({mode}). Findings above are computed on "
               + ("the held-out re-runs only (seeds tuning never saw)." if "holdout" in held else "all finished runs."))
    document.table(budget, "Optuna budget per cell")
    document.table(configs.with_columns(pl.col("mean", "min", "max").round(4)),
                   "Tuning history: one row per Optuna trial (configuration), mean and range over its seeds")
    draw("tuning_history", "Each cell's tuning history: the objective of each configuration (mean, seeds' range) "
                           "and the best so far", lambda: _history_figure(configs, mode))
    pruned = tuning.filter(pl.col(PRUNED).fill_null("") == FLAG) if PRUNED in tuning.columns else tuning.head(0)
    if pruned.is_empty():
        document.p("Pruned trials: none (ASHA stopped no tuning trial; held-out re-runs are never pruned).")
    else:
        document.p("Pruned trials (ASHA, tuning phase only; a configuration with a pruned seed is PRUNED in Optuna "
                   "and cannot be a cell's best): " + ", ".join(
                       f"{row['run_name']} ({row['cell'] or 'all'}, Optuna trial {row[TRIAL]}, seed {row['seed']})"
                       for row in pruned.sort("run_name").iter_rows(named=True)))
    out: dict[str, Any] = {"metric": metric, "mode": mode, "seeds": seeds,
                           "budget": budget.to_dicts(), "configurations": configs.to_dicts(),
                           "pruned_runs": pruned["run_name"].to_list()}
    ratio = best_ratio(runs, metric, mode)
    if ratio is not None:
        out["best_ratio"] = ratio
        document.p(f"Best mixing ratio: data.generation_ratio = {ratio['ratio']:.3f} (Optuna trial {ratio['trial']}, "
                   f"mean {metric} {ratio['objective']:.4f} over {ratio['seeds']} seeds); 95% bootstrap interval of the "
                   f"best ratio over seeds: [{ratio['ci_low']:.3f}, {ratio['ci_high']:.3f}] "
                   f"({ratio['configurations']} configurations).")
        draw("ratio", "The objective against the mixing ratio: each configuration's mean over its seeds, with the "
                      "seeds' range", lambda: _ratio_figure(configs, ratio))
    comparison = tuned_vs_untuned(runs)
    if comparison:
        out["tuned_vs_untuned"] = comparison
        document.p("Tuned against untuned, both on the held-out seeds: each arm's best configuration (tuned) and "
                   "its untuned configuration (the searched keys at their defaults), paired by seed.")
        document.table(pl.DataFrame([{
            "result": row["result"], "comparison": row["comparison"], "metric": row["metric"],
            "tuned": _ci(row["tuned"], row["tuned_ci"]), "tuned verdict": row["tuned_verdict"],
            "untuned": _ci(row["untuned"], row["untuned_ci"]), "untuned verdict": row["untuned_verdict"] or "-",
            "seeds": row["seeds"]} for row in comparison]), "The finding, tuned vs untuned (95% intervals over seeds)")
    return _finite_or_none(out)


def _finite_or_none(value: Any) -> Any:
    """NaN (e.g. no interval from one seed) as null, so tuning.json is strict JSON like findings.json."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def _ci(value: float | None, interval: tuple) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    low, high = interval
    if low is None or not math.isfinite(low):
        return f"{value:+.4f}"
    return f"{value:+.4f} [{low:+.4f}, {high:+.4f}]"


def _history_figure(configs: pl.DataFrame, mode: str):
    import matplotlib.pyplot as plt

    cells = configs["cell"].unique(maintain_order=True).to_list()
    figure, axis = plt.subplots(figsize=(7, 4))
    for cell in cells:
        rows = configs.filter(pl.col("cell") == cell).sort("trial")
        x, mean = rows["trial"].to_numpy(), rows["mean"].to_numpy().astype(float)
        low, high = rows["min"].to_numpy().astype(float), rows["max"].to_numpy().astype(float)
        line = axis.errorbar(x, mean, yerr=[mean - low, high - mean], fmt="o", capsize=3, label=cell or "all")
        finite = np.where(np.isfinite(mean), mean, -np.inf if mode == "max" else np.inf)
        best = np.maximum.accumulate(finite) if mode == "max" else np.minimum.accumulate(finite)
        axis.step(x, np.where(np.isfinite(best), best, np.nan), where="post", color=line[0].get_color(), alpha=0.6)
    axis.set_xlabel("Optuna trial (configuration)")
    axis.set_ylabel("objective, mean over seeds")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _ratio_figure(configs: pl.DataFrame, ratio: dict[str, Any]):
    import matplotlib.pyplot as plt

    rows = configs.filter((pl.col("state") == "complete") & (pl.col("cell") == ratio["cell"])).sort(RATIO_KEY)
    x = rows[RATIO_KEY].cast(pl.Float64).to_numpy()
    mean, low, high = (rows[c].to_numpy().astype(float) for c in ("mean", "min", "max"))
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.errorbar(x, mean, yerr=[mean - low, high - mean], fmt="o", capsize=3, label="configuration (seeds' range)")
    if math.isfinite(ratio["ci_low"]):
        axis.axvspan(ratio["ci_low"], ratio["ci_high"], alpha=0.15, label="best ratio, 95% interval over seeds")
    axis.axvline(ratio["ratio"], linestyle="--", label=f"best ratio {ratio['ratio']:.2f}")
    axis.set_xlabel("data.generation_ratio (generation images per understanding image)")
    axis.set_ylabel(ratio["metric"])
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


__all__ = ["best_ratio", "configurations", "finding_runs", "is_tuned", "section", "tuned_vs_untuned", "stats"]
