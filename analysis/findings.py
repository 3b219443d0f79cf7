"""The study's three findings (docs/STUDY.md) as functions of a runs frame (`analysis.frames.load_runs`).

Each function returns a `FindingReport`: typed `Result`s (estimate, 95% interval,
n, test, p-value, verdict), the paired-difference tables they were computed
from, sentences naming what could not be computed and why (`skipped`), and the
limits of the evidence. Only FINISHED runs enter an estimate; failed runs are
counted in the limits. A missing arm or metric raises `InsufficientData` (a
UserError) naming what is missing and what the sweep has.

Headline and exploratory: a space file may declare its headline results (analysis/headlines.py
computes them); then only those get verdicts. Without declarations each finding marks its own
default headlines. Every other result is exploratory: its verdict is "exploratory" and its p
value is Holm-adjusted within its finding (`finish`). Headline results carry their power: the SD
of the per-seed paired effect, the effect detectable at 80% power with the seeds run and the
seeds a 95% half-width of TARGET_HALF_WIDTH needs.

Pairing: a treatment run is compared with the control run(s) of the same seed
and the same values of every other design factor (data size, affine strength,
encoder/space pair, hide control, freezing, and any other crossed factor). A
factor whose values differ between the two sides (e.g. a generation ratio that
only the mixed arm varies) is not matched on: each of its treatment values is
paired with the control. Intervals come from resampling seeds (analysis.stats).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import polars as pl

from analysis import stats
from analysis.pairing import design_keys, difference_in_differences, mean_difference, paired, prepare, shared_levels
from analysis.results import TITLES, FindingReport, InsufficientData, finish, make_result
from trainables.config import Arm
from trainables.mlflow_names import ATTRIBUTES, FINISHED, Metric, overall, per_attribute

UNDERSTANDING_METRICS = (overall(Metric.VQA), *per_attribute(Metric.VQA), Metric.CAPTION)
GENERATION_METRICS = (overall(Metric.GEN_PROBE), *per_attribute(Metric.GEN_PROBE), Metric.GEN_COSINE,
                      Metric.GEN_TOKEN_ACCURACY, Metric.GEN_FRECHET)
LOWER_IS_BETTER = frozenset({Metric.GEN_FRECHET})
"""Metrics where a benefit is a decrease (a distance): their expected sign is flipped."""
PRETRAINED_LM, RANDOM_LM = "pretrained LM", "random LM"
"""Runs with lm.pretraining.steps > 0 (or an lm.pretrained_path), and runs whose LM starts from random weights."""
HIDDEN_METRIC = overall(Metric.VQA_HIDDEN)
OTHER_ATTRIBUTES = f"{Metric.VQA_HIDDEN}/other_attributes"
"""Derived here: mean accuracy over the attributes of hidden images that the hide rule does not name."""


def _test_text(kind: str, pairs: pl.DataFrame) -> str:
    matched = ", ".join(k.removeprefix("params.") for k in pairs["matched_on"][0].split(","))
    what = {"mean": "mean paired difference; p: t-test on per-seed means",
            "slope": "OLS slope of the paired difference on ln(train images); p: t-test on per-seed slopes",
            "seed_slope": "mean over seeds of each seed's OLS slope of the paired difference; p: t-test on the "
                          "per-seed slopes",
            "spearman": "Spearman rank correlation; p: scipy's test on all points"}[kind]
    widened = "the t-interval over per-seed estimates" + (" and the Fisher-z interval on all points" if kind == "spearman" else "")
    return (f"{what}; matched on {matched}; 95% interval: expanded percentile bootstrap over seeds "
            f"({stats.RESAMPLES} resamples), widened to {widened} where wider")


def _common_limits(prepared: pl.DataFrame, report: FindingReport) -> None:
    counts = dict(prepared.group_by("status").len().iter_rows())
    not_finished = {k: v for k, v in counts.items() if k != FINISHED}
    if not_finished:
        listed = ", ".join(f"{v} {k.lower()}" for k, v in sorted(not_finished.items()))
        report.limits.append(f"{listed} of {prepared.height} runs left out (only finished runs enter an estimate)")
    seeds = prepared.filter(pl.col("status") == FINISHED)["seed"].n_unique()
    if seeds < 5:
        report.limits.append(f"{seeds} seed{'s' if seeds != 1 else ''}: intervals over so few seeds are wide and indicative")


def _arms(prepared: pl.DataFrame) -> set[str]:
    return set(prepared.filter(pl.col("status") == FINISHED)["arm"].drop_nulls().to_list())


def _start_cross_task(runs: pl.DataFrame, report: FindingReport) -> tuple[pl.DataFrame, set[str], list[str]]:
    """Prepared frame, finished arms and design keys of a finding that compares mixed with single-task arms."""
    prepared = prepare(runs)
    arms = _arms(prepared)
    if Arm.MIXED not in arms or not arms & {Arm.UNDERSTANDING, Arm.GENERATION}:
        raise InsufficientData(f"finding {report.finding} needs finished runs of the mixed arm and of understanding "
                               f"or generation; this sweep has: {', '.join(sorted(arms)) or 'no finished runs'}")
    return prepared, arms, design_keys(prepared)


# ----------------------------------------------------------------------------- finding 1

def mutual_benefit(runs: pl.DataFrame) -> FindingReport:
    """Mixed minus understanding-only (understanding metrics) and mixed minus generation-only (generation metrics)."""
    report = FindingReport(1, *TITLES[1])
    prepared, arms, keys = _start_cross_task(runs, report)
    _common_limits(prepared, report)
    for side, metrics in ((Arm.UNDERSTANDING, UNDERSTANDING_METRICS), (Arm.GENERATION, GENERATION_METRICS)):
        if side not in arms:
            report.skipped.append(f"The {side} benefit is not computed: the sweep has no finished {side}-only runs.")
            continue
        available = [m for m in metrics if f"metrics.{m}" in prepared.columns]
        if not available:
            report.skipped.append(f"The {side} benefit is not computed: no {side} metric was logged.")
            continue
        primary = available[0]
        comparison = f"mixed − {side}-only"
        tables = []
        for metric in available:
            try:
                pairs = paired(prepared, metric, {"arm": Arm.MIXED}, {"arm": side}, keys)
            except InsufficientData as error:
                report.skipped.append(f"{metric}: {error}.")
                continue
            tables.append(pairs)
            attribute = metric.rsplit("/", 1)[-1]
            direction = -1 if metric in LOWER_IS_BETTER else +1
            report.results.append(make_result(1, f"{side} benefit", metric, comparison, mean_difference(pairs),
                                              _test_text("mean", pairs), direction, {"attribute": attribute},
                                              headline=metric == primary))
            if metric != primary:
                continue
            _size_results(report, pairs, side, metric, comparison, keys)
            _lm_results(report, prepared, pairs, side, metric, comparison, keys)
        if tables:
            report.tables[f"finding1_{side}_pairs"] = pl.concat(tables, how="diagonal_relaxed")
    return finish(report)


def _size_results(report: FindingReport, pairs: pl.DataFrame, side: str, metric: str, comparison: str,
                  keys: list[str]) -> None:
    if "size" not in pairs.columns or pairs["size"].n_unique() < 2:
        report.skipped.append(f"The trend of the {side} benefit with data size is not computed: the sweep has one data size.")
        return
    for size in sorted(pairs["size"].drop_nulls().unique().to_list()):
        subset = pairs.filter(pl.col("size") == size)
        report.results.append(make_result(1, f"{side} benefit by data size", metric, comparison, mean_difference(subset),
                                          _test_text("mean", pairs), +1, {"size": size}))
    clean = pairs.filter(pl.col("size").is_not_null() & (pl.col("size") > 0))
    slope = stats.bootstrap_slope(np.log(clean["size"].to_numpy()), clean["difference"].to_numpy(), clean["seed"].to_numpy())
    report.results.append(make_result(1, f"{side} benefit trend with data size", metric,
                                      f"slope of ({comparison}) per unit ln(train images)", slope,
                                      _test_text("slope", pairs), +1, {"trend": "ln(size)"}, headline=True))


def _lm_results(report: FindingReport, prepared: pl.DataFrame, pairs: pl.DataFrame, side: str, metric: str,
                comparison: str, keys: list[str]) -> None:
    """Exploratory, where the sweep has runs with the text-pretrained LM and with a random one (e.g. a factor over
    lm.pretraining.steps): the benefit with each, and their paired difference in differences over seeds."""
    steps, path = "params.lm.pretraining.steps", "params.lm.pretrained_path"
    if steps not in prepared.columns:
        return
    pretrained = pl.col(steps).cast(pl.Float64).fill_null(0.0) > 0
    if path in prepared.columns:
        pretrained = pretrained | ~(pl.col(path).is_null() | pl.col(path).cast(pl.String).is_in(["", "None"]))
    lm = prepared.select("run_id", pl.when(pretrained).then(pl.lit(PRETRAINED_LM)).otherwise(pl.lit(RANDOM_LM)).alias("lm"))
    labelled = pairs.join(lm, on="run_id", how="left")
    if labelled["lm"].n_unique() < 2:
        return
    sides = {label: labelled.filter(pl.col("lm") == label) for label in (PRETRAINED_LM, RANDOM_LM)}
    for label, subset in sides.items():
        report.results.append(make_result(1, f"{side} benefit by LM", metric, comparison, mean_difference(subset),
                                          _test_text("mean", pairs), +1, {"lm": label}))
    try:  # joined per seed on the keys both sides share (not lm.pretraining.steps, whose values differ)
        estimate = difference_in_differences(sides[PRETRAINED_LM], sides[RANDOM_LM], keys,
                                             f"{PRETRAINED_LM} and {RANDOM_LM}")
    except InsufficientData as error:
        report.skipped.append(f"The {side} benefit, {PRETRAINED_LM} − {RANDOM_LM}, is not computed: {error}.")
        return
    report.results.append(make_result(1, f"{side} benefit, {PRETRAINED_LM} − {RANDOM_LM}", metric,
                                      f"({comparison}) with the {PRETRAINED_LM} − with a {RANDOM_LM}", estimate,
                                      _test_text("mean", pairs).replace("mean paired difference", "mean over seeds of "
                                                                        "the paired difference in differences"),
                                      +1, {"lm": f"{PRETRAINED_LM} − {RANDOM_LM}"}, statistic="did"))


# ----------------------------------------------------------------------------- finding 2

def alignment(runs: pl.DataFrame) -> FindingReport:
    """The cross-task benefit against alignment: affine strength (expected negative) and matched encoder/space pairs."""
    report = FindingReport(2, *TITLES[2])
    prepared, arms, keys = _start_cross_task(runs, report)
    if "strength" not in keys and "pair" not in keys:
        raise InsufficientData("finding 2 needs an alignment factor: the sweep varies neither "
                               "alignment.affine_strength nor the understanding.encoder/generation.space pair")
    _common_limits(prepared, report)
    for side, metrics in ((Arm.UNDERSTANDING, UNDERSTANDING_METRICS), (Arm.GENERATION, GENERATION_METRICS)):
        metric = next((m for m in metrics if f"metrics.{m}" in prepared.columns), None)
        if side not in arms or metric is None:
            report.skipped.append(f"The {side} benefit against alignment is not computed: no finished {side}-only runs "
                                  f"or no {side} metric.")
            continue
        # The single-task arm need not vary alignment (an affine map on the generation space leaves
        # understanding-only unchanged): every alignment level of mixed then pairs with it.
        controls = prepared.filter((pl.col("arm") == side) & (pl.col("status") == FINISHED))
        single_level = tuple(f for f in ("strength", "pair") if controls[f].n_unique() == 1)
        try:
            pairs = paired(prepared, metric, {"arm": Arm.MIXED}, {"arm": side}, keys, unmatched=single_level)
        except InsufficientData as error:
            report.skipped.append(f"{side} benefit against alignment: {error}.")
            continue
        report.tables[f"finding2_{side}_pairs"] = pairs
        comparison = f"mixed − {side}-only"
        for factor, level, direction, label in (("strength", "strength", -1, "affine strength"),
                                                ("pair", "matched", +1, "matched encoder/space pair (1) vs not (0)")):
            if factor not in keys:
                report.skipped.append(f"The {side} benefit against {label} is not computed: the sweep does not vary it.")
                continue
            for value in sorted(pairs[factor].unique().to_list()):
                subset = pairs.filter(pl.col(factor) == value)
                report.results.append(make_result(2, f"{side} benefit by {factor}", metric, comparison, mean_difference(subset),
                                                  _test_text("mean", pairs), +1, {factor: value}))
            if factor == "pair":
                pairs = pairs.join(prepared.select("run_id", "matched"), on="run_id", how="left")
                if pairs["matched"].n_unique() < 2:
                    report.skipped.append(f"The {side} benefit against pair alignment is not computed: every pair "
                                          "is matched, or none is.")
                    continue
            x = pairs[level].cast(pl.Float64).to_numpy()
            y, seeds = pairs["difference"].to_numpy(), pairs["seed"].to_numpy()
            # Headline: each seed's own slope, averaged; unlike a rank correlation over few levels (each
            # seed's rho is ±1 with two), its interval narrows as seeds are added.
            per_unit = "per unit strength" if factor == "strength" else "matched (1) minus not (0)"
            report.results.append(make_result(2, f"{side} benefit slope against {label}", metric,
                                              f"per-seed slope of ({comparison}), {per_unit}",
                                              stats.bootstrap_seed_slope(x, y, seeds), _test_text("seed_slope", pairs),
                                              direction, {"factor": factor}, headline=True, statistic="slope"))
            rho = stats.bootstrap_spearman(x, y, seeds)
            report.results.append(make_result(2, f"{side} benefit vs {label}", metric,
                                              f"Spearman ρ of ({comparison}) with {label}", rho,
                                              _test_text("spearman", pairs), direction, {"factor": factor, "rank": "spearman"},
                                              statistic="spearman"))
    return finish(report)


# ----------------------------------------------------------------------------- finding 3

def transfer(runs: pl.DataFrame) -> FindingReport:
    """Accuracy on the value seen only in generation data, against its control and understanding-only; by freezing."""
    prepared = prepare(runs)
    report = FindingReport(3, *TITLES[3])
    if f"metrics.{HIDDEN_METRIC}" not in prepared.columns or not prepared["hidden"].any():
        raise InsufficientData(f"finding 3 needs runs with a data.hide_from_understanding rule and the metric "
                               f"{HIDDEN_METRIC!r}; this sweep has neither")
    arms = _arms(prepared)
    if Arm.MIXED not in arms:
        raise InsufficientData(f"finding 3 needs finished runs of the mixed arm; this sweep has: {', '.join(sorted(arms))}")
    _common_limits(prepared, report)
    keys = design_keys(prepared)
    hidden = prepared.filter(pl.col("hidden"))
    freezings = set(hidden.filter(pl.col("status") == FINISHED)["freezing"].to_list())
    main = {"freezing": "none"} if "none" in freezings and len(freezings) > 1 else {}
    hidden, own = _hidden_attribute_columns(hidden)
    metrics = [HIDDEN_METRIC, *(f"{Metric.VQA_HIDDEN}/{a}" for a in own),
               *([OTHER_ATTRIBUTES] if f"metrics.{OTHER_ATTRIBUTES}" in hidden.columns else []),
               *(f"{Metric.VQA_HIDDEN}/{a}" for a in ATTRIBUTES if a not in own and f"metrics.{Metric.VQA_HIDDEN}/{a}" in hidden.columns)]
    _hidden_levels(report, hidden, own)
    comparisons = [("transfer over control", {"arm": Arm.MIXED, "hide_control": False},
                    {"arm": Arm.MIXED, "hide_control": True},
                    "mixed − mixed control (hidden images lose their generation records too)"),
                   ("transfer over understanding-only", {"arm": Arm.MIXED, "hide_control": False},
                    {"arm": Arm.UNDERSTANDING, "hide_control": False}, "mixed − understanding-only")]
    for name, treatment, control, comparison in comparisons:
        tables = []
        for metric in metrics:
            try:
                pairs = paired(hidden, metric, {**treatment, **main}, {**control, **main}, keys)
            except InsufficientData as error:
                if metric == HIDDEN_METRIC:
                    report.skipped.append(f"The {name} is not computed: {error}.")
                break
            tables.append(pairs)
            note = "LM and adapters train" if main else ""
            report.results.append(make_result(3, name, metric, comparison, mean_difference(pairs), _test_text("mean", pairs), +1,
                                              {"attribute": metric.rsplit("/", 1)[-1], **main}, metric == HIDDEN_METRIC, note))
        if tables:
            report.tables[f"finding3_{name.replace(' ', '_').replace('-', '_')}"] = pl.concat(tables, how="diagonal_relaxed")
    _freezing_results(report, hidden, keys, freezings)
    return finish(report)


def _hidden_attribute_columns(hidden: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The attributes the hide rules name (their own accuracy: rainy images answered "raining"), and a derived
    column: the mean accuracy over the other attributes of hidden images."""
    rules = " ".join(str(v) for v in hidden["params.data.hide_from_understanding"].drop_nulls().unique().to_list()) \
        if "params.data.hide_from_understanding" in hidden.columns else ""
    own = [a for a in ATTRIBUTES if re.search(rf"\b{a}\s*=", rules)]
    others = [f"metrics.{Metric.VQA_HIDDEN}/{a}" for a in ATTRIBUTES if a not in own and f"metrics.{Metric.VQA_HIDDEN}/{a}" in hidden.columns]
    if others:
        hidden = hidden.with_columns(pl.mean_horizontal(others).alias(f"metrics.{OTHER_ATTRIBUTES}"))
    return hidden, own


