"""The space file's schema: one YAML file per study, its sections as pydantic models.

A space file says which runs a study needs. Its parts:

  study           the study's name (MLflow tag `uvlm.study`)
  base            optional TrainConfig YAML the runs start from (relative to the space file)
  fixed           dotted TrainConfig keys -> values, the same in every run (a factor level may override one)
  factors         ablation factors, crossed exhaustively; each is either a dotted key with a
                  list of values, or a named factor whose levels set several keys together
  seeds           a list of seeds, or a count N meaning 0..N-1; every cell runs every seed
  search          hyperparameters Optuna samples (uniform, loguniform, int, categorical),
                  conditional ones with `when`, and `samples`: Optuna trials (configurations) per
                  cell, each scored on every seed (Optuna is told the mean over the seeds)
  holdout         after tuning, each cell's best configuration re-runs on these seeds, which
                  tuning never saw (never pruned); optionally the untuned configuration too
  objective       the metric Optuna and ASHA optimise, and its direction
  resources       per trial: Train workers, CPUs and GPUs per worker
  budget          concurrency and a time limit for the whole sweep
  early_stopping  ASHA on/off, grace period and reduction factor, in training steps
  headlines       the study's headline results: metric, treatment and control selections, the
                  paper's direction and the statistic; only these get verdicts in the report

Unknown keys are errors (`SpaceModel`: extra=forbid). What the schema cannot check alone, the keys against
TrainConfig and the metrics, is checked in search.space_checks; search.planner turns a file into a Plan.
"""

from __future__ import annotations

import enum
import math
from typing import Any

from pydantic import Field, field_validator, model_validator

from trainables import limits
from trainables.headline_schema import Headline, SpaceModel

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class DistributionKind(enum.StrEnum):
    UNIFORM = "uniform"  # float in [low, high]
    LOGUNIFORM = "loguniform"  # float in [low, high], sampled on a log scale (low > 0)
    INT = "int"  # integer in [low, high], optional step, optional log
    CATEGORICAL = "categorical"  # one of `choices`


class Mode(enum.StrEnum):
    MAX = "max"
    MIN = "min"


class SamplerKind(enum.StrEnum):
    TPE = "tpe"
    RANDOM = "random"


class Param(SpaceModel):
    """One searched hyperparameter."""

    type: DistributionKind
    """uniform | loguniform | int | categorical."""
    low: float | None = None
    high: float | None = None
    step: float | None = Field(default=None, gt=0)
    """Discretisation step (uniform, int)."""
    log: bool = False
    """int only: sample on a log scale."""
    choices: list[Any] | None = None
    """categorical only: the values to choose from (scalars)."""
    when: dict[str, Any] = Field(default_factory=dict)
    """Sample this parameter only when every named key has the given value (or one of a list)."""

    @model_validator(mode="after")
    def _fits_kind(self) -> Param:
        kind = self.type
        if kind == DistributionKind.CATEGORICAL:
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes `choices`, not `low`/`high`")
            bad = [choice for choice in self.choices if not isinstance(choice, (str, int, float, bool)) or choice is None]
            if bad:
                raise ValueError(f"categorical choices must be scalars (got {bad[0]!r})")
            return self
        if self.choices is not None:
            raise ValueError(f"`choices` belongs to categorical parameters, not {kind.value}")
        if self.low is None or self.high is None:
            raise ValueError(f"a {kind.value} parameter needs `low` and `high`")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"`low` must be below `high` (got low={self.low}, high={self.high})")
        if kind == DistributionKind.LOGUNIFORM and self.low <= 0:
            raise ValueError(f"a loguniform parameter needs low > 0 (got {self.low})")
        if kind == DistributionKind.INT:
            if self.low != int(self.low) or self.high != int(self.high):
                raise ValueError(f"an int parameter needs whole `low` and `high` (got {self.low}, {self.high})")
            if self.log and self.low < 1:
                raise ValueError(f"an int parameter with log: true needs low >= 1 (got {self.low})")
        elif self.log:
            raise ValueError("`log` is for int parameters; use type: loguniform for floats")
        if kind == DistributionKind.LOGUNIFORM and self.step is not None:
            raise ValueError("a loguniform parameter takes no `step`")
        return self

    def endpoints(self) -> list[Any]:
        """Values that bound what this parameter can take: used to validate them against TrainConfig."""
        if self.type == DistributionKind.CATEGORICAL:
            return list(self.choices)
        if self.type == DistributionKind.INT:
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def describe(self) -> str:
        if self.type == DistributionKind.CATEGORICAL:
            text = f"categorical{self.choices}"
        elif self.type == DistributionKind.INT:
            text = f"int[{int(self.low)}, {int(self.high)}]" + (" log" if self.log else "")
        else:
            text = f"{self.type.value}[{self.low:g}, {self.high:g}]"
        if self.when:
            text += " when " + ", ".join(f"{key}={value}" for key, value in self.when.items())
        return text


class Objective(SpaceModel):
    metric: str
    """A metric name of the trainable (docs/ARCHITECTURE.md), e.g. test/vqa/overall."""
    mode: Mode = Mode.MAX


