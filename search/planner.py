"""A space file -> a `Plan` (search.sweep_plan): `load_space(path)`, before any compute.

`load_space` checks everything that can be checked without compute (the schema in search.space_schema, the
rest in search.space_checks) and returns the cells, the slots (cell x seed x sample) in the order they run,
and the resolved TrainConfig of each. Errors are `UserError`s naming the field, the bad value and the valid
ones.
"""

from __future__ import annotations

import math
from itertools import product
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from search.space_checks import PATH_SUFFIXES, check_keys, check_plan
from search.space_errors import space_error
from search.space_schema import SpaceFile
from search.sweep_plan import Cell, Phase, Plan, Slot, format_value
from trainables import limits
from trainables.budget import planned_steps
from trainables.config import TrainConfig, load_config
from trainables.errors import UserError
from trainables.yamlfile import load_yaml, read_text, read_yaml


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
        raise space_error(path, error) from None
    base = _load_base(path, space.base)
    check_keys(path, space)
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
    check_plan(plan)
    return plan


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
