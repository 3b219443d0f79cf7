"""Space files: one YAML file per study, parsed once into a typed, validated plan.

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

`load_space(path)` checks everything that can be checked without compute and
returns a `Plan`: the cells, the slots (cell x seed x sample) in the order they
run, and the resolved TrainConfig of each. Errors are `UserError`s naming the
field, the bad value and the valid ones.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from trainables import limits
from trainables.budget import planned_steps
from trainables.config import TrainConfig, load_config, set_dotted
from trainables.errors import UserError, nearest, unknown_choice
from trainables.headline_schema import Direction, Headline, PerRun, SpaceModel, Statistic
from trainables.mlflow_names import cell_key, metric_names, scored_task
from trainables.selection import holds
from trainables.yamlfile import load_yaml, read_text, read_yaml

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# Config keys the space file sets through `resources:` (one place for what a trial occupies).
RESOURCE_KEYS = ("runtime.num_workers", "runtime.threads_per_worker", "runtime.use_gpu")
# Config fields holding filesystem paths: made absolute at the boundary, because Ray runs trials
# in other working directories (and on other nodes).
PATH_SUFFIXES = ("path", "_dir")


class DistributionKind(str, enum.Enum):
    UNIFORM = "uniform"  # float in [low, high]
    LOGUNIFORM = "loguniform"  # float in [low, high], sampled on a log scale (low > 0)
    INT = "int"  # integer in [low, high], optional step, optional log
    CATEGORICAL = "categorical"  # one of `choices`


class Mode(str, enum.Enum):
    MAX = "max"
    MIN = "min"


class SamplerKind(str, enum.Enum):
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


@dataclass(frozen=True)
class Cell:
    """One combination of factor levels."""

    index: int
    levels: tuple[tuple[str, str], ...]  # (factor name, level label), sorted by factor name
    overrides: dict[str, Any]  # dotted keys the levels set

    @property
    def key(self) -> str:
        """'data.arm=mixed;data.train_images=500' (MLflow tag uvlm.cell); '' for a study without factors."""
        return cell_key(self.levels)


class Phase(str, enum.Enum):
    """What a slot is for. Only tuning slots may be pruned; held-out ones never are."""

    TUNE = "tune"  # an Optuna configuration on one of `seeds` (every slot of a study without holdout)
    HOLDOUT = "holdout"  # a cell's best tuned configuration on one of holdout.seeds
    UNTUNED = "untuned"  # a cell's untuned configuration on one of holdout.seeds (the comparison)


@dataclass(frozen=True)
class Slot:
    """One trial to run: a cell, a seed and a sample index; searched values come at run time."""

    index: int
    cell: Cell
    seed: int
    sample: int
    overrides: dict[str, Any]  # fixed + factor levels + resources + seed (dotted keys), as written
    config: TrainConfig  # built from base + overrides once, relative paths made absolute (trials run elsewhere)
    phase: Phase = Phase.TUNE


@dataclass
class Plan:
    """A validated space file: everything a sweep needs before any compute."""

    path: Path
    text: str
    space: SpaceFile
    base: dict[str, Any]
    cells: list[Cell]
    slots: list[Slot]

    @property
    def study(self) -> str:
        return self.space.study

    @property
    def digest(self) -> str:
        """Identifies the plan, its text and its slots' order: a resumed sweep must use the same one (Tune's
        saved trials and the MLflow runs name a slot by its index)."""
        order = ";".join(f"{slot.phase.value}/{slot.sample}/{slot.seed}/{slot.cell.key}" for slot in self.slots)
        return hashlib.sha256(f"{self.text}\n{order}".encode()).hexdigest()[:16]

    def config(self, slot: Slot, searched: dict[str, Any] | None = None) -> TrainConfig:
        return slot.config.with_overrides(searched or {})

    def first_of_each_cell(self) -> list[Slot]:
        seen: dict[int, Slot] = {}
        for slot in self.slots:
            seen.setdefault(slot.cell.index, slot)
        return list(seen.values())

    def headlines_record(self) -> dict[str, dict[str, Any]]:
        """The declared headlines as JSON (trial_table.json key `headlines`; analysis.headlines reads it)."""
        return {name: headline.model_dump(mode="json") for name, headline in self.space.headlines.items()}

    def table(self) -> list[dict[str, Any]]:
        """The trial table: one row per slot, as it will run."""
        return [
            {"slot": slot.index, "cell": slot.cell.key, "seed": slot.seed, "sample": slot.sample,
             "phase": slot.phase.value, "overrides": slot.overrides}
            for slot in self.slots
        ]


def format_value(value: Any) -> str:
    """A factor value as it appears in tags and cell keys: YAML-like scalars, lists in brackets."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    return str(value)


