"""The headline schema: what a space file's `headlines:` section declares (the results a study exists to estimate).

Declared in a space file and checked against the study's cells by search.space_checks; written into the sweep's
trial table (trainables.mlflow_names.TRIAL_TABLE), read back by analysis.sweep and computed by analysis.headlines.
Both select runs with trainables.selection.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


DEFAULT_SMALLEST_EFFECT = 0.02
"""The smallest effect that matters for the accuracy-like scores (0–1) of this project: two points."""


class SpaceModel(BaseModel):
    """A space-file section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Direction(enum.StrEnum):
    POSITIVE = "positive"  # the paper expects the statistic above zero
    NEGATIVE = "negative"


class Statistic(enum.StrEnum):
    """How a headline turns runs into one number per seed (analysis/headlines.py computes each)."""

    END = "end"  # treatment - control on the final evaluation
    AUC = "auc"  # treatment - control on the mean over evaluation points (area under the learning curve)
    TREND = "trend"  # slope of (treatment - control) against ln(records seen), from the evaluations along each run
    SLOPE = "slope"  # slope of (treatment - control) against the values of `against` (e.g. affine strength)
    DID = "did"  # (treatment - control) at the first level of `across` minus at the second


class PerRun(enum.StrEnum):
    """What one run contributes to a slope or difference in differences."""

    END = "end"  # its final evaluation
    AUC = "auc"  # the mean of its evaluations on a common grid of budget fractions


class Headline(SpaceModel):
    """A declared headline result: the effect the study exists to estimate, with the paper's direction."""

    finding: int = Field(ge=1, le=3)
    """The finding of docs/STUDY.md (1 mixing, 2 alignment, 3 transfer) the result belongs to."""
    metric: str
    """A metric name of the trainable (docs/ARCHITECTURE.md), e.g. test/vqa/overall."""
    treatment: dict[str, Any] = Field(min_length=1)
    """Dotted TrainConfig keys -> value (or list of values) selecting the treatment runs, e.g. {data.arm: mixed}."""
    control: dict[str, Any] | None = Field(default=None, min_length=1)
    """The same for the control runs; each treatment run is paired with the control of its seed (and cell).
    Optional for statistic: slope only: a seed's control is the same at every value of `against`, so it shifts the
    seed's benefit without changing its slope (declared, it is subtracted and the report shows the benefit levels)."""
    expected: Direction = Direction.POSITIVE
    """The paper's direction of the statistic."""
    statistic: Statistic = Statistic.END
    """end | auc | trend | slope | did (see Statistic)."""
    per_run: PerRun = PerRun.END
    """slope and did: what each run contributes, its final evaluation (end) or the mean of its evaluations along
    the budget (auc, the area under its learning curve). For a plain difference, `statistic: end` or `auc` says it."""
    against: str | None = None
    """slope only: the dotted key whose values are the x axis, e.g. alignment.affine_strength."""
    across: dict[str, list[Any]] | None = None
    """did only: one dotted key and two values; the result is the effect at the first minus at the second."""
    smallest_effect: float = Field(default=DEFAULT_SMALLEST_EFFECT, gt=0)
    """δ, the smallest effect that matters, in the statistic's own units (score points for end and auc; per unit of
    the x axis for trend and slope): an interval inside (−δ, +δ) is the verdict "equivalent", no effect beyond ±δ."""
    learned_margin: float = Field(default=0.0, ge=0)
    """How far above the metric's constant-answer baseline (trainables.mlflow_names.baseline_of) every compared arm's
    mean final value must be for the headline to get a verdict; at or below it the verdict is "below baseline". E.g.
    0.1 for arms that must answer, not just beat the constant answers by a hair."""
    ceiling: float | None = None
    """In the metric's units: a compared arm whose mean final value is at or above it leaves the headline without a
    verdict ("at ceiling": a benefit read there measures saturation). None: no check."""
    description: str = ""

    @model_validator(mode="after")
    def _fits_statistic(self) -> Headline:
        if self.control is None and self.statistic != Statistic.SLOPE:
            raise ValueError("`control` is required (only statistic: slope may leave it out)")
        if self.per_run != PerRun.END and self.statistic not in (Statistic.SLOPE, Statistic.DID):
            raise ValueError("`per_run` is for statistic: slope or did; for a plain difference on the area under the "
                             "learning curve write statistic: auc")
        if (self.statistic == Statistic.SLOPE) != (self.against is not None):
            raise ValueError("`against` (the x axis) is required by statistic: slope and taken by no other statistic")
        if (self.statistic == Statistic.DID) != (self.across is not None):
            raise ValueError("`across` ({key: [first, second]}) is required by statistic: did and taken by no other")
        if self.across is not None and (len(self.across) != 1 or len(next(iter(self.across.values()))) != 2):
            raise ValueError("`across` names one key with two values: the effect at the first minus at the second")
        return self

    def keys(self) -> list[str]:
        """Every dotted config key the declaration names."""
        return [*self.treatment, *(self.control or {}), *([self.against] if self.against else []), *(self.across or {})]