class Search(SpaceModel):
    sampler: SamplerKind = SamplerKind.TPE
    seed: int = Field(default=0, ge=limits.SEED[0], le=limits.SEED[1])
    """Seeds the sampler; each cell's study adds its cell index."""
    multivariate: bool = True
    """TPE: model the searched parameters jointly (Optuna's multivariate TPE), not one at a time."""
    startup_trials: int = Field(default=10, ge=1, le=limits.SAMPLES[1])
    """TPE: random trials per cell before the model takes over."""
    samples: int = Field(default=1, ge=1, le=limits.SAMPLES[1])
    """Optuna trials per cell: each is one configuration, run on every seed of `seeds` (paired), and
    Optuna is told the mean of the objective over those seeds. The same budget for every cell (arm)."""
    params: dict[str, Param] = Field(default_factory=dict)
    """Dotted TrainConfig keys -> distributions, sampled in this order (define-by-run)."""


class Holdout(SpaceModel):
    """Fair per-cell tuning: the best configuration of each cell re-run on fresh seeds (no winner's curse)."""

    seeds: list[int]
    """Seeds tuning never saw; each cell's best configuration runs once on each, after every tuning trial ended."""
    untuned: bool = True
    """Also run each cell's untuned configuration (the searched keys at their defaults) on the same seeds,
    so the report compares the tuned finding with the untuned one, paired by seed."""

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("holdout.seeds must not be empty")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"holdout.seeds repeat a value (got {seeds})")
        return seeds


class Resources(SpaceModel):
    workers: int = Field(default=1, ge=1, le=limits.WORKERS[1])
    """Ray Train workers per trial (sets runtime.num_workers)."""
    cpus_per_worker: int = Field(default=1, ge=1, le=limits.WORKERS[1])
    """CPUs (and torch threads) per worker (sets runtime.threads_per_worker)."""
    gpus_per_worker: int = Field(default=0, ge=0, le=1)
    """0 or 1 (sets runtime.use_gpu)."""

    def per_trial(self) -> dict[str, int]:
        return {"CPU": self.workers * self.cpus_per_worker, "GPU": self.workers * self.gpus_per_worker}

    def overrides(self) -> dict[str, Any]:
        return {
            "runtime.num_workers": self.workers,
            "runtime.threads_per_worker": self.cpus_per_worker,
            "runtime.use_gpu": self.gpus_per_worker > 0,
        }


class Budget(SpaceModel):
    max_concurrent: int | None = Field(default=None, ge=1, le=limits.WORKERS[1])
    """Trials at once; default: as many as the cluster's CPUs and GPUs hold."""
    time_budget_s: float | None = Field(default=None, gt=0, le=limits.TIME_BUDGET_S[1])
    """Stop starting trials after this many seconds (running ones are stopped too)."""


class EarlyStopping(SpaceModel):
    enabled: bool = False
    """ASHA: stop tuning trials whose objective is in the bottom part at a rung, compared within their cell;
    held-out re-runs are never stopped."""
    grace_steps: int = Field(default=250, ge=1, le=limits.STEPS[1])
    """No trial is stopped before this many training steps."""
    reduction_factor: float = Field(default=3.0, gt=1, le=limits.FACTOR[1])


class SpaceFile(SpaceModel):
    study: str = Field(pattern=NAME_PATTERN)
    """The study's name, e.g. mixing (MLflow tag uvlm.study)."""
    description: str = ""
    base: str | None = None
    """TrainConfig YAML the runs start from, relative to the space file; None = the defaults."""
    fixed: dict[str, Any] = Field(default_factory=dict)
    factors: dict[str, list[Any] | dict[str, dict[str, Any]]] = Field(default_factory=dict)
    seeds: list[int] | int = Field(default_factory=lambda: [0])
    objective: Objective | None = None
    search: Search = Field(default_factory=Search)
    holdout: Holdout | None = None
    """Re-run each cell's best searched configuration on held-out seeds (needs search.params)."""
    resources: Resources = Field(default_factory=Resources)
    budget: Budget = Field(default_factory=Budget)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    headlines: dict[str, Headline] = Field(default_factory=dict)
    """Name -> declaration; none declared: the report falls back to its default headline set."""

    @field_validator("seeds")
    @classmethod
    def _seed_list(cls, seeds: list[int] | int) -> list[int]:
        if isinstance(seeds, int):
            if seeds < 1:
                raise ValueError("a seed count must be at least 1")
            if seeds > limits.SEEDS_PER_CELL[1]:
                raise ValueError(f"a seed count must be at most {limits.SEEDS_PER_CELL[1]}")
            return list(range(seeds))
        if not seeds:
            raise ValueError("seeds must not be empty")
        for seed in seeds:
            why = limits.problem(seed, limits.SEED)
            if why:
                raise ValueError(f"a seed {why} (got {seed})")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat a value (got {seeds})")
        return seeds

    @model_validator(mode="after")
    def _objective_when_needed(self) -> SpaceFile:
        if self.objective is None and (self.search.params or self.early_stopping.enabled):
            needs = "search.params" if self.search.params else "early_stopping.enabled"
            raise ValueError(f"{needs} needs an `objective` (metric and mode)")
        if self.search.samples > 1 and not self.search.params:
            raise ValueError("search.samples > 1 repeats identical runs: add search.params or use more seeds")
        if self.holdout is not None:
            if not self.search.params:
                raise ValueError("holdout re-runs the best searched configuration: it needs search.params")
            shared = sorted(set(self.holdout.seeds) & set(self.seeds))
            if shared:
                raise ValueError(f"holdout.seeds must be seeds tuning never saw; {shared} are also in `seeds`")
        return self


def searched_space(space: SpaceFile) -> dict[str, str]:
    """The searched parameters as text (key -> distribution): what an Optuna study of this sweep must match."""
    return {key: param.describe() for key, param in space.search.params.items()}