def load_space(path: str | Path) -> Plan:
    """Parse and validate a space file; every slot's TrainConfig is built once here."""
    path = Path(path)
    text = read_text(path, "space file")
    tree = load_yaml(text, f"space file {str(path)!r}")
    if not isinstance(tree, dict):
        raise UserError(f"space file {str(path)!r} must hold a mapping (study, fixed, factors, seeds, ...)")
    try:
        space = SpaceFile.model_validate(tree)
    except ValidationError as error:
        raise _space_error(path, error) from None
    base = _load_base(path, space.base)
    _check_keys(path, space)
    n_cells = math.prod(len(levels) for levels in space.factors.values())
    trials = n_cells * len(space.seeds) * space.search.samples
    if trials > limits.TRIALS:  # checked before the trial table is built in memory
        raise UserError(f"space file {path.name}: {n_cells} cells x {len(space.seeds)} seeds x "
                        f"{space.search.samples} samples = {trials} trials; at most {limits.TRIALS} per sweep")
    cells = _cells(space)
    root = Path.cwd()
    # Tuning: every Optuna configuration (sample) of every cell on every seed; then the held-out re-runs.
    # A block (a sample's seed, or a held-out seed) ends before the next begins, so an interrupted sweep
    # leaves whole paired blocks; within a block the longest trials go first, so that trials running side
    # by side end together instead of one slot idling through the last long trial.
    order = [((Phase.TUNE, sample, seed), cell, Phase.TUNE) for sample, seed, cell in product(range(space.search.samples), space.seeds, cells)]
    if space.holdout is not None:
        phases = [Phase.HOLDOUT] + ([Phase.UNTUNED] if space.holdout.untuned else [])
        order += [((Phase.HOLDOUT, 0, seed), cell, phase) for seed, cell, phase in product(space.holdout.seeds, cells, phases)]
    planned = []
    for block, cell, phase in order:
        overrides = {**space.fixed, **cell.overrides, **space.resources.overrides(), "seed": block[2]}
        config = _slot_config(path, base, overrides, cell, root)
        planned.append((block, cell, phase, overrides, config, planned_steps(config)))
    blocks = {block: position for position, block in enumerate(dict.fromkeys(block for block, *_ in planned))}
    planned.sort(key=lambda entry: (blocks[entry[0]], -entry[5]))  # stable: file order among equals
    slots = [Slot(index=index, cell=cell, seed=block[2], sample=block[1], overrides=overrides, config=config, phase=phase)
             for index, (block, cell, phase, overrides, config, _) in enumerate(planned)]
    plan = Plan(path=path, text=text, space=space, base=base, cells=cells, slots=slots)
    _check_configs(plan)
    return plan


def _slot_config(path: Path, base: dict[str, Any], overrides: dict[str, Any], cell: Cell, root: Path) -> TrainConfig:
    try:
        config = load_config(base, overrides)
        return load_config(base, resolve_paths(overrides, config, root))
    except UserError as error:
        raise UserError(f"space file {path.name}: cell {cell.key or '(no factors)'}: {error}") from None


def resolve_paths(overrides: dict[str, Any], config: TrainConfig, root: Path) -> dict[str, Any]:
    """Overrides plus every relative path field of `config` made absolute against `root`."""
    resolved = dict(overrides)
    for key, value in config.flatten().items():
        if key.endswith(PATH_SUFFIXES) and isinstance(value, str) and value and not Path(value).is_absolute():
            resolved[key] = str((root / value).resolve())
    return resolved


def known_metrics() -> list[str]:
    """The trainable's metric names (trainables.mlflow_names)."""
    return metric_names()


