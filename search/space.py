"""Space files: one YAML file per study, parsed once into a typed, validated plan.

A space file says which runs a study needs. Its parts:

  study           the study's name (MLflow tag `uvlm.study`)
  base            optional TrainConfig YAML the runs start from (relative to the space file)
  fixed           dotted TrainConfig keys -> values, the same in every run (a factor level may override one)
  factors         ablation factors, crossed exhaustively; each is either a dotted key with a
                  list of values, or a named factor whose levels set several keys together
  seeds           a list of seeds, or a count N meaning 0..N-1; every cell runs every seed
  search          hyperparameters Optuna samples (uniform, loguniform, int, categorical),
                  conditional ones with `when`, and `samples` per (cell, seed)
  objective       the metric Optuna and ASHA optimise, and its direction
  resources       per trial: Train workers, CPUs and GPUs per worker
  budget          concurrency and a time limit for the whole sweep
  early_stopping  ASHA on/off, grace period and reduction factor, in training steps

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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.config import TrainConfig, load_config, set_dotted
from trainables.errors import UserError, nearest, unknown_choice

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# Config keys the space file sets through `resources:` (one place for what a trial occupies).
RESOURCE_KEYS = ("runtime.num_workers", "runtime.threads_per_worker", "runtime.use_gpu")
# Config fields holding filesystem paths: made absolute at the boundary, because Ray runs trials
# in other working directories (and on other nodes).
PATH_SUFFIXES = ("path", "_dir")


class SpaceModel(BaseModel):
    """A space-file section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


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
    seed: int = 0
    """Seeds the sampler; each cell's study adds its cell index."""
    startup_trials: int = Field(default=10, ge=1)
    """TPE: random trials per cell before the model takes over."""
    samples: int = Field(default=1, ge=1)
    """Searched configurations per (cell, seed)."""
    params: dict[str, Param] = Field(default_factory=dict)
    """Dotted TrainConfig keys -> distributions, sampled in this order (define-by-run)."""


class Resources(SpaceModel):
    workers: int = Field(default=1, ge=1)
    """Ray Train workers per trial (sets runtime.num_workers)."""
    cpus_per_worker: int = Field(default=1, ge=1)
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
    max_concurrent: int | None = Field(default=None, ge=1)
    """Trials at once; default: as many as the cluster's CPUs and GPUs hold."""
    time_budget_s: float | None = Field(default=None, gt=0)
    """Stop starting trials after this many seconds (running ones are stopped too)."""


class EarlyStopping(SpaceModel):
    enabled: bool = False
    """ASHA: stop trials whose objective is in the bottom part at a rung. Compares trials of all cells."""
    grace_steps: int = Field(default=250, ge=1)
    """No trial is stopped before this many training steps."""
    reduction_factor: float = Field(default=3.0, gt=1)


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
    resources: Resources = Field(default_factory=Resources)
    budget: Budget = Field(default_factory=Budget)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)

    @field_validator("seeds")
    @classmethod
    def _seed_list(cls, seeds: list[int] | int) -> list[int]:
        if isinstance(seeds, int):
            if seeds < 1:
                raise ValueError(f"a seed count must be at least 1 (got {seeds})")
            return list(range(seeds))
        if not seeds:
            raise ValueError("seeds must not be empty")
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
        return ";".join(f"{name}={label}" for name, label in self.levels)


