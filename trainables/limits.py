"""Bounds of the numbers a user gives uvlm, in one place for the command line, the configs and the data options.

The limits are wide: they exist so that a typo (an extra zero, a negative
count, NaN) is one line naming the limit, not a worker pool killed by a
100000-pixel image or a seed numpy refuses deep inside a run.
"""

from __future__ import annotations

import math

from trainables.errors import UserError

Bounds = tuple[float, float]

IMAGE_SIZE = (32, 1024)
"""Pixels per side of a rendered image (64 on the CPU, 224 at paper scale)."""
PIXELS = (1, 1024)
"""Any other image or patch side in pixels."""
IMAGES = (1, 1_000_000)
"""Images in a split (the paper: 60000)."""
RECORDS = (1, 100_000_000)
SHARD_IMAGES = (1, 100_000)
SHARD_RECORDS = (1, 10_000_000)
SEED = (0, 2**32 - 1)
"""numpy and torch accept these seeds everywhere."""
WORKERS = (1, 1024)
"""Processes, Ray workers, threads per worker, concurrent trials."""
PORT = (1, 65535)
WIDTH = (1, 65536)
"""Hidden and MLP widths, LoRA rank and alpha."""
LAYERS = (1, 1024)
POSITIONS = (1, 1_000_000)
CODEBOOK = (2, 1_000_000)
STEPS = (1, 1_000_000_000)
"""Steps, samples, epochs, evaluation periods."""
BATCH = (1, 4096)
"""The global batch (the paper: 128-256); a batch far above it is a typo that exhausts memory (records repeat in it)."""
GRID_IMAGES = (1, 1024)
LEARNING_RATE = (0, 10)
FACTOR = (0, 1000)
"""Loss weights, data ratios, weight decay, gradient norms."""
SEEDS_PER_CELL = (1, 1000)
SAMPLES = (1, 100_000)
TRIALS = 100_000
"""Slots in one sweep: the trial table is built in memory before any run."""
YAML_BYTES = 65_536
"""A YAML file or --set value: shipped ones are under 6 kB, and pure-Python PyYAML reads this much in under a second."""
YAML_NODES = 100_000
"""Values (scalars, lists, mappings) a YAML document may expand to once its aliases are followed (shipped: under 150)."""
TIME_BUDGET_S = (0, 10 * 365 * 86400)
HALF_WIDTH = (1e-6, 1e6)
"""A target 95% half-width, on the scale of the statistic (accuracies, slopes)."""


def problem(value: float, bounds: Bounds) -> str | None:
    """Why `value` is out of `bounds` ('must be between 1 and 1024'), or None when it fits."""
    low, high = bounds
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number between {_plain(low)} and {_plain(high)}"
    if not low <= value <= high:
        return f"must be between {_plain(low)} and {_plain(high)}"
    return None


def check(name: str, value: float, bounds: Bounds) -> None:
    """A UserError naming the option, the limit and the value when `value` is out of `bounds`."""
    why = problem(value, bounds)
    if why:
        raise UserError(f"{name} {why} (got {value})")


def _plain(limit: float) -> str:
    return str(int(limit)) if float(limit).is_integer() else f"{limit:g}"
