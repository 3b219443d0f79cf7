"""The sweep's Tune callback: one line per trial state change, a progress bar, and runs never left RUNNING.

Tune's own table reporter reprints every trial every few seconds; for sweeps
of hours that is a flood. This prints one line when a trial starts, finishes,
fails or is stopped, above a tqdm bar of finished trials (on stderr).

It also closes the MLflow run of a trial that Tune stopped (ASHA early
stopping, the time budget): the trial driver is killed then and cannot end its
own run. The callback lives in the sweep driver; on `--resume` Tune restores
it from its experiment state, so it keeps no state worth saving.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from search import tracking
from trainables import mlflow_io
from trainables.mlflow_names import FAILED, FINISHED, RUNNING, Role, Tag


class SweepCallback(Callback):
    def __init__(self, sweep: str, tracking_uri: str, experiment_id: str, total: int, early_stopping: bool, metric: str | None = None):
        self.sweep = sweep
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.total = total
        self.early_stopping = early_stopping
        self.metric = metric
        self._bar = None
        self._client = None
        self._started: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_bar=None, _client=None, _started={})
        return state

    def setup(self, **info) -> None:
        from tqdm import tqdm

        self._client = tracking.client(self.tracking_uri)
        done = sum(run.info.status in (FINISHED, FAILED) or mlflow_io.is_pruned(run)
                   for run in mlflow_io.runs(self._client, self.experiment_id, Role.TRIAL))  # interrupted ones rerun
        self._bar = tqdm(total=self.total, initial=done, desc=f"sweep {self.sweep}", unit="trial", file=sys.stderr,
                         dynamic_ncols=True, leave=True)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._started[trial.trial_id] = time.monotonic()
        self._say(trial, "started")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        run = self._run(trial)
        if run is not None and run.info.status == RUNNING:
            # Tune stopped it: the driver was killed before it could end its run.
            if self.early_stopping:
                mlflow_io.pruned(self._client, run.info.run_id)
            else:
                mlflow_io.interrupted(self._client, run.info.run_id, "stopped by the sweep (time budget)")
            step = (trial.last_result or {}).get("step")
            self._say(trial, "pruned" if self.early_stopping else "stopped", f"at step {step}" if step is not None else "")
        else:
            self._say(trial, "finished", self._objective(trial))
        self._advance()

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        run = self._run(trial)
        if run is not None and run.info.status == RUNNING:
            mlflow_io.finish(self._client, run.info.run_id, FAILED, _error_text(trial))
            run = self._run(trial)
        error = run.data.tags.get(Tag.ERROR) if run is not None else _error_text(trial)
        self._say(trial, FAILED, error or "")
        self._advance()

    def on_experiment_end(self, trials: list, **info) -> None:
        if self._bar is not None:
            self._bar.close()

    def _run(self, trial):
        return mlflow_io.trial_run(self._client, self.experiment_id, trial.trial_id)

    def _advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _objective(self, trial) -> str:
        result = trial.last_result or {}
        if self.metric and isinstance(result.get(self.metric), (int, float)):
            return f"{self.metric}={result[self.metric]:.4f}"
        return ""

    def _say(self, trial, event: str, detail: str = "") -> None:
        slot = trial.config.get("slot", "?")
        searched = trial.config.get("searched") or {}
        took = ""
        if event != "started" and trial.trial_id in self._started:
            took = f"after {time.monotonic() - self._started[trial.trial_id]:.0f}s"
        shown = " ".join(f"{key}={_short(value)}" for key, value in searched.items())
        line = " ".join(part for part in (f"trial {slot:>4}" if isinstance(slot, int) else f"trial {slot}",
                                          f"[{trial.trial_id}]", event, shown, detail, took) if part)
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1][:1000]
    return "the trial process died (out of memory, or killed)"
