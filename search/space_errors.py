"""A pydantic error in a space file, turned into one line naming the field, the bad value and the valid ones."""

from __future__ import annotations

import enum
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from search.space_schema import DistributionKind, Mode, SamplerKind, SpaceFile
from trainables.errors import UserError, nearest, unknown_choice
from trainables.headline_schema import Direction, Statistic


def space_error(path: Path, error: ValidationError) -> UserError:
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
