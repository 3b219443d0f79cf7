"""The plan of a sweep: its cells (combinations of factor levels) and slots (the trials, in the order they run).

A `Plan` is what search.planner makes of a space file; the sweep, the searcher and each trial read it.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.space_schema import SpaceFile
from trainables.config import TrainConfig
from trainables.mlflow_names import cell_key


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


class Phase(enum.StrEnum):
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
