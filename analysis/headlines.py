"""Declared headline results: a space file's `headlines:` (trainables.headline_schema.Headline) computed from the
runs frame and the evaluations logged along each run.

Each statistic reduces the sweep to paired per-seed numbers, then to a mean over seeds with the
interval of analysis.stats.bootstrap_mean (so every headline's interval narrows as seeds are added,
and its power follows from the SD of those per-seed numbers):

    end     treatment − control on the final evaluation, paired by seed (and every other design factor)
    auc     the same on each run's area under its learning curve: the mean of the metric over a common
            grid of fractions of the run's budget (each run's evaluations interpolated onto it)
    trend   the paired difference at each grid fraction, then each seed's OLS slope of it against
            ln(fraction of the budget); equal to the slope against ln(records seen), since the records
            a run has seen are its fraction times a constant (the paper's data axis: checkpoints at
            10%, 20%, ... of one epoch)
    slope   each seed's OLS slope of (treatment − control) against the values of `against`
    did     (treatment − control) at the first level of `across` minus at the second, per seed

A slope or did reduces each run to its final evaluation (`per_run: end`) or to its area under the learning
curve (`per_run: auc`); the report's statistic-choice table gives both, with the half-width and seeds each needs.
A slope may leave out the control: a seed's control is the same at every x, so it does not change the slope.

Gates (analysis.stats.gate): each arm the headline compares (treatment and control; the four cells of a did; the
treatment at each value of a slope's x axis) is reduced to the mean of its runs' final values of the metric. Where
an arm is at or below the metric's constant-answer baseline (trainables.mlflow_names.baseline_of) plus the declared
learned_margin, or at or above the declared ceiling, the headline gets no verdict.

Where the declarations come from: analysis.sweep.from_parent reads them off a sweep's parent run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from analysis import stats
from analysis.pairing import DERIVED, design_keys, difference_in_differences, mean_difference, paired, prepare
from analysis.results import TARGET_HALF_WIDTH, InsufficientData, Result, apply_gates, make_result
from trainables.errors import UserError
from trainables.headline_schema import Direction, Headline, PerRun, Statistic
from trainables.mlflow_names import FINISHED, Metric, baseline_of
from trainables.selection import matches

MAX_GRID = 10
"""Fractions of the budget on the common grid (the paper's 10%, 20%, ..., 100%) at most."""
TREATMENT, CONTROL = "_treatment", "_control"


@dataclass
class Declared:
    """One declared headline's result, the per-fraction curve it came from (trend), and the end-vs-AUC rows."""

    result: Result
    curve: pl.DataFrame | None = None
    choice: list[dict[str, Any]] = field(default_factory=list)


def parse(record: dict[str, Any] | None) -> dict[str, Headline] | None:
    """Declarations as written in trial_table.json or a space file; None when there are none."""
    if not record:
        return None
    try:
        return {name: Headline.model_validate(value) for name, value in record.items()}
    except Exception as error:  # a pydantic ValidationError, shown as one line
        raise UserError(f"the sweep's headline declarations are not valid: {str(error).splitlines()[0]}") from None


def declared_results(runs: pl.DataFrame, history: pl.DataFrame | None,
                     headlines: dict[str, Headline]) -> dict[int, list[Declared]]:
    """Each declared headline computed (or a result without an estimate that says why), grouped by finding."""
    prepared = prepare(runs)
    out: dict[int, list[Declared]] = {}
    for name, headline in headlines.items():
        try:
            declared = compute(prepared, history, name, headline)
        except InsufficientData as error:
            empty = stats.Estimate(math.nan, math.nan, math.nan, 0, 0, math.nan)
            declared = Declared(make_result(headline.finding, name, headline.metric, _comparison(headline), empty,
                                        "not computed", _sign(headline), {}, headline=True, note=str(error),
                                        statistic=headline.statistic.value,
                                        smallest_effect=headline.smallest_effect))
        out.setdefault(headline.finding, []).append(declared)
    return out


def compute(prepared: pl.DataFrame, history: pl.DataFrame | None, name: str, headline: Headline) -> Declared:
    """One declared headline on a prepared runs frame (analysis.pairing.prepare)."""
    statistic = headline.statistic
    frame = _mark(prepared, headline.treatment, headline.control)
    keys = design_keys(prepared)
    metric = headline.metric
    per_run = _PER_RUN_TEXT[headline.per_run] if statistic in _PER_RUN_STATISTICS else ""
    test = f"{_TESTS[statistic]}{per_run}; 95% interval: expanded percentile bootstrap over seeds " \
           f"({stats.RESAMPLES} resamples), widened to the t-interval over per-seed values where wider"
    curve = None
    choice: list[dict[str, Any]] = []
    if statistic == Statistic.TREND:
        if history is None or history.is_empty():
            raise InsufficientData("statistic trend needs the metric's evaluations along each run (load_history)")
        curve = benefit_curve(frame, history, metric, keys)
        estimate = stats.bootstrap_seed_slope(np.log(curve["fraction"].to_numpy()), curve["difference"].to_numpy(),
                                              curve["seed"].to_numpy())
        label = statistic.value
    else:
        chosen = PerRun.AUC if statistic == Statistic.AUC or headline.per_run == PerRun.AUC else PerRun.END
        columns = {PerRun.END: metric}
        if history is not None and not history.is_empty():
            try:
                areas = run_areas(frame.filter(pl.col(TREATMENT) | pl.col(CONTROL)), history, metric)
                frame = frame.join(areas.rename({"value": f"metrics.{metric}@auc"}), on="run_id", how="left")
                columns[PerRun.AUC] = f"{metric}@auc"
            except InsufficientData:
                if chosen == PerRun.AUC:
                    raise
        if chosen not in columns:
            raise InsufficientData("the area under the learning curve needs the metric's evaluations along each run "
                                   "(load_history)")
        estimates = {reduction: _estimate(frame, column, headline, keys) for reduction, column in columns.items()}
        estimate, label = estimates[chosen], _choice_label(statistic, chosen)
        choice = [{"headline": name, "metric": metric, "statistic": _choice_label(statistic, reduction),
                   "estimate": e.estimate, "sd_paired": e.seed_sd, "half_width": (e.ci_high - e.ci_low) / 2,
                   "seeds": e.n_seeds, "chosen": reduction == chosen,
                   "seeds_for_target": stats.seeds_for_half_width(e.seed_sd, TARGET_HALF_WIDTH)}
                  for reduction, e in estimates.items()]
    result = make_result(headline.finding, name, metric, _comparison(headline), estimate, test, _sign(headline), {},
                     headline=True, note=headline.description, statistic=label,
                     smallest_effect=headline.smallest_effect)
    result = apply_gates(result, *arm_means(frame, headline), headline.learned_margin, headline.ceiling)
    return Declared(result, curve, choice)


def arm_means(frame: pl.DataFrame, headline: Headline) -> tuple[dict[str, float], dict[str, float]]:
    """({arm: mean final value of the metric}, {arm: mean of its constant-answer baseline}) over the finished runs
    of each arm the headline compares (module docstring); an arm without runs, or a metric without a logged
    baseline, is left out."""
    column, baseline = f"metrics.{headline.metric}", baseline_of(headline.metric)
    floor = f"metrics.{baseline}" if baseline else None
    if column not in frame.columns:
        return {}, {}
    done = frame.filter((pl.col("status") == FINISHED) & pl.col(column).is_not_null() & pl.col(column).is_not_nan())
    means, floors = {}, {}
    for label, selection in _compared_arms(done, headline):
        runs = done.filter(_selected(done, selection))
        if runs.is_empty():
            continue
        means[label] = float(runs[column].mean())
        if floor in runs.columns and (values := runs[floor].drop_nulls().drop_nans()).len():
            floors[label] = float(values.mean())
    return means, floors


def _compared_arms(done: pl.DataFrame, headline: Headline) -> list[tuple[str, dict[str, Any]]]:
    """(label, selection) of each arm the headline compares."""
    sides = [headline.treatment, *([headline.control] if headline.control is not None else [])]
    if headline.statistic == Statistic.DID:
        (key, levels), = headline.across.items()
        cells = [{**side, key: level} for level in levels for side in sides]
    elif headline.statistic == Statistic.SLOPE:
        treated = done.filter(_selected(done, headline.treatment))
        xs = sorted(treated[f"params.{headline.against}"].unique().to_list()) if headline.against else []
        cells = [{**headline.treatment, headline.against: x} for x in xs] + sides[1:]
    else:
        cells = sides
    return [(", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in cell.items()), cell) for cell in cells]


def _estimate(frame: pl.DataFrame, column: str, headline: Headline, keys: list[str]) -> stats.Estimate:
    """The headline's estimate with each run reduced to `column` (its end metric or its area under the curve)."""
    if headline.statistic in (Statistic.END, Statistic.AUC):
        return mean_difference(paired(frame, column, {TREATMENT: True}, {CONTROL: True}, keys))
    if headline.statistic == Statistic.DID:
        return _did(frame, column, headline, keys)
    x = f"params.{headline.against}"
    if x not in frame.columns:
        raise InsufficientData(f"{headline.against!r} was not logged by the runs of this sweep")
    if headline.control is None:  # the per-seed slope of the treatment runs' own values
        pairs = treated(frame, column)
    else:
        unmatched = tuple(k for k, sources in DERIVED.items() if x in sources) + (x,)
        pairs = paired(frame, column, {TREATMENT: True}, {CONTROL: True}, keys, unmatched=unmatched)
    pairs = pairs.join(frame.select("run_id", pl.col(x).cast(pl.Float64).alias("_x")), on="run_id", how="left")
    return stats.bootstrap_seed_slope(pairs["_x"].to_numpy(), pairs["difference"].to_numpy(), pairs["seed"].to_numpy())


def treated(frame: pl.DataFrame, metric: str) -> pl.DataFrame:
    """The finished treatment runs' values of `metric` as a 'difference' column (a slope needs no control)."""
    column = f"metrics.{metric}"
    if column not in frame.columns:
        raise InsufficientData(f"metric {metric!r} was not logged by any run of this sweep")
    runs = frame.filter(pl.col(TREATMENT) & (pl.col("status") == FINISHED) & pl.col(column).is_not_null()
                        & pl.col(column).is_not_nan())
    if runs.is_empty():
        raise InsufficientData(f"no finished treatment run has a value of {metric!r}")
    return runs.select("seed", "run_id", pl.col(column).alias("difference"))


def _choice_label(statistic: Statistic, reduction: PerRun) -> str:
    """'end' / 'auc' for a plain difference; 'slope' / 'slope (auc)' etc. for the others."""
    if statistic in (Statistic.END, Statistic.AUC):
        return reduction.value
    return statistic.value if reduction == PerRun.END else f"{statistic.value} ({reduction.value})"


# ----------------------------------------------------------------------------- curves along each run

def run_curves(prepared: pl.DataFrame, history: pl.DataFrame, metric: str,
               runs: list[str] | None = None) -> pl.DataFrame:
    """Each finished run's metric on a common grid of budget fractions: columns run_id, fraction, value.

    A run's fraction of an evaluation is its step over the run's last evaluated step. The grid has K points
    k/K, K the fewest evaluations of any run here (at most MAX_GRID); each run is interpolated linearly.
    """
    ids = runs if runs is not None else prepared.filter(pl.col("status") == FINISHED)["run_id"].to_list()
    points = (history.filter((pl.col("metric") == metric) & pl.col("run_id").is_in(ids) & pl.col("value").is_not_nan())
              .sort("timestamp").group_by("run_id", "step").agg(pl.col("value").last()).sort("run_id", "step"))
    if points.is_empty():
        raise InsufficientData(f"no evaluation of {metric!r} was logged along the runs")
    counts = points.group_by("run_id").len()
    k = int(min(counts["len"].min(), MAX_GRID))
    if k < 2:
        raise InsufficientData(f"a run has {k} evaluation of {metric!r}: a curve needs at least 2 (eval.every_steps)")
    grid = np.arange(1, k + 1) / k
    rows = []
    for (run_id,), run in points.group_by("run_id"):
        steps, values = run["step"].to_numpy().astype(float), run["value"].to_numpy()
        fractions = steps / steps.max()
        interpolated = np.interp(grid, fractions, values)
        # No extrapolation before the first evaluation, beyond a rounding of every_steps (145 of 723 steps is 0.2006)
        interpolated[grid < fractions.min() - 0.25 / k] = np.nan
        rows += [(run_id, float(f), float(v)) for f, v in zip(grid, interpolated)]
    return pl.DataFrame(rows, schema={"run_id": pl.String, "fraction": pl.Float64, "value": pl.Float64}, orient="row")


def run_areas(prepared: pl.DataFrame, history: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Each finished run's area under its learning curve: its mean on run_curves' grid. Columns run_id, value."""
    return run_curves(prepared, history, metric).group_by("run_id").agg(pl.col("value").mean())


def benefit_curve(frame: pl.DataFrame, history: pl.DataFrame, metric: str, keys: list[str]) -> pl.DataFrame:
    """Paired treatment − control at each grid fraction: seed, keys, run_id, fraction, records, difference."""
    curves = run_curves(frame.filter(pl.col(TREATMENT) | pl.col(CONTROL)), history, metric)
    records = _control_records(frame, history)
    tables = []
    for fraction in sorted(curves["fraction"].unique().to_list()):
        column = f"{metric}@{fraction:.4f}"
        at = frame.join(curves.filter(pl.col("fraction") == fraction).select("run_id", pl.col("value").alias(f"metrics.{column}")),
                        on="run_id", how="left")
        pairs = paired(at, column, {TREATMENT: True}, {CONTROL: True}, keys)
        tables.append(pairs.with_columns(pl.lit(fraction).alias("fraction"), pl.lit(metric).alias("metric"),
                                         pl.lit(fraction * records if records else None, pl.Float64).alias("records")))
    return pl.concat(tables, how="diagonal_relaxed")


def _control_records(frame: pl.DataFrame, history: pl.DataFrame) -> float | None:
    """Records the control runs have seen at the end (median of train/samples at their last evaluation)."""
    control = frame.filter(pl.col(CONTROL) & (pl.col("status") == FINISHED))["run_id"].to_list()
    samples = history.filter((pl.col("metric") == Metric.TRAIN_SAMPLES) & pl.col("run_id").is_in(control))
    if samples.is_empty():
        return None
    return float(samples.sort("step").group_by("run_id").agg(pl.col("value").last())["value"].median())


# ----------------------------------------------------------------------------- helpers

_TESTS = {
    Statistic.END: "mean paired difference of the final evaluation; p: t-test on per-seed means",
    Statistic.AUC: "mean paired difference of each run's mean over its evaluations on a common grid of budget "
                   "fractions (area under the learning curve); p: t-test on per-seed means",
    Statistic.TREND: "mean over seeds of each seed's OLS slope of the paired difference against ln(fraction of the "
                     "budget) = ln(records seen) + constant; p: t-test on per-seed slopes",
    Statistic.SLOPE: "mean over seeds of each seed's OLS slope of the paired difference against the declared factor; "
                     "p: t-test on per-seed slopes",
    Statistic.DID: "mean over seeds of (paired difference at the first level − at the second level); p: t-test on "
                   "per-seed differences",
}


_PER_RUN_STATISTICS = (Statistic.SLOPE, Statistic.DID)
_PER_RUN_TEXT = {PerRun.END: "", PerRun.AUC: "; each run contributes the mean of its evaluations on a common grid of "
                                             "budget fractions (area under its learning curve)"}


def _sign(headline: Headline) -> int:
    return +1 if headline.expected == Direction.POSITIVE else -1


def _text(selection: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in selection.items())


def _comparison(headline: Headline) -> str:
    runs = ", each run's mean over its evaluations" if headline.per_run == PerRun.AUC else ""
    if headline.control is None:
        return f"per-seed slope of ({_text(headline.treatment)}) per unit {headline.against}{runs}"
    base = f"({_text(headline.treatment)}) − ({_text(headline.control)})"
    if headline.statistic == Statistic.END:
        return f"{base}, final evaluation"
    if headline.statistic == Statistic.AUC:
        return f"{base}, mean over the evaluations along each run"
    if headline.statistic == Statistic.TREND:
        return f"per-seed slope of {base} per unit ln(records seen)"
    if headline.statistic == Statistic.SLOPE:
        return f"per-seed slope of {base} per unit {headline.against}{runs}"
    (key, (first, second)), = headline.across.items()
    return f"{base} at {key}={first} minus at {key}={second}{runs}"


def _selected(frame: pl.DataFrame, selection: dict[str, Any]) -> pl.Series:
    mask = np.ones(frame.height, bool)
    for key, wanted in selection.items():
        column = f"params.{key}"
        if column not in frame.columns:
            raise InsufficientData(f"{key!r} was not logged by the runs of this sweep")
        mask &= np.array([matches(value, wanted) for value in frame[column].to_list()], bool)
    return pl.Series(mask)


def _mark(prepared: pl.DataFrame, treatment: dict[str, Any], control: dict[str, Any] | None) -> pl.DataFrame:
    controls = _selected(prepared, control) if control is not None else pl.Series([False] * prepared.height)
    return prepared.with_columns(_selected(prepared, treatment).alias(TREATMENT), controls.alias(CONTROL))


def _did(frame: pl.DataFrame, metric: str, headline: Headline, keys: list[str]) -> stats.Estimate:
    (key, levels), = headline.across.items()
    per_level = []
    for level in levels:
        at = _selected(frame, {key: level})
        marked = frame.with_columns(pl.col(TREATMENT) & at, pl.col(CONTROL) & at)
        per_level.append(paired(marked, metric, {TREATMENT: True}, {CONTROL: True}, keys))
    return difference_in_differences(*per_level, keys, f"{key}={levels[0]} and {key}={levels[1]}")
