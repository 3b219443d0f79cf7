"""Trials at once, also on `--resume --max-concurrent N`.

Tune's `TuneConfig.max_concurrent_trials` wraps the searcher in a
`ConcurrencyLimiter`; both are saved with the experiment, and in Ray 2.60 a
restored experiment keeps them: `Tuner.restore` takes no TuneConfig (the one
pickled in `tuner.pkl` at the start comes back), and the limiter's saved state
(`max_concurrent` included) is loaded over a fresh one. So the sweep wraps its
searcher itself in `SessionLimiter`, whose restore keeps the limit it has, and
`restore_tuner` sets that limit on the restored searcher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.search import ConcurrencyLimiter


class SessionLimiter(ConcurrencyLimiter):
    """A ConcurrencyLimiter whose limit is the current session's, not the one saved with the experiment."""

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state({**state, "max_concurrent": self.max_concurrent})


def restore_tuner(experiment_dir: Path, trainable, concurrency: int):
    """Tuner.restore of the sweep's experiment, running `concurrency` trials at once."""
    from ray import tune

    tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_unfinished=True, resume_errored=False)
    set_concurrency(tuner, concurrency)
    return tuner


def set_concurrency(tuner, concurrency: int) -> None:
    # Private: no public API reaches a restored Tuner's TuneConfig (Ray 2.60, ray/tune/impl/tuner_internal.py).
    # tests/test_sweep_concurrency.py fails when a Ray upgrade moves it.
    tune_config = tuner._local_tuner._tune_config
    searcher = tune_config.search_alg
    if isinstance(searcher, SessionLimiter):
        searcher.set_max_concurrency(concurrency)
    else:  # started before the sweep wrapped its searcher: Tune's own limiter, rebuilt by Tune from this value
        tune_config.search_alg = SessionLimiter(searcher, max_concurrent=concurrency)
    tune_config.max_concurrent_trials = None