def _hidden_levels(report: FindingReport, hidden: pl.DataFrame, own: list[str]) -> None:
    """Accuracy on the hidden value itself, per condition: a level, not a difference (chance is about 1/3)."""
    done = hidden.filter(pl.col("status") == FINISHED)
    for attribute in own:
        column = f"metrics.{Metric.VQA_HIDDEN}/{attribute}"
        if column not in done.columns:
            continue
        for (arm, control, freezing), group in sorted(done.group_by("arm", "hide_control", "freezing"),
                                                      key=lambda item: tuple(map(str, item[0]))):
            group = group.filter(pl.col(column).is_not_null() & pl.col(column).is_not_nan())
            if group.is_empty():
                continue
            condition = "control" if control else "hidden"
            # a level's p value (against zero) means nothing: nan keeps it out of the Holm family
            estimate = replace(stats.bootstrap_mean(group[column].to_numpy(), group["seed"].to_numpy()), p_value=math.nan)
            report.results.append(make_result(3, f"accuracy on the hidden value ({attribute})", f"{Metric.VQA_HIDDEN}/{attribute}",
                                              f"{arm}, {condition}: share of hidden test images whose {attribute} is "
                                              "answered with the hidden value (a level, not a difference)", estimate,
                                              "mean over runs; interval over seeds", +1,
                                              {"arm": arm, "condition": condition, "freezing": freezing}))


