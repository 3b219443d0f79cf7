"""The checks of a space file that need more than its schema: keys against TrainConfig, metrics, cells.

`check_keys` runs before the plan is built: every dotted key names a TrainConfig field and is set in one place,
searched conditions come in order, headline and objective metrics exist. `check_plan` runs on the built plan:
every cell's config, every searched endpoint and every headline selection is valid, metrics read along the
runs are scored along them, and each data.path means one dataset. Errors are `UserError`s naming the
space-file location.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from search.space_schema import NAME_PATTERN, SpaceFile
from search.sweep_plan import Plan, format_value
from trainables.config import TrainConfig, set_dotted
from trainables.errors import UserError, unknown_choice
from trainables.headline_schema import PerRun, Statistic
from trainables.mlflow_names import metric_names, scored_task
from trainables.selection import holds

# Config keys the space file sets through `resources:` (one place for what a trial occupies).
RESOURCE_KEYS = ("runtime.num_workers", "runtime.threads_per_worker", "runtime.use_gpu")
# Config fields holding filesystem paths: made absolute at the boundary, because Ray runs trials
# in other working directories (and on other nodes).
PATH_SUFFIXES = ("path", "_dir")


def known_metrics() -> list[str]:
    """The trainable's metric names (trainables.mlflow_names)."""
    return metric_names()


def check_keys(path: Path, space: SpaceFile) -> None:
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


def check_plan(plan: Plan) -> None:
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
