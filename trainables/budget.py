"""A run's length in optimiser steps, from its budget rule: `epochs` passes over its own records, or
`steps` / `samples` equal across arms."""

from __future__ import annotations

import math

from trainables.config import BudgetUnit, TrainConfig
from trainables.data.prepare import planned_records


def planned_steps(config: TrainConfig) -> int:
    """The run's optimiser steps, counted from its config before its data exist (`planned_records`)."""
    return total_steps(config, planned_records(config.data))


def total_steps(config: TrainConfig, n_examples: int) -> int:
    """The explicit budget in optimiser steps."""
    budget, batch = config.budget, config.optim.batch_size
    if budget.unit == BudgetUnit.EPOCHS:
        return max(1, math.ceil(budget.value * n_examples / batch))
    if budget.unit == BudgetUnit.SAMPLES:
        return max(1, math.ceil(budget.value / batch))
    return max(1, int(budget.value))
