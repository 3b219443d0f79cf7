"""The sweep's Tune searcher: crossed factors enumerated exactly, searched hyperparameters from Optuna.

`SlotSearcher` hands out the plan's slots (cell x seed x sample) in order, one
per Tune trial, so every combination runs exactly once. When the space
searches hyperparameters, each cell has its own Ray Tune `OptunaSearch` (TPE
by default, seeded) whose define-by-run function samples them, so every cell,
e.g. every arm, gets the same search budget and its own best configuration.
The Optuna studies live in an RDB storage (`<workdir>/optuna.db`) named
`<sweep>/<cell>`, where `optuna-dashboard` can open them.

The searcher's state (next slot, trial -> slot, the Optuna searchers with
their samplers) is saved by Tune with the experiment, so a resumed sweep
continues where it stopped and proposes what an uninterrupted one would.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from typing import Any

from ray.tune.search import Searcher

from search.space import DistributionKind, Param, SamplerKind, Search, condition_holds


@dataclass
class DefineByRun:
    """Samples the searched parameters of one cell, in file order, skipping those whose `when` fails."""

    params: dict[str, Param]
    values: dict[str, Any]  # the cell's flat config, for `when`

    def __call__(self, trial) -> None:
        values = dict(self.values)
        for key, param in self.params.items():
            if condition_holds(param.when, values):
                values[key] = suggest(trial, key, param)


def suggest(trial, key: str, param: Param) -> Any:
    if param.type == DistributionKind.CATEGORICAL:
        return trial.suggest_categorical(key, param.choices)
    if param.type == DistributionKind.INT:
        return trial.suggest_int(key, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
    if param.type == DistributionKind.LOGUNIFORM:
        return trial.suggest_float(key, param.low, param.high, log=True)
    return trial.suggest_float(key, param.low, param.high, step=param.step)


@dataclass(frozen=True)
class SlotRef:
    """What the searcher needs of a slot (the Plan itself stays in the driver)."""

    index: int
    cell_index: int
    cell_key: str


class SlotSearcher(Searcher):
    def __init__(self, slots: list[SlotRef], cell_values: dict[int, dict[str, Any]], search: Search,
                 metric: str | None, mode: str | None, study_prefix: str, storage_url: str):
        super().__init__(metric=metric, mode=mode)
        self._slots = slots
        self._cell_values = cell_values
        self._search = search
        self._study_prefix = study_prefix
        self._storage_url = storage_url
        self._next = 0
        self._trials: dict[str, int] = {}  # Tune trial id -> slot index
        self._inner: dict[int, Any] = {}  # cell index -> OptunaSearch

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric and mode come from the space file

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._next >= len(self._slots):
            return Searcher.FINISHED
        slot = self._slots[self._next]
        self._next += 1
        self._trials[trial_id] = slot.index
        searched = self._optuna(slot).suggest(trial_id) if self._search.params else {}
        return {"slot": slot.index, "searched": dict(searched)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        inner = self._inner_of(trial_id)
        if inner is not None and _finite(result.get(self.metric)):
            import optuna

            try:
                inner.on_trial_result(trial_id, result)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # a trial Tune reruns after a resume, already told to Optuna before the crash

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        inner = self._inner_of(trial_id)
        if inner is None:
            return
        if result is not None and self.metric in result and not _finite(result[self.metric]):
            result, error = None, True  # NaN is a failure, not a value for the sampler
        inner.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
        for inner in self._inner.values():
            fail_orphans(inner)

    def _inner_of(self, trial_id: str):
        if trial_id not in self._trials or not self._search.params:
            return None
        return self._inner.get(self._slots[self._trials[trial_id]].cell_index)

    def _optuna(self, slot: SlotRef):
        if slot.cell_index not in self._inner:
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            seed = self._search.seed + slot.cell_index
            if self._search.sampler == SamplerKind.RANDOM:
                sampler = optuna.samplers.RandomSampler(seed=seed)
            else:
                sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self._search.startup_trials)
            self._inner[slot.cell_index] = OptunaSearch(
                space=DefineByRun(self._search.params, self._cell_values[slot.cell_index]),
                metric=self.metric, mode=self.mode, sampler=sampler,
                study_name=study_name(self._study_prefix, slot.cell_key),
                storage=optuna.storages.RDBStorage(self._storage_url),
            )
        return self._inner[slot.cell_index]


def study_name(sweep: str, cell_key: str) -> str:
    return f"{sweep}/{cell_key or 'all'}"


def fail_orphans(inner) -> None:
    """Optuna trials asked after Tune's last snapshot belong to no Tune trial: close them as FAIL."""
    import optuna

    study = inner._ot_study
    known = {trial.number for trial in inner._ot_trials.values()}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.number not in known:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
