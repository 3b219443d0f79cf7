"""The sweep's Tune searcher: crossed factors enumerated exactly, searched hyperparameters from Optuna.

`SlotSearcher` hands out the plan's slots in order, one per Tune trial, so
every combination runs exactly once. When the space searches
hyperparameters, each cell has its own Optuna study (TPE, multivariate,
seeded), so every cell, e.g. every arm, gets the same budget and its own best
configuration. The studies live in an RDB storage (`<workdir>/optuna.db`)
named `<sweep>/<cell>`, where `uvlm dashboard` shows them.

Seeds, configurations and trials (docs/ARCHITECTURE.md, "Tuning"):

    Optuna trial (cell c, sample s) = one configuration, asked once (define-by-run)
        -> K Tune trials, one per seed of `seeds`, sharing that configuration (paired seeds)
        -> told once, when all K ended: the mean objective over the K seeds (COMPLETE),
           PRUNED if ASHA stopped any of them, FAIL if any failed

so the sampler learns from one low-noise number per configuration, never
from one noisy seed. With a `holdout:` section the held-out slots wait until
every tuning trial has been told; then each cell's best configuration (and
its untuned one) runs on the held-out seeds.

The searcher's state (next slot, trial -> slot, configurations and their
seeds' outcomes, the samplers) is saved by Tune with the experiment, so a
resumed sweep continues where it stopped and proposes what an uninterrupted
one would.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

from search.space_schema import DistributionKind, Param, SamplerKind, Search
from search.sweep_plan import Phase
from trainables.mlflow_names import Metric
from trainables.selection import holds

PRUNED, FAILED = "pruned", "failed"
SPACE_ATTR = "uvlm.space"  # study user attribute: the searched space it was created for (search.tuning checks it)
COMPLETED_KEY = Metric.FIT_SECONDS
"""Reported by `search.trial.run_trial` only when the body returned: a result without it was stopped early."""


@dataclass
class DefineByRun:
    """Samples the searched parameters of one cell, in file order, skipping those whose `when` fails."""

    params: dict[str, Param]
    values: dict[str, Any]  # the cell's flat config, for `when`

    def __call__(self, trial) -> dict[str, Any]:
        values = dict(self.values)
        searched = {}
        for key, param in self.params.items():
            if holds(param.when, values):
                values[key] = searched[key] = suggest(trial, key, param)
        return searched


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
    seed: int = 0
    sample: int = 0
    phase: Phase = Phase.TUNE


@dataclass
class Configuration:
    """One Optuna trial: a configuration of one cell, run on each of its seeds."""

    number: int  # Optuna's trial number in the cell's study
    trial_id: int  # Optuna's storage id (user attributes are set through it)
    params: dict[str, Any]
    seeds: list[int]
    outcomes: dict[int, float | str] = field(default_factory=dict)  # seed -> objective, PRUNED or FAILED
    told: bool = False


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
        self._configurations: dict[tuple[int, int], Configuration] = {}  # (cell, sample) -> its Optuna trial
        self._samplers: dict[int, Any] = {}  # cell index -> Optuna sampler (its RNG state is saved with the searcher)
        self._studies: dict[int, Any] = {}  # cell index -> optuna.Study, reopened after a restore (not saved)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric and mode come from the space file

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._next >= len(self._slots):
            return Searcher.FINISHED
        slot = self._slots[self._next]
        if slot.phase != Phase.TUNE and self._search.params and not self._tuning_done():
            return None  # held-out re-runs wait for every configuration's verdict; Tune asks again later
        self._next += 1
        self._trials[trial_id] = slot.index
        config: dict[str, Any] = {"slot": slot.index, "searched": {}, "phase": slot.phase.value}
        if not self._search.params:
            return config
        if slot.phase == Phase.TUNE:
            chosen = self._configuration(slot)
        elif slot.phase == Phase.HOLDOUT:
            chosen = self.best(slot.cell_index)
        else:
            chosen = None  # untuned: the searched keys keep their defaults
        if chosen is not None:
            config["searched"] = dict(chosen.params)
            config["optuna"] = {"study": self.study_name(slot), "trial": chosen.number, "trial_id": chosen.trial_id,
                                "storage": self._storage_url if slot.phase == Phase.TUNE else None}
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        configuration, slot = self._configuration_of(trial_id)
        if configuration is None or configuration.told:
            return
        value = (result or {}).get(self.metric)
        if error or (result is not None and COMPLETED_KEY in result and not _finite(value)):
            outcome: float | str = FAILED  # NaN is a failure, not a value for the sampler
        elif result is None or COMPLETED_KEY not in result:
            outcome = PRUNED  # stopped by ASHA (or the time budget) before the body returned
        else:
            outcome = float(value)
        configuration.outcomes[slot.seed] = outcome
        if len(configuration.outcomes) == len(configuration.seeds):
            self._tell(slot.cell_index, configuration)

    def best(self, cell_index: int) -> Configuration | None:
        """The cell's configuration with the best mean objective over its seeds (COMPLETE ones only)."""
        complete = [c for (cell, _), c in self._configurations.items()
                    if cell == cell_index and all(isinstance(v, float) for v in c.outcomes.values()) and c.told]
        if not complete:
            return None
        sign = 1.0 if self.mode == "max" else -1.0
        return max(complete, key=lambda c: (sign * _mean(c.outcomes), -c.number))

    def save(self, checkpoint_path: str) -> None:
        state = {key: value for key, value in self.__dict__.items() if key != "_studies"}
        with open(checkpoint_path, "wb") as file:
            pickle.dump(state, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
        self._studies = {}
        for cell_index in list(self._samplers):
            fail_orphans(self._study(cell_index), {c.number for (cell, _), c in self._configurations.items()
                                                   if cell == cell_index})

    def study_name(self, slot: SlotRef) -> str:
        return study_name(self._study_prefix, slot.cell_key)

    # ---- internals

    def _tuning_done(self) -> bool:
        tuning = sum(1 for slot in self._slots if slot.phase == Phase.TUNE)
        return self._next >= tuning and all(c.told for c in self._configurations.values())

    def _configuration(self, slot: SlotRef) -> Configuration:
        key = (slot.cell_index, slot.sample)
        if key not in self._configurations:
            study = self._study(slot.cell_index)
            trial = study.ask()
            params = DefineByRun(self._search.params, self._cell_values[slot.cell_index])(trial)
            seeds = [other.seed for other in self._slots
                     if other.phase == Phase.TUNE and (other.cell_index, other.sample) == key]
            trial.set_user_attr("seeds", seeds)
            self._configurations[key] = Configuration(trial.number, trial._trial_id, params, seeds)
        return self._configurations[key]

    def _configuration_of(self, trial_id: str) -> tuple[Configuration | None, SlotRef | None]:
        if trial_id not in self._trials or not self._search.params:
            return None, None
        slot = self._slots[self._trials[trial_id]]
        if slot.phase != Phase.TUNE:
            return None, slot
        return self._configurations.get((slot.cell_index, slot.sample)), slot

    def _tell(self, cell_index: int, configuration: Configuration) -> None:
        import optuna

        study = self._study(cell_index)
        outcomes = configuration.outcomes
        values = {str(seed): value for seed, value in sorted(outcomes.items())}
        try:
            study._storage.set_trial_user_attr(configuration.trial_id, "seed_objectives", values)
            if any(value == FAILED for value in outcomes.values()):
                study.tell(configuration.number, state=optuna.trial.TrialState.FAIL)
            elif any(value == PRUNED for value in outcomes.values()):
                study.tell(configuration.number, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(configuration.number, _mean(outcomes))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # told before a crash, after Tune's last snapshot of this searcher
        configuration.told = True

    def _study(self, cell_index: int):
        if cell_index not in self._studies:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            if cell_index not in self._samplers:
                seed = self._search.seed + cell_index
                if self._search.sampler == SamplerKind.RANDOM:
                    sampler = optuna.samplers.RandomSampler(seed=seed)
                else:
                    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self._search.startup_trials,
                                                         multivariate=self._search.multivariate)
                self._samplers[cell_index] = sampler
            key = next(slot.cell_key for slot in self._slots if slot.cell_index == cell_index)
            study = optuna.create_study(
                study_name=study_name(self._study_prefix, key), storage=optuna.storages.RDBStorage(self._storage_url),
                sampler=self._samplers[cell_index], direction="maximize" if self.mode == "max" else "minimize",
                load_if_exists=True)
            if SPACE_ATTR not in study.user_attrs:
                study.set_user_attr(SPACE_ATTR, {key: param.describe() for key, param in self._search.params.items()})
            self._studies[cell_index] = study
        return self._studies[cell_index]


def study_name(sweep: str, cell_key: str) -> str:
    return f"{sweep}/{cell_key or 'all'}"


def fail_orphans(study, known: set[int]) -> None:
    """Optuna trials asked after Tune's last snapshot belong to no Tune trial: close them as FAIL."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.number not in known:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _mean(outcomes: dict[int, float | str]) -> float:
    values = [value for value in outcomes.values() if isinstance(value, float)]
    return sum(values) / len(values)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
