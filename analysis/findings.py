"""The study's three findings (shared/STUDY.md) as functions of a runs frame (`analysis.frames.load_runs`).

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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from analysis import stats
from analysis.frames import factor_names
from trainables.errors import UserError
from trainables.mlflow_names import ATTRIBUTES, Metric, factor_tag, overall, per_attribute

UNDERSTANDING_METRICS = (overall(Metric.VQA), *per_attribute(Metric.VQA), Metric.CAPTION)
GENERATION_METRICS = (overall(Metric.GEN_PROBE), *per_attribute(Metric.GEN_PROBE), Metric.GEN_COSINE,
                      Metric.GEN_TOKEN_ACCURACY, Metric.GEN_FRECHET)
LOWER_IS_BETTER = frozenset({Metric.GEN_FRECHET})
"""Metrics where a benefit is a decrease (a distance): their expected sign is flipped."""
HIDDEN_METRIC = overall(Metric.VQA_HIDDEN)
OTHER_ATTRIBUTES = f"{Metric.VQA_HIDDEN}/other_attributes"
"""Derived here: mean accuracy over the attributes of hidden images that the hide rule does not name."""
FINISHED = "FINISHED"
MIN_SEEDS_FOR_VERDICT = 3
"""With 2 seeds any interval rests on two numbers (zero width when they agree): no verdict."""
TARGET_HALF_WIDTH = 0.02
"""The 95% half-width (natural scale of the statistic) that `seeds_for_target` is computed for."""
HEADLINE, EXPLORATORY = "headline", "exploratory"
TITLES = {1: ("Mutual benefit", "Mixed training beats understanding-only on understanding and generation-only on "
                                "generation; the benefit grows with data."),
          2: ("Alignment matters", "The better aligned the understanding input space and the generation output space, "
                                   "the larger the cross-task benefit."),
          3: ("Transfer lives in the language model", "Knowledge that appears only in generation data shows up in "
                                                      "understanding answers, and it passes through the LM, not only "
                                                      "the adapters.")}

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


class InsufficientData(UserError):
    """The sweep lacks an arm, factor or metric that a finding needs."""


@dataclass(frozen=True)
class Result:
    """One effect: estimate, 95% interval over seeds, and the verdict against the paper's direction."""

    finding: int
    name: str
    metric: str
    comparison: str
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    """Paired observations (differences, or points of a correlation)."""
    n_seeds: int
    test: str
    p_value: float
    expected: str
    """The paper's direction: '> 0' or '< 0'."""
    verdict: str
    note: str = ""
    group: dict[str, Any] = field(default_factory=dict)
    """What the result is restricted to, e.g. {'attribute': 'time'} or {'size': 500}."""
    headline: bool = False
    role: str = EXPLORATORY
    """headline (gets a verdict) or exploratory (verdict 'exploratory', Holm-adjusted p)."""
    p_adjusted: float = math.nan
    """Exploratory results: Holm-adjusted within the finding; headline results: the p value itself."""
    statistic: str = ""
    """How one number per seed was formed: end, auc, trend, slope, did, or the finding's own (mean, spearman)."""
    sd_paired: float = math.nan
    """SD over seeds of the per-seed paired effect."""
    half_width: float = math.nan
    """Half the 95% interval's width."""
    mde_80: float = math.nan
    """Smallest |effect| a two-sided 5% t-test over the seeds run detects with 80% power."""
    seeds_for_target: int | None = None
    """Seeds for a 95% half-width of TARGET_HALF_WIDTH at the observed SD (None: not computable)."""

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class FindingReport:
    finding: int
    title: str
    claim: str
    results: list[Result] = field(default_factory=list)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)

    @property
    def headlines(self) -> list[Result]:
        return [r for r in self.results if r.headline]


# ----------------------------------------------------------------------------- preparation

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


def _result(finding: int, name: str, metric: str, comparison: str, estimate: stats.Estimate, test: str,
            direction: int, group: dict[str, Any] | None = None, headline: bool = False, note: str = "",
            statistic: str = "mean") -> Result:
    verdict = stats.verdict(estimate.ci_low, estimate.ci_high, direction)
    if estimate.n_seeds < MIN_SEEDS_FOR_VERDICT and verdict != stats.INCONCLUSIVE:
        verdict = stats.INCONCLUSIVE
        note = "; ".join(n for n in (note, f"{estimate.n_seeds} seeds: too few for a verdict "
                                           f"(at least {MIN_SEEDS_FOR_VERDICT} needed)") if n)
    notes = "; ".join(n for n in (note, estimate.note) if n)
    half = float(estimate.ci_high - estimate.ci_low) / 2
    return Result(finding=finding, name=name, metric=metric, comparison=comparison, estimate=estimate.estimate,
                  ci_low=estimate.ci_low, ci_high=estimate.ci_high, n=estimate.n, n_seeds=estimate.n_seeds, test=test,
                  p_value=estimate.p_value, expected="> 0" if direction > 0 else "< 0",
                  verdict=verdict, note=notes, group=group or {}, headline=headline,
                  role=HEADLINE if headline else EXPLORATORY, p_adjusted=estimate.p_value, statistic=statistic,
                  sd_paired=estimate.seed_sd, half_width=half if math.isfinite(half) else math.nan,
                  mde_80=stats.minimum_detectable_effect(estimate.seed_sd, estimate.n_seeds),
                  seeds_for_target=stats.seeds_for_half_width(estimate.seed_sd, TARGET_HALF_WIDTH))


