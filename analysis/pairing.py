"""Pairing: a treatment run against the control run(s) of the same seed and the same values of every other design
factor, on a runs frame (analysis.frames.load_runs).

`prepare` adds design columns derived from the parameters they summarise (data size, affine strength,
encoder/space pair, hiding, freezing); `design_keys` names the columns that identify a cell apart from arm and
seed; `paired` gives treatment minus matched control per seed, `difference_in_differences` one table of pairs minus
another per seed. A factor whose values differ between the two sides
(e.g. a generation ratio that only the mixed arm varies) is not matched on: each of its treatment values is paired
with the control. Only FINISHED runs are paired.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from analysis import stats
from analysis.frames import factor_names
from analysis.results import InsufficientData
from trainables.mlflow_names import FINISHED, factor_tag

# Design columns derived once in `prepare` from the parameters they summarise.
DERIVED = {
    "size": ("params.data.train_images",),
    "strength": ("params.alignment.affine_strength",),
    "pair": ("params.understanding.encoder", "params.generation.space"),
    "hidden": ("params.data.hide_from_understanding",),
    "hide_control": ("params.data.hide_control",),
    "freezing": ("params.lm.trainability", "params.trainability.understanding_projector",
                 "params.trainability.generation_projector"),
}


def prepare(runs: pl.DataFrame) -> pl.DataFrame:
    """Add the derived design columns: size, strength, pair, matched, hide_control, hidden, freezing."""
    def col(name: str, default: Any = None, dtype: Any = None) -> pl.Expr:
        if name in runs.columns:
            return pl.col(name)
        return pl.lit(default, dtype)

    size = col("params.data.train_images", None, pl.Int64).cast(pl.Float64)
    if "params.data.generate_train_images" in runs.columns:  # None = all images of the dataset
        size = size.fill_null(pl.col("params.data.generate_train_images").cast(pl.Float64))
    encoder = col("params.understanding.encoder", "?", pl.String).cast(pl.String)
    space = col("params.generation.space", "?", pl.String).cast(pl.String)
    hide_rules = col("params.data.hide_from_understanding", None, pl.String).cast(pl.String)
    lm = col("params.lm.trainability", "full", pl.String).cast(pl.String)
    adapters_frozen = ((col("params.trainability.understanding_projector", "train", pl.String) == "frozen")
                       & (col("params.trainability.generation_projector", "train", pl.String) == "frozen"))
    return runs.with_columns(
        size.alias("size"),
        col("params.alignment.affine_strength", 0.0, pl.Float64).cast(pl.Float64).fill_null(0.0).alias("strength"),
        pl.concat_str([encoder, pl.lit("→"), space]).alias("pair"),
        ((space == "same") | (encoder == space)).alias("matched"),
        col("params.data.hide_control", False, pl.Boolean).cast(pl.Boolean).fill_null(False).alias("hide_control"),
        (hide_rules.is_not_null() & ~hide_rules.is_in(["[]", "", "()"])).alias("hidden"),
        pl.when(lm == "frozen").then(pl.lit("lm_frozen"))
        .when(adapters_frozen).then(pl.lit("adapters_frozen"))
        .otherwise(pl.lit("none")).alias("freezing"),
    )


def design_keys(prepared: pl.DataFrame) -> list[str]:
    """Columns that identify a cell apart from arm and seed: derived ones that vary, then other crossed factors."""
    done = prepared.filter(pl.col("status") == FINISHED)
    keys = [name for name in DERIVED if done[name].n_unique() > 1]
    covered = {source for name in DERIVED for source in DERIVED[name]} | {"params.data.arm"}
    for factor in factor_names(prepared):
        column = f"params.{factor}" if f"params.{factor}" in prepared.columns else f"tags.{factor_tag(factor)}"
        if column not in covered and column not in keys:
            keys.append(column)
    return keys


def shared_levels(left: pl.DataFrame, right: pl.DataFrame, keys: list[str]) -> list[str]:
    """Keys present in both tables with the same set of values: what two tables of pairs can be joined on (a named
    factor whose labels also encode the contrast, e.g. condition=hidden vs hidden-lm-frozen, is left out)."""
    return [k for k in keys if k in left.columns and k in right.columns
            and set(left[k].to_list()) == set(right[k].to_list())]


def _describe(selection: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('params.')}={v}" for k, v in selection.items())


def _select(frame: pl.DataFrame, selection: dict[str, Any]) -> pl.DataFrame:
    for column, value in selection.items():
        frame = frame.filter(pl.col(column).is_in(value) if isinstance(value, list | tuple) else pl.col(column) == value)
    return frame


def paired(prepared: pl.DataFrame, metric: str, treatment: dict[str, Any], control: dict[str, Any],
           keys: list[str], unmatched: tuple[str, ...] = ()) -> pl.DataFrame:
    """Treatment minus matched control on a metric: columns seed, the keys, run_id, treatment, control, difference.

    Per key: equal value sets on both sides -> matched; the control's values a subset of the treatment's (e.g. only
    strength 0 in understanding-only) -> the treatment is restricted to them and matched; otherwise (values only one
    side has, or a key in `unmatched`) -> not matched, each treatment value pairs with the control.
    """
    column = f"metrics.{metric}"
    if column not in prepared.columns:
        raise InsufficientData(f"metric {metric!r} was not logged by any run of this sweep")
    usable = prepared.filter((pl.col("status") == FINISHED) & pl.col(column).is_not_null() & pl.col(column).is_not_nan())
    sides = {}
    for label, selection in (("treatment", treatment), ("control", control)):
        sides[label] = _select(usable, selection)
        if sides[label].is_empty():
            arms = ", ".join(sorted(prepared["arm"].drop_nulls().unique().to_list())) or "none"
            raise InsufficientData(f"no finished run with {_describe(selection)} and a value of {metric!r} "
                                   f"(arms among the runs considered: {arms})")
    keys = [k for k in keys if k not in treatment and k not in control]
    shared = []
    for key in keys:
        treated, controls = set(sides["treatment"][key].to_list()), set(sides["control"][key].to_list())
        if key in unmatched or not controls <= treated:
            continue
        if controls != treated:
            sides["treatment"] = sides["treatment"].filter(pl.col(key).is_in(list(controls)))
        shared.append(key)
    control_mean = sides["control"].group_by([*shared, "seed"]).agg(pl.col(column).mean().alias("control"))
    joined = (sides["treatment"].select(*keys, "seed", "run_id", pl.col(column).alias("treatment"))
              .join(control_mean, on=[*shared, "seed"], how="inner", nulls_equal=True))
    if joined.is_empty():
        raise InsufficientData(f"no pair of finished runs with {_describe(treatment)} and {_describe(control)} "
                               f"share a seed and cell on {metric!r}")
    return (joined.with_columns((pl.col("treatment") - pl.col("control")).alias("difference"),
                                pl.lit(metric).alias("metric"), pl.lit(",".join(["seed", *shared])).alias("matched_on"))
            .sort("seed", *keys))


def mean_difference(pairs: pl.DataFrame) -> stats.Estimate:
    """The mean paired difference over seeds, with its interval (analysis.stats.bootstrap_mean)."""
    return stats.bootstrap_mean(pairs["difference"].to_numpy(), pairs["seed"].to_numpy())


def difference_in_differences(first: pl.DataFrame, second: pl.DataFrame, keys: list[str], what: str) -> stats.Estimate:
    """Per seed (and shared cell), the mean paired difference of `first` minus that of `second` (two `paired` tables,
    e.g. the effect at one level of a factor and at another), with its interval over seeds; `what` names the two
    sides for the error raised when no seed has both."""
    on = ["seed", *shared_levels(first, second, [k for k in keys if k in first.columns])]
    means = [table.group_by(on).agg(pl.col("difference").mean().alias(f"d{i}")) for i, table in enumerate((first, second))]
    both = means[0].join(means[1], on=on, how="inner", nulls_equal=True)
    if both.is_empty():
        raise InsufficientData(f"no seed has pairs at both {what}")
    return stats.bootstrap_mean((both["d0"] - both["d1"]).to_numpy(), both["seed"].to_numpy())
