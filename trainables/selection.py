"""Which runs a selection picks: {dotted config key: value, or a list of values}, the one rule for every selection.

Space files select with it (a headline's treatment and control, a searched parameter's `when`). A headline's
selection is checked against each cell's config when the space file is loaded and applied to the logged runs
when the findings are computed, so both must answer alike for the same value: a run's parameters come back from
MLflow as text parsed into bool, int, float or str (analysis.frames.typed), a cell's config as plain JSON values.
So numbers compare as numbers (within 1e-12), None only with None, and everything else as case-insensitive text,
an enum by its value ('True' is true, 'Mixed' is mixed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def holds(selection: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    """Every key of `selection` matches its value in `values` (a flat config, or one run's parameters)."""
    return all(matches(values.get(key), wanted) for key, wanted in selection.items())


def matches(value: Any, wanted: Any) -> bool:
    """`value` is `wanted`, or one of the list `wanted`."""
    return any(_same(value, item) for item in (wanted if isinstance(wanted, list) else [wanted]))


def _same(value: Any, item: Any) -> bool:
    value, item = getattr(value, "value", value), getattr(item, "value", item)
    if value is None or item is None:
        return value is None and item is None
    if _number(value) and _number(item):
        return math.isclose(float(value), float(item), abs_tol=1e-12)
    return str(value).lower() == str(item).lower()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