def finish(report: FindingReport) -> FindingReport:
    """Label the report's results: headline ones keep their verdicts; the others become exploratory, with p values
    Holm-adjusted over the finding's exploratory results (idempotent: it can run again after a demotion)."""
    exploratory = [i for i, r in enumerate(report.results) if not r.headline]
    adjusted = stats.holm([report.results[i].p_value for i in exploratory])
    for i, p in zip(exploratory, adjusted):
        report.results[i] = replace(report.results[i], role=EXPLORATORY, verdict=EXPLORATORY, p_adjusted=float(p))
    for i, r in enumerate(report.results):
        if r.headline:
            report.results[i] = replace(r, role=HEADLINE, p_adjusted=r.p_value)
    return report


def _mean(pairs: pl.DataFrame) -> stats.Estimate:
    return stats.bootstrap_mean(pairs["difference"].to_numpy(), pairs["seed"].to_numpy())


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
    if "mixed" not in arms or not arms & {"understanding", "generation"}:
        raise InsufficientData(f"finding {report.finding} needs finished runs of the mixed arm and of understanding "
                               f"or generation; this sweep has: {', '.join(sorted(arms)) or 'no finished runs'}")
    return prepared, arms, design_keys(prepared)


# ----------------------------------------------------------------------------- finding 1

def mutual_benefit(runs: pl.DataFrame) -> FindingReport:
    """Mixed minus understanding-only (understanding metrics) and mixed minus generation-only (generation metrics)."""
    report = FindingReport(1, *TITLES[1])
    prepared, arms, keys = _start_cross_task(runs, report)
    _common_limits(prepared, report)
    for side, metrics in (("understanding", UNDERSTANDING_METRICS), ("generation", GENERATION_METRICS)):
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
                pairs = paired(prepared, metric, {"arm": "mixed"}, {"arm": side}, keys)
            except InsufficientData as error:
                report.skipped.append(f"{metric}: {error}.")
                continue
            tables.append(pairs)
            attribute = metric.rsplit("/", 1)[-1]
            direction = -1 if metric in LOWER_IS_BETTER else +1
            report.results.append(_result(1, f"{side} benefit", metric, comparison, _mean(pairs),
                                          _test_text("mean", pairs), direction, {"attribute": attribute},
                                          headline=metric == primary))
            if metric != primary:
                continue
            _size_results(report, pairs, side, metric, comparison, keys)
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
        report.results.append(_result(1, f"{side} benefit by data size", metric, comparison, _mean(subset),
                                      _test_text("mean", pairs), +1, {"size": size}))
    clean = pairs.filter(pl.col("size").is_not_null() & (pl.col("size") > 0))
    slope = stats.bootstrap_slope(np.log(clean["size"].to_numpy()), clean["difference"].to_numpy(), clean["seed"].to_numpy())
    report.results.append(_result(1, f"{side} benefit trend with data size", metric,
                                  f"slope of ({comparison}) per unit ln(train images)", slope,
                                  _test_text("slope", pairs), +1, {"trend": "ln(size)"}, headline=True))


# ----------------------------------------------------------------------------- finding 2

