"""The tuning phase's safety rails: Optuna storage and study checks before compute, and pruning that
never touches a held-out re-run.

    check_storage(url)          the Optuna storage opens and takes a write (rolled back)      -> UserError
    check_studies(plan, ...)    a study of this sweep that exists must search the same space  -> UserError
    PairedASHA                  ASHA per cell on tuning trials only: held-out and untuned re-runs always run to the end

Both checks run in `uvlm validate`, `uvlm sweep --dry-run` and before a sweep
starts; each refuses with one line (exit 2) and writes nothing.
"""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from search.searcher import SPACE_ATTR, study_name
from search.space_schema import searched_space
from search.sweep_plan import Phase, Plan
from trainables.errors import UserError


def check_storage(url: str) -> None:
    """The Optuna storage can be opened and written. An sqlite file is probed with a write that is rolled
    back (nothing is created or changed); another database URL is opened with Optuna."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if path.exists():
            if not path.is_file():
                raise UserError(f"Optuna storage {url}: {path} is not a file")
            try:
                with sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10) as db:
                    db.execute("BEGIN IMMEDIATE")  # takes the write lock: fails on a read-only or foreign file
                    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                    db.rollback()
            except sqlite3.Error as error:
                raise UserError(f"Optuna storage {url} cannot be opened for writing: {error}") from None
            if tables and "studies" not in tables:
                raise UserError(f"Optuna storage {url} is an sqlite database but not an Optuna storage "
                                f"(no 'studies' table); point the working folder elsewhere")
            return
        folder = path.parent
        if not folder.exists():
            folder = next((parent for parent in folder.parents if parent.exists()), Path("/"))
        if not folder.is_dir() or not _writable(folder):
            raise UserError(f"Optuna storage {url} cannot be created: {folder} is not a writable folder")
        return
    try:
        import optuna

        optuna.storages.RDBStorage(url, skip_compatibility_check=False).get_all_studies()
    except Exception as error:  # noqa: BLE001 - any failure means the storage is unusable
        raise UserError(f"Optuna storage {url!r} cannot be opened: {str(error).splitlines()[0]}") from None


def _writable(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK | os.X_OK)


def check_studies(plan: Plan, sweep: str, url: str) -> None:
    """A study named `<sweep>/<cell>` that already exists must search the same parameters with the same
    distributions; otherwise its trials would be mixed with another space's (refused, nothing deleted)."""
    if not plan.space.search.params or (url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists()):
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wanted = searched_space(plan.space)
    existing = {summary.study_name: summary for summary in optuna.study.get_all_study_summaries(url, include_best_trial=False)}
    for cell in plan.cells:
        name = study_name(sweep, cell.key)
        if name not in existing:
            continue
        recorded = existing[name].user_attrs.get(SPACE_ATTR)
        compare = wanted
        if recorded is None:  # a study made by hand or by an older uvlm: compare its trials' distributions
            recorded = _space_of_trials(name, url)
            compare = {key: text.split(" when ")[0] for key, text in wanted.items()}
        if recorded is not None and recorded != compare:
            changed = sorted(set(recorded) ^ set(compare)) + sorted(
                key for key in set(recorded) & set(compare) if recorded[key] != compare[key])
            was = "; ".join(f"{key}: {text}" for key, text in recorded.items())
            raise UserError(f"Optuna study {name!r} already exists with a different search space (differs in "
                            f"{', '.join(changed)}; it searches {was}); use another --name, or delete the study with "
                            f"`optuna delete-study --study-name '{name}' --storage {url}`")


def _space_of_trials(name: str, url: str) -> dict[str, str] | None:
    """The distributions a study's trials used, written as `Param.describe` writes them (None: no trials)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    found: dict[str, str] = {}
    for trial in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False):
        for key, dist in trial.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                found[key] = f"categorical{list(dist.choices)}"
            elif isinstance(dist, IntDistribution):
                found[key] = f"int[{dist.low}, {dist.high}]" + (" log" if dist.log else "")
            elif isinstance(dist, FloatDistribution):
                found[key] = f"{'loguniform' if dist.log else 'uniform'}[{dist.low:g}, {dist.high:g}]"
    return found or None


class PairedASHA(FIFOScheduler):
    """ASHA made safe for paired comparisons: one ASHA per cell, over that cell's tuning trials only.

    Each cell (e.g. arm) is compared with itself at each rung, never with another cell whose
    objective runs on a different scale at the same step (a mixed run has seen fewer understanding
    records at step 250 than an understanding-only one). Held-out and untuned re-runs never enter
    a rung and are never stopped.
    """

    def __init__(self, slot_cells: dict[int, int], cell_max_steps: dict[int, int], **asha):
        super().__init__()
        self._slot_cells = slot_cells
        # max_t above a cell's last step: ASHA stops trials at rungs only, never at their own end, so a
        # trial that runs its whole budget ends itself and its run ends FINISHED.
        self._inner = {cell: ASHAScheduler(max_t=steps + 1, **asha) for cell, steps in cell_max_steps.items()}

    def _asha(self, trial) -> ASHAScheduler | None:
        config = trial.config or {}
        if config.get("phase", Phase.TUNE.value) != Phase.TUNE.value or "slot" not in config:
            return None
        return self._inner[self._slot_cells[config["slot"]]]

    def on_trial_add(self, tune_controller, trial):
        inner = self._asha(trial)
        if inner is not None:
            inner.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        inner = self._asha(trial)
        return TrialScheduler.CONTINUE if inner is None else inner.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        inner = self._asha(trial)
        if inner is not None and trial.trial_id in inner._trial_info:
            inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        inner = self._asha(trial)
        if inner is not None and trial.trial_id in inner._trial_info:
            inner.on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "PairedASHA: " + ", ".join(f"cell {cell}: {inner.debug_string()}" for cell, inner in self._inner.items())

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))

