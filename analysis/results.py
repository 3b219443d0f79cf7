"""What a finding is made of: typed `Result`s (estimate, 95% interval, n, test, p value, verdict, power), grouped
in a `FindingReport`, and `InsufficientData` when a sweep lacks what a finding needs.

`make_result` turns an estimate over seeds (analysis.stats) into a Result with its verdict against the paper's
direction and its power; `apply_gates` withholds a headline's verdict where its arms have not learned or are saturated
(analysis.stats.gate); `finish` labels a report's results: headline ones keep their verdicts, every other one is
exploratory, its p value Holm-adjusted within its finding. `correct_as_family` then judges the headline results of
a sweep (or of several, the demo's) as one family: each verdict at its p value Holm-adjusted over all of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import polars as pl

from analysis import stats
from trainables.errors import UserError
from trainables.headline_schema import DEFAULT_SMALLEST_EFFECT

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
    """Exploratory results: Holm-adjusted within the finding; headline results: Holm-adjusted over the family of
    headline results judged together (correct_as_family), the p value itself until then."""
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
    smallest_effect: float = DEFAULT_SMALLEST_EFFECT
    """δ, the smallest effect that matters (the headline's declaration): an interval inside ±δ is "equivalent"."""
    arm_means: dict[str, float] = field(default_factory=dict)
    """Declared headlines: each compared arm's mean final value of the metric (what the gates read)."""
    floor: float = math.nan
    """The metric's constant-answer baseline, its mean over the compared runs (nan: the metric has none)."""
    learned_margin: float = 0.0
    """How far above the floor every arm must be (the headline's declaration)."""
    ceiling: float | None = None
    """The declared ceiling (None: no check)."""

    @property
    def gated(self) -> bool:
        """No verdict because an arm sat at its floor or at the ceiling (analysis.stats.gate)."""
        return self.verdict in stats.GATED

    @property
    def direction(self) -> int:
        """The paper's direction as a sign: +1 or -1."""
        return +1 if self.expected == "> 0" else -1

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


def make_result(finding: int, name: str, metric: str, comparison: str, estimate: stats.Estimate, test: str,
            direction: int, group: dict[str, Any] | None = None, headline: bool = False, note: str = "",
            statistic: str = "mean", smallest_effect: float = DEFAULT_SMALLEST_EFFECT) -> Result:
    verdict, withheld = _verdict(estimate.ci_low, estimate.ci_high, direction, smallest_effect, estimate.n_seeds,
                                 estimate.p_value)
    note = "; ".join(n for n in (note, withheld) if n)
    notes = "; ".join(n for n in (note, estimate.note) if n)
    half = float(estimate.ci_high - estimate.ci_low) / 2
    return Result(finding=finding, name=name, metric=metric, comparison=comparison, estimate=estimate.estimate,
                  ci_low=estimate.ci_low, ci_high=estimate.ci_high, n=estimate.n, n_seeds=estimate.n_seeds, test=test,
                  p_value=estimate.p_value, expected="> 0" if direction > 0 else "< 0",
                  verdict=verdict, note=notes, group=group or {}, headline=headline,
                  role=HEADLINE if headline else EXPLORATORY, p_adjusted=estimate.p_value, statistic=statistic,
                  sd_paired=estimate.seed_sd, half_width=half if math.isfinite(half) else math.nan,
                  mde_80=stats.minimum_detectable_effect(estimate.seed_sd, estimate.n_seeds),
                  seeds_for_target=stats.seeds_for_half_width(estimate.seed_sd, TARGET_HALF_WIDTH),
                  smallest_effect=smallest_effect)


def _verdict(low: float, high: float, direction: int, smallest_effect: float, n_seeds: int,
             p: float) -> tuple[str, str]:
    """(verdict, why none was given): stats.verdict, withheld (inconclusive) below MIN_SEEDS_FOR_VERDICT seeds."""
    verdict = stats.verdict(low, high, direction, smallest_effect, p)
    if n_seeds < MIN_SEEDS_FOR_VERDICT and verdict != stats.INCONCLUSIVE:
        return stats.INCONCLUSIVE, f"{n_seeds} seeds: too few for a verdict (at least {MIN_SEEDS_FOR_VERDICT} needed)"
    return verdict, ""


def apply_gates(result: Result, arm_means: dict[str, float], floors: dict[str, float], learned_margin: float = 0.0,
          ceiling: float | None = None) -> Result:
    """The result with the arms' means and floor it was checked against, and without a verdict where a compared arm
    sits at or below its floor + learned_margin or at or above the ceiling (analysis.stats.gate)."""
    verdict, why = stats.gate(arm_means, floors, learned_margin, ceiling)
    floor = sum(floors.values()) / len(floors) if floors else math.nan
    checked = replace(result, arm_means=arm_means, floor=floor, learned_margin=learned_margin, ceiling=ceiling)
    if verdict is None:
        return checked
    return replace(checked, verdict=verdict, note="; ".join(n for n in (why, result.note) if n), p_adjusted=math.nan)


def finish(report: FindingReport) -> FindingReport:
    """Label the report's results: headline ones keep their verdicts; the others become exploratory, with p values
    Holm-adjusted over the finding's exploratory results (idempotent: it can run again after a demotion)."""
    exploratory = [i for i, r in enumerate(report.results) if not r.headline]
    adjusted = stats.holm([report.results[i].p_value for i in exploratory])
    for i, p in zip(exploratory, adjusted):
        report.results[i] = replace(report.results[i], role=EXPLORATORY, verdict=EXPLORATORY, p_adjusted=float(p))
    for i, r in enumerate(report.results):
        if r.headline:
            report.results[i] = replace(r, role=HEADLINE)
    return report


def correct_as_family(reports: list[FindingReport]) -> None:
    """Judge the headline results of these reports as one family, in place: each verdict at its p value
    Holm-adjusted over every headline result that has one, so that the chance of any verdict without an effect
    behind it stays at stats.ALPHA however many headlines there are (idempotent). A gated headline (below baseline,
    at ceiling) has no verdict to correct and stays out of the family."""
    places = [(report, i) for report in reports for i, r in enumerate(report.results) if r.headline and not r.gated]
    adjusted = stats.holm([report.results[i].p_value for report, i in places])
    for (report, i), p in zip(places, adjusted):
        r = report.results[i]
        verdict, _ = _verdict(r.ci_low, r.ci_high, r.direction, r.smallest_effect, r.n_seeds, float(p))
        report.results[i] = replace(r, verdict=verdict, p_adjusted=float(p))


def family_sentence(headlines: list[Result]) -> str:
    """The one line that says how a family of headline verdicts was corrected."""
    n = sum(math.isfinite(r.p_value) for r in headlines if not r.gated)
    gated = sum(r.gated for r in headlines)
    left_out = (f"; {gated} headline{'s' if gated != 1 else ''} below baseline or at ceiling, without a verdict, "
                "left out" if gated else "")
    return (f"Verdicts corrected as one family: Holm over {n} headline{'s' if n != 1 else ''} "
            f"(family-wise error {stats.ALPHA:.0%}){left_out}.")