@dataclass(frozen=True)
class Slot:
    """One trial to run: a cell, a seed and a sample index; searched values come at run time."""

    index: int
    cell: Cell
    seed: int
    sample: int
    overrides: dict[str, Any]  # fixed + factor levels + resources + seed (dotted keys)


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
        """Identifies the plan: a resumed sweep must use the same one."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def config(self, slot: Slot, searched: dict[str, Any] | None = None) -> TrainConfig:
        return load_config(self.base, {**slot.overrides, **(searched or {})})

    def first_of_each_cell(self) -> list[Slot]:
        seen: dict[int, Slot] = {}
        for slot in self.slots:
            seen.setdefault(slot.cell.index, slot)
        return list(seen.values())

    def table(self) -> list[dict[str, Any]]:
        """The trial table: one row per slot, as it will run."""
        return [
            {"slot": slot.index, "cell": slot.cell.key, "seed": slot.seed, "sample": slot.sample,
             "overrides": slot.overrides}
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
    if not path.is_file():
        raise UserError(f"space file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UserError(f"space file {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise UserError(f"space file {str(path)!r} must hold a mapping (study, fixed, factors, seeds, ...)")
    try:
        space = SpaceFile.model_validate(tree)
    except ValidationError as error:
        raise _space_error(path, error) from None
    base = _load_base(path, space.base)
    _check_keys(path, space)
    cells = _cells(space)
    slots = [
        Slot(index=index, cell=cell, seed=seed, sample=sample,
             overrides={**space.fixed, **cell.overrides, **space.resources.overrides(), "seed": seed})
        for index, (sample, seed, cell) in enumerate(product(range(space.search.samples), space.seeds, cells))
    ]
    plan = Plan(path=path, text=text, space=space, base=base, cells=cells, slots=slots)
    _check_configs(plan)
    return plan


def resolve_paths(overrides: dict[str, Any], config: TrainConfig, root: Path) -> dict[str, Any]:
    """Overrides plus every relative path field of `config` made absolute against `root`."""
    resolved = dict(overrides)
    for key, value in config.flatten().items():
        if key.endswith(PATH_SUFFIXES) and isinstance(value, str) and value and not Path(value).is_absolute():
            resolved[key] = str((root / value).resolve())
    return resolved


def known_metrics() -> list[str]:
    """The trainable's metric names (docs/ARCHITECTURE.md, "Metric names")."""
    from trainables.data.records import ATTRIBUTES

    names = ["step", "train/loss", "train/text_loss", "train/image_loss", "train/samples",
             "test/caption/score", "test/gen/cosine", "test/gen/token_accuracy", "test/gen/frechet",
             "baseline/caption/score", "time/train_seconds", "time/step_seconds"]
    for group in ("test/vqa", "test/vqa_hidden", "test/gen/probe", "probe/true", "baseline/vqa", "baseline/gen/probe"):
        names += [f"{group}/overall"] + [f"{group}/{attribute}" for attribute in ATTRIBUTES]
    return names


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
    return {"type": DistributionKind, "mode": Mode, "sampler": SamplerKind}.get(loc[-1])


def _load_base(space_path: Path, base: str | None) -> dict[str, Any]:
    if base is None:
        return {}
    base_path = (space_path.parent / base).resolve()
    if not base_path.is_file():
        raise UserError(f"space file {space_path.name}: base {base!r} does not exist (looked at {base_path})")
    tree = yaml.safe_load(base_path.read_text()) or {}
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
    configs: dict[int, TrainConfig] = {}
    for slot in plan.first_of_each_cell():
        try:
            configs[slot.cell.index] = plan.config(slot)
        except UserError as error:
            raise UserError(f"space file {name}: cell {slot.cell.key or '(no factors)'}: {error}") from None
    for key, param in plan.space.search.params.items():
        for slot in plan.first_of_each_cell():
            if not condition_holds(param.when, configs[slot.cell.index].flatten()):
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
    by_path: dict[str, tuple[str, dict[str, Any]]] = {}
    for slot in plan.first_of_each_cell():
        data = configs[slot.cell.index].data
        generator = data.model_dump(mode="json", exclude={"train_images", "arm", "generation_ratio", "test_images"})
        if data.path in by_path and by_path[data.path][1] != generator:
            other, _ = by_path[data.path]
            raise UserError(f"space file {name}: cells {other!r} and {slot.cell.key!r} want different datasets at "
                            f"data.path {data.path!r}; give each its own data.path")
        by_path.setdefault(data.path, (slot.cell.key, generator))


def condition_holds(when: dict[str, Any], values: dict[str, Any]) -> bool:
    """`when` {key: value or [values]} against a flat config: every key must match."""
    for key, wanted in when.items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if _plain(values.get(key)) not in [_plain(item) for item in allowed]:
            return False
    return True


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda item: getattr(item, "value", str(item))))