def _space_error(path: Path, error: ValidationError) -> UserError:
    """The first problem as one line naming the field, the value and the valid choices."""
    problem = error.errors()[0]
    loc = [str(part) for part in problem["loc"]]
    where = ".".join(loc) or "file"
    value = problem.get("input")
    if problem["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        fields = list(model.model_fields)
        return UserError(f"space file {path.name}: unknown key {where!r}{nearest(loc[-1], fields)}; "
                         f"valid here: {', '.join(fields)}")
    if problem["type"] == "enum":
        enum_type = _enum_at(loc)
        if enum_type is not None:
            valid = [member.value for member in enum_type]
            return UserError(f"space file {path.name}: {unknown_choice(where, str(value), valid)}")
    if problem["type"] == "missing":
        return UserError(f"space file {path.name}: {where} is required")
    message = problem["msg"].removeprefix("Value error, ")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    return UserError(f"space file {path.name}: {where}: {message}{shown}")


def _model_at(parts: list[str]) -> type[BaseModel]:
    """The space-file section that a location such as ['search', 'params', 'optim.lr'] points into."""
    node: Any = SpaceFile
    for part in parts:
        if isinstance(node, type) and issubclass(node, BaseModel):
            node = node.model_fields[part].annotation
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        if typing.get_origin(node) in (typing.Union, types.UnionType):  # `Objective | None` -> Objective
            node = next(arg for arg in typing.get_args(node) if arg is not type(None))
    return node


def _enum_at(loc: list[str]) -> type[enum.Enum] | None:
    return {"type": DistributionKind, "mode": Mode, "sampler": SamplerKind, "expected": Direction,
            "statistic": Statistic}.get(loc[-1])


def searched_space(space: SpaceFile) -> dict[str, str]:
    """The searched parameters as text (key -> distribution): what an Optuna study of this sweep must match."""
    return {key: param.describe() for key, param in space.search.params.items()}


def _load_base(space_path: Path, base: str | None) -> dict[str, Any]:
    if base is None:
        return {}
    base_path = (space_path.parent / base).resolve()
    if not base_path.exists():
        raise UserError(f"space file {space_path.name}: base {base!r} does not exist (looked at {base_path})")
    tree = read_yaml(base_path, f"space file {space_path.name}: base") or {}
    if not isinstance(tree, dict):
        raise UserError(f"space file {space_path.name}: base {base!r} must hold a mapping of config sections")
    load_config(tree)  # validates the base on its own, naming its fields
    return tree


def _check_key(space_path: Path, where: str, dotted: str) -> None:
    """A dotted key must name a TrainConfig field; errors carry the space-file location."""
    try:
        set_dotted({}, dotted, None)
    except UserError as error:
        raise UserError(f"space file {space_path.name}: {where}: {error}") from None
    if dotted in RESOURCE_KEYS:
        raise UserError(f"space file {space_path.name}: {where}: {dotted!r} is set by the `resources:` section "
                        f"(workers, cpus_per_worker, gpus_per_worker)")
    if dotted == "seed":
        raise UserError(f"space file {space_path.name}: {where}: the seed is set by `seeds:` (a list, or a count)")


def _check_keys(path: Path, space: SpaceFile) -> None:
    for key in space.fixed:
        _check_key(path, "fixed", key)
    owners: dict[str, str] = {}  # key -> the factor setting it; a factor level may override `fixed`
    for name, levels in space.factors.items():
        if not levels:
            raise UserError(f"space file {path.name}: factors.{name} has no levels")
        if isinstance(levels, list):
            _check_key(path, f"factors.{name}", name)
            keys = [name]
            labels = [format_value(value) for value in levels]
            if len(set(labels)) != len(labels):
                raise UserError(f"space file {path.name}: factors.{name} repeats a value ({labels})")
        else:
            if not re.match(NAME_PATTERN, name) or "." in name:
                raise UserError(f"space file {path.name}: factors.{name}: a named factor (mapping of levels) needs a "
                                f"plain name without dots; a dotted key takes a list of values")
            keys = []
            for label, overrides in levels.items():
                for key in overrides:
                    _check_key(path, f"factors.{name}.{label}", key)
                    keys.append(key)
        for key in keys:
            if key in owners and owners[key] != f"factors.{name}":
                raise UserError(f"space file {path.name}: {key!r} is set both in {owners[key]} and in factors.{name}")
            owners[key] = f"factors.{name}"
    for key, param in space.search.params.items():
        _check_key(path, f"search.params.{key}", key)
        setter = owners.get(key) or ("fixed" if key in space.fixed else None)
        if setter:
            raise UserError(f"space file {path.name}: {key!r} is searched and also set in {setter}")
        for when_key in param.when:
            try:
                set_dotted({}, when_key, None)
            except UserError as error:
                raise UserError(f"space file {path.name}: search.params.{key}.when: {error}") from None
            if when_key in space.search.params and list(space.search.params).index(when_key) >= list(space.search.params).index(key):
                raise UserError(f"space file {path.name}: search.params.{key}.when names {when_key!r}, which is "
                                f"sampled later; list it first")
    for name, headline in space.headlines.items():
        for key in headline.keys():
            _check_key(path, f"headlines.{name}", key)
            if key.endswith(PATH_SUFFIXES):
                raise UserError(f"space file {path.name}: headlines.{name}: {key!r} is a path, logged absolute, so it "
                                f"cannot select runs; select on the keys the conditions differ in (e.g. data.arm)")
        if headline.metric not in known_metrics():
            raise UserError(f"space file {path.name}: {unknown_choice(f'headlines.{name}.metric', headline.metric, known_metrics())}")
    if space.objective is not None:
        valid = known_metrics()
        if space.objective.metric not in valid:
            raise UserError(f"space file {path.name}: {unknown_choice('objective.metric', space.objective.metric, valid)}")


def _cells(space: SpaceFile) -> list[Cell]:
    factors = sorted(space.factors.items())
    options: list[list[tuple[str, str, dict[str, Any]]]] = []
    for name, levels in factors:
        if isinstance(levels, list):
            options.append([(name, format_value(value), {name: value}) for value in levels])
        else:
            options.append([(name, label, dict(overrides)) for label, overrides in levels.items()])
    cells = []
    for index, combination in enumerate(product(*options)):
        overrides: dict[str, Any] = {}
        for _, _, values in combination:
            overrides.update(values)
        cells.append(Cell(index=index, levels=tuple((name, label) for name, label, _ in combination), overrides=overrides))
    return cells


def _check_configs(plan: Plan) -> None:
    """Every cell's config is valid, every searched endpoint is, and each data.path means one dataset."""
    name = plan.path.name
    configs = {slot.cell.index: slot.config for slot in plan.first_of_each_cell()}
    for key, param in plan.space.search.params.items():
        if param.when and not any(holds(param.when, config.flatten()) for config in configs.values()):
            raise UserError(f"space file {name}: search.params.{key}.when {param.when} holds in no cell, so "
                            f"{key!r} would never be searched")
        for slot in plan.first_of_each_cell():
            if not holds(param.when, configs[slot.cell.index].flatten()):
                continue
            for value in param.endpoints():
                try:
                    plan.config(slot, {key: value})
                except UserError as error:
                    raise UserError(f"space file {name}: search.params.{key} value {value!r} "
                                    f"(cell {slot.cell.key or '(no factors)'}): {error}") from None
    if plan.space.early_stopping.enabled:
        for index, config in configs.items():
            if config.budget.unit.value != "steps":
                raise UserError(f"space file {name}: early_stopping needs budget.unit: steps (ASHA counts training "
                                f"steps); cell {plan.cells[index].key or '(no factors)'} has {config.budget.unit.value!r}")
    flat = {index: config.flatten() for index, config in configs.items()}
    _check_headlines(plan, flat)
    _check_scored_along(plan, configs, flat)
    by_path: dict[str, tuple[str, dict[str, Any]]] = {}
    for slot in plan.first_of_each_cell():
        data = configs[slot.cell.index].data
        generator = data.model_dump(mode="json", exclude={"train_images", "arm", "generation_ratio", "test_images"})
        if data.path in by_path and by_path[data.path][1] != generator:
            other, _ = by_path[data.path]
            raise UserError(f"space file {name}: cells {other!r} and {slot.cell.key!r} want different datasets at "
                            f"data.path {data.path!r}; give each its own data.path")
        by_path.setdefault(data.path, (slot.cell.key, generator))


def _check_headlines(plan: Plan, flat: dict[int, dict[str, Any]]) -> None:
    """Each declared selection matches some cell (`flat`: each cell's flattened config), and a slope's treatment
    cells span two values of its x axis."""
    for name, headline in plan.space.headlines.items():
        across = [{}] if headline.across is None else [{k: v} for k, values in headline.across.items() for v in values]
        for side in ("treatment", "control") if headline.control is not None else ("treatment",):
            for level in across:
                selection = {**getattr(headline, side), **level}
                matched = [index for index, values in flat.items() if holds(selection, values)]
                if not matched:
                    raise UserError(f"space file {plan.path.name}: headlines.{name}.{side} "
                                    f"{_selection_text(selection)} matches no cell of the study")
                if side == "treatment" and headline.against is not None:
                    xs = {json.dumps(flat[index].get(headline.against)) for index in matched}
                    if len(xs) < 2:
                        raise UserError(f"space file {plan.path.name}: headlines.{name}: the treatment cells have one "
                                        f"value of {headline.against!r}; a slope needs at least two")


def _check_scored_along(plan: Plan, configs: dict[int, TrainConfig], flat: dict[int, dict[str, Any]]) -> None:
    """Metrics read along the runs (ASHA's objective, trend and AUC headlines) are scored at every evaluation."""
    space, name = plan.space, plan.path.name
    needed = []  # (where, metric, the cells that must score it along)
    for key, headline in space.headlines.items():
        if headline.statistic in (Statistic.TREND, Statistic.AUC) or headline.per_run == PerRun.AUC:
            cells = [index for index, values in flat.items()
                     if holds(headline.treatment, values)
                     or (headline.control is not None and holds(headline.control, values))]
            needed.append((f"headlines.{key}.metric", headline.metric, cells))
    if space.early_stopping.enabled and space.objective is not None:
        needed.append(("objective.metric", space.objective.metric, list(configs)))
    for where, metric, cells in needed:
        task = scored_task(metric)
        for index in cells:
            config = configs[index]
            if task is not None and task not in config.eval.along:
                raise UserError(f"space file {name}: {where} {metric!r} is read along the runs, but cell "
                                f"{plan.cells[index].key or '(no factors)'} scores only {[t.value for t in config.eval.along]} "
                                f"there; add {task.value!r} to eval.along")


def _selection_text(selection: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{key}: {format_value(value)}" for key, value in selection.items()) + "}"