def _freezing_results(report: FindingReport, hidden: pl.DataFrame, keys: list[str], freezings: set[str]) -> None:
    if len(freezings) < 2:
        report.skipped.append(
            "LM-frozen versus adapters-frozen transfer is not computed: the sweep does not vary freezing "
            "(lm.trainability, trainability.*_projector). With the LM frozen, what a generation record trains (the "
            "head, the generation projector, the cell embeddings) and what an understanding answer reads (the "
            "understanding projector and the frozen LM) share no parameter (tests/test_model.py pins it), so the "
            "transfer with the LM frozen is zero by construction, up to the optimiser's coupling (global gradient "
            "clipping, the run's length): the transfer over control with the LM trained is already transfer through the LM.")
        return
    per_label = {}
    for label in sorted(freezings):
        try:
            pairs = paired(hidden, HIDDEN_METRIC, {"arm": Arm.MIXED, "hide_control": False, "freezing": label},
                           {"arm": Arm.MIXED, "hide_control": True, "freezing": label}, keys)
        except InsufficientData as error:
            report.skipped.append(f"Transfer with freezing={label} is not computed: {error}.")
            continue
        per_label[label] = pairs
        expected = "under the paper's claim this is near zero" if label == "lm_frozen" else ""
        report.results.append(make_result(3, f"transfer over control, freezing={label}", HIDDEN_METRIC,
                                          "mixed − mixed control", mean_difference(pairs), _test_text("mean", pairs), +1,
                                          {"freezing": label}, note=expected))
    report.tables["finding3_transfer_by_freezing"] = pl.concat(
        [p.with_columns(pl.lit(k).alias("freezing_label")) for k, p in per_label.items()], how="diagonal_relaxed") \
        if per_label else pl.DataFrame()
    learner = "none" if "none" in per_label else "adapters_frozen"  # the claim: LM trained vs LM frozen
    if "lm_frozen" not in per_label or learner not in per_label:
        report.skipped.append("The contrast LM-frozen versus adapters-frozen needs transfer pairs under both; "
                              f"available: {', '.join(sorted(per_label)) or 'none'}.")
        return
    on = ["seed", *shared_levels(per_label[learner], per_label["lm_frozen"],
                                 [k for k in keys if k not in ("freezing", "hide_control")])]
    both = per_label[learner].join(per_label["lm_frozen"].select(*on, pl.col("difference").alias("frozen_lm")),
                                   on=on, how="inner", nulls_equal=True)
    if both.is_empty():
        report.skipped.append("The contrast LM-frozen versus adapters-frozen has no seed with both.")
        return
    both = both.with_columns((pl.col("difference") - pl.col("frozen_lm")).alias("difference"),
                             pl.lit(",".join(on)).alias("matched_on"))
    who = "adapters frozen (LM trains)" if learner == "adapters_frozen" else "everything trains"
    report.results.append(make_result(3, "transfer lives in the LM", HIDDEN_METRIC,
                                      f"transfer with {who} − transfer with the LM frozen", mean_difference(both),
                                      _test_text("mean", both), +1, {"contrast": f"{learner} − lm_frozen"}, headline=True,
                                      statistic="did"))