def alignment(runs: pl.DataFrame) -> FindingReport:
    """The cross-task benefit against alignment: affine strength (expected negative) and matched encoder/space pairs."""
    report = FindingReport(2, *TITLES[2])
    prepared, arms, keys = _start_cross_task(runs, report)
    if "strength" not in keys and "pair" not in keys:
        raise InsufficientData("finding 2 needs an alignment factor: the sweep varies neither "
                               "alignment.affine_strength nor the understanding.encoder/generation.space pair")
    _common_limits(prepared, report)
    for side, metrics in (("understanding", UNDERSTANDING_METRICS), ("generation", GENERATION_METRICS)):
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
            pairs = paired(prepared, metric, {"arm": "mixed"}, {"arm": side}, keys, unmatched=single_level)
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
                report.results.append(_result(2, f"{side} benefit by {factor}", metric, comparison, _mean(subset),
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
            report.results.append(_result(2, f"{side} benefit slope against {label}", metric,
                                          f"per-seed slope of ({comparison}), {per_unit}",
                                          stats.bootstrap_seed_slope(x, y, seeds), _test_text("seed_slope", pairs),
                                          direction, {"factor": factor}, headline=True, statistic="slope"))
            rho = stats.bootstrap_spearman(x, y, seeds)
            report.results.append(_result(2, f"{side} benefit vs {label}", metric,
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
    if "mixed" not in arms:
        raise InsufficientData(f"finding 3 needs finished runs of the mixed arm; this sweep has: {', '.join(sorted(arms))}")
    _common_limits(prepared, report)
    keys = design_keys(prepared)
    hidden = prepared.filter(pl.col("hidden"))
    freezings = set(hidden.filter(pl.col("status") == FINISHED)["freezing"].to_list())
    main = {"freezing": "none"} if "none" in freezings and len(freezings) > 1 else {}
    hidden, own = _hidden_attribute_columns(hidden)
    metrics = [HIDDEN_METRIC, *(f"test/vqa_hidden/{a}" for a in own),
               *([OTHER_ATTRIBUTES] if f"metrics.{OTHER_ATTRIBUTES}" in hidden.columns else []),
               *(f"test/vqa_hidden/{a}" for a in ATTRIBUTES if a not in own and f"metrics.test/vqa_hidden/{a}" in hidden.columns)]
    _hidden_levels(report, hidden, own)
    comparisons = [("transfer over control", {"arm": "mixed", "hide_control": False}, {"arm": "mixed", "hide_control": True},
                    "mixed − mixed control (hidden images lose their generation records too)"),
                   ("transfer over understanding-only", {"arm": "mixed", "hide_control": False},
                    {"arm": "understanding", "hide_control": False}, "mixed − understanding-only")]
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
            report.results.append(_result(3, name, metric, comparison, _mean(pairs), _test_text("mean", pairs), +1,
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
    others = [f"metrics.test/vqa_hidden/{a}" for a in ATTRIBUTES if a not in own and f"metrics.test/vqa_hidden/{a}" in hidden.columns]
    if others:
        hidden = hidden.with_columns(pl.mean_horizontal(others).alias(f"metrics.{OTHER_ATTRIBUTES}"))
    return hidden, own


def _hidden_levels(report: FindingReport, hidden: pl.DataFrame, own: list[str]) -> None:
    """Accuracy on the hidden value itself, per condition: a level, not a difference (chance is about 1/3)."""
    done = hidden.filter(pl.col("status") == FINISHED)
    for attribute in own:
        column = f"metrics.test/vqa_hidden/{attribute}"
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
            report.results.append(_result(3, f"accuracy on the hidden value ({attribute})", f"test/vqa_hidden/{attribute}",
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
            pairs = paired(hidden, HIDDEN_METRIC, {"arm": "mixed", "hide_control": False, "freezing": label},
                           {"arm": "mixed", "hide_control": True, "freezing": label}, keys)
        except InsufficientData as error:
            report.skipped.append(f"Transfer with freezing={label} is not computed: {error}.")
            continue
        per_label[label] = pairs
        expected = "under the paper's claim this is near zero" if label == "lm_frozen" else ""
        report.results.append(_result(3, f"transfer over control, freezing={label}", HIDDEN_METRIC,
                                      "mixed − mixed control", _mean(pairs), _test_text("mean", pairs), +1,
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
    report.results.append(_result(3, "transfer lives in the LM", HIDDEN_METRIC,
                                  f"transfer with {who} − transfer with the LM frozen", _mean(both),
                                  _test_text("mean", both), +1, {"contrast": f"{learner} − lm_frozen"}, headline=True,
                                  statistic="did"))


def all_findings(runs: pl.DataFrame, history: pl.DataFrame | None = None,
                 headlines: dict[str, Any] | None = None) -> dict[int, FindingReport | str]:
    """Each finding's report, or the sentence saying why the sweep cannot address it.

    `headlines` (name -> trainables.headline_schema.Headline, as declared in the space file): when given, only those are
    headline results (analysis.headlines computes them, with `history` for auc and trend) and every default
    headline of the findings becomes exploratory. None: the findings' default headlines.
    """
    out: dict[int, FindingReport | str] = {}
    for number, function in ((1, mutual_benefit), (2, alignment), (3, transfer)):
        try:
            out[number] = function(runs)
        except InsufficientData as error:
            out[number] = str(error)
    if headlines:
        from analysis.headlines import declared_results

        for report in out.values():  # only declared headlines get verdicts, in every finding
            if isinstance(report, FindingReport):
                report.results[:] = [replace(r, headline=False) for r in report.results]
                finish(report)
        for number, declared in declared_results(runs, history, headlines).items():
            report = out.get(number)
            if not isinstance(report, FindingReport):
                report = FindingReport(number, *TITLES[number])
                report.skipped.append(f"The finding's own analysis is not computed: {out.get(number)}")
                out[number] = report
            report.results[:0] = [d.result for d in declared]
            for d in declared:
                if d.curve is not None:
                    report.tables[f"headline_{d.result.name.replace(' ', '_').replace('-', '_')}_curve"] = d.curve
            choice = [row for d in declared for row in d.choice]
            if choice:
                report.tables["headline_statistic_choice"] = pl.DataFrame(choice)
            finish(report)
    return out
