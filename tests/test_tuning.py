"""Optuna at work: one Optuna trial per configuration scored on K paired seeds, held-out re-runs of each
cell's best configuration that pruning never touches, and the links between Optuna trials and MLflow runs.

The sweep runs the real `uvlm sweep` process (Ray, Tune, Optuna, MLflow) with a cheap trial body
(tests/sweep_bodies.py:graded).
"""

from __future__ import annotations

from collections import defaultdict

import optuna
import pytest

from test_sweep_run import runs_of, space_file, uvlm

OBJECTIVE = "test/vqa/overall"


@pytest.mark.slow  # too slow for the default run; .ci/run runs it
def test_configurations_are_scored_on_paired_seeds_then_held_out_bests_rerun_unpruned(tmp_path):
    space = space_file(
        tmp_path, "tuned", factors={"data.arm": ["understanding", "mixed"]}, seeds=[0, 1],
        fixed={"budget.unit": "steps", "budget.value": 40},
        objective={"metric": OBJECTIVE, "mode": "max"},
        search={"samples": 3, "startup_trials": 2, "params": {
            "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
            "data.generation_ratio": {"type": "uniform", "low": 0.1, "high": 2.0, "when": {"data.arm": "mixed"}}}},
        holdout={"seeds": [7, 8], "untuned": True},
        early_stopping={"enabled": True, "grace_steps": 10, "reduction_factor": 2},
    )
    result = uvlm(tmp_path, "sweep", str(space), "--trainable", "sweep_bodies:graded", "--max-concurrent", "2")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    runs = runs_of(tmp_path, "tuned")
    by_phase = defaultdict(list)
    for run in runs:
        by_phase[run.data.tags["uvlm.phase"]].append(run)
    assert len(by_phase["tune"]) == 12 and len(by_phase["holdout"]) == 4 and len(by_phase["untuned"]) == 4

    # Held-out and untuned re-runs score 0.5 below every tuning trial ASHA saw, yet none was stopped.
    for run in by_phase["holdout"] + by_phase["untuned"]:
        assert run.info.status == "FINISHED" and "uvlm.pruned" not in run.data.tags, run.info.run_name
        assert run.data.metrics[OBJECTIVE] < 0.3
    pruned = [run for run in by_phase["tune"] if run.data.tags.get("uvlm.pruned") == "true"]

    storage = f"sqlite:///{tmp_path / 'work' / 'optuna.db'}"
    for arm in ("understanding", "mixed"):
        study = optuna.load_study(study_name=f"tuned/data.arm={arm}", storage=storage)
        trials = study.get_trials()
        assert len(trials) == 3, "one Optuna trial per configuration, not one per seed"
        assert all(trial.state != optuna.trial.TrialState.RUNNING for trial in trials)
        assert ("data.generation_ratio" in trials[0].params) == (arm == "mixed")
        tuning = {(run.data.tags["uvlm.optuna_trial"], run.data.tags["uvlm.seed"]): run
                  for run in by_phase["tune"] if run.data.tags["uvlm.arm"] == arm}
        assert len(tuning) == 6
        for trial in trials:
            seed_runs = [tuning[(str(trial.number), seed)] for seed in ("0", "1")]
            assert all(run.data.tags["uvlm.optuna_study"] == study.study_name for run in seed_runs)
            # The Optuna trial carries each seed's MLflow run id; both seeds trained the same configuration.
            assert {trial.user_attrs[f"mlflow_run_id.seed={seed}"] for seed in (0, 1)} == {run.info.run_id for run in seed_runs}
            for key, value in trial.params.items():
                assert all(float(run.data.params[key]) == pytest.approx(value) for run in seed_runs)
            if trial.state == optuna.trial.TrialState.COMPLETE:
                mean = sum(run.data.metrics[OBJECTIVE] for run in seed_runs) / 2
                assert trial.value == pytest.approx(mean), "Optuna is told the mean over the paired seeds"
            else:
                assert trial.state == optuna.trial.TrialState.PRUNED
                assert any(run in pruned for run in seed_runs)
        held = [run for run in by_phase["holdout"] if run.data.tags["uvlm.arm"] == arm]
        complete = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
        assert complete, "the first configuration of a cell always survives ASHA"
        best = max(complete, key=lambda trial: (trial.value, -trial.number))
        assert {run.data.tags["uvlm.seed"] for run in held} == {"7", "8"}
        for run in held:
            assert run.data.tags["uvlm.optuna_trial"] == str(best.number)
            for key, value in best.params.items():
                assert float(run.data.params[key]) == pytest.approx(value)
        untuned = [run for run in by_phase["untuned"] if run.data.tags["uvlm.arm"] == arm]
        assert {run.data.params["optim.lr"] for run in untuned} == {"0.002"}  # the default, not a searched value
        assert all("uvlm.optuna_trial" not in run.data.tags for run in untuned)
    _report_checks(tmp_path)


# ---- bad input: one line, exit 2, before any compute, nothing recorded lost ---------------------------------

SEARCHED = {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}


@pytest.mark.parametrize(("params", "message"), [
    ({"data.generation_ratio": {"type": "uniform", "low": -0.5, "high": 1.0}},
     "search.params.data.generation_ratio value -0.5 (cell (no factors)): config data.generation_ratio: Input should be greater than 0"),
    ({"optim.lr": {"type": "loguniform", "low": 0.0, "high": 1e-2}},
     "search.params.optim.lr: a loguniform parameter needs low > 0"),
    ({"optim.lr": {"type": "int", "low": 0, "high": 10, "log": True}},
     "an int parameter with log: true needs low >= 1"),
    ({"data.arm": {"type": "categorical", "choices": ["mixed", "both"]}},
     "search.params.data.arm value 'both' (cell (no factors)): config data.arm: Input should be 'understanding', 'generation' or 'mixed'"),
    ({"generation.alpha": {"type": "uniform", "low": 0.1, "high": 0.5, "when": {"data.arm": "generation"}}},
     "search.params.generation.alpha.when {'data.arm': 'generation'} holds in no cell"),
])
def test_validate_refuses_a_searched_range_the_key_does_not_accept(tmp_path, params, message):
    space = space_file(tmp_path, "bad", objective={"metric": OBJECTIVE, "mode": "max"}, search={"params": params})
    result = uvlm(tmp_path, "validate", str(space), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "work" / "optuna.db").exists() and not (tmp_path / "data").exists()


def _storage(folder, kind: str) -> None:
    work = folder / "work"
    work.mkdir()
    if kind == "a folder":
        (work / "optuna.db").mkdir()
    elif kind == "not a database":
        (work / "optuna.db").write_text("these are someone's notes, not a database\n")
    else:  # an sqlite database of something else
        import sqlite3

        with sqlite3.connect(work / "optuna.db") as db:
            db.execute("CREATE TABLE notes (text)")


@pytest.mark.parametrize(("kind", "message"), [
    ("a folder", "optuna.db is not a file"),
    ("not a database", "cannot be opened for writing: file is not a database"),
    ("another database", "is an sqlite database but not an Optuna storage"),
])
def test_validate_and_sweep_refuse_an_optuna_storage_that_cannot_be_used(tmp_path, kind, message):
    _storage(tmp_path, kind)
    target = tmp_path / "work" / "optuna.db"
    before = target.read_bytes() if target.is_file() else None
    space = space_file(tmp_path, "stored", objective={"metric": OBJECTIVE, "mode": "max"}, search={"params": SEARCHED})
    for command in (("validate", str(space)), ("sweep", str(space), "--trainable", "sweep_bodies:quick")):
        result = uvlm(tmp_path, *command, timeout=120)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
    assert (target.read_bytes() if target.is_file() else None) == before, "the storage was changed"
    assert not (tmp_path / "work" / "mlflow.db").exists(), "the sweep wrote to MLflow before refusing"


def test_a_study_name_that_exists_with_another_search_space_is_refused_and_kept(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    storage = f"sqlite:///{work / 'optuna.db'}"
    study = optuna.create_study(study_name="clash/all", storage=storage, direction="maximize")
    trial = study.ask()
    trial.suggest_float("optim.lr", 1e-4, 1e-1, log=True)
    trial.suggest_float("generation.alpha", 0.1, 1.0)
    study.tell(trial, 0.4)
    before = (work / "optuna.db").read_bytes()
    space = space_file(tmp_path, "clash", objective={"metric": OBJECTIVE, "mode": "max"}, search={"params": SEARCHED})
    for command in (("validate", str(space)), ("sweep", str(space), "--trainable", "sweep_bodies:quick")):
        result = uvlm(tmp_path, *command, timeout=120)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert ("Optuna study 'clash/all' already exists with a different search space (differs in generation.alpha, "
                "optim.lr") in result.stderr
    assert (work / "optuna.db").read_bytes() == before
    assert len(optuna.load_study(study_name="clash/all", storage=storage).trials) == 1
    # The same space under the same name is not a clash: validate accepts it.
    same = space_file(tmp_path, "clash", objective={"metric": OBJECTIVE, "mode": "max"}, search={"params": {
        "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
        "generation.alpha": {"type": "uniform", "low": 0.1, "high": 1.0}}})
    assert uvlm(tmp_path, "validate", str(same), timeout=120).returncode == 0


# ---- the Optuna studies' cost, from the demo's measured costs ------------------------------------------------

# A whole `uvlm demo` with trials reusing their process: ~0.07 s a training step with two trials side by side,
# ~5 s fixed cost per trial.
STEP_SECONDS, TRIAL_SECONDS, CONCURRENT = 0.07, 5.0, 2


@pytest.mark.parametrize(("study", "stated"), [("ratio", 2), ("tuning", 13)])
def test_the_optuna_studies_take_the_minutes_their_headers_state(study, stated):
    from search.planner import load_space
    from test_demo import ROOT, planned_steps

    plan = load_space(ROOT / "spaces" / f"{study}.yaml")
    steps = sum(planned_steps(plan.config(slot)) for slot in plan.slots)
    minutes = (steps * STEP_SECONDS + len(plan.slots) * TRIAL_SECONDS) / CONCURRENT / 60
    assert abs(minutes - stated) <= 1, f"{study}: {len(plan.slots)} trials, {steps} steps: {minutes:.1f} minutes"
    assert f"about {stated} minutes" in plan.text
    assert len({slot.seed for slot in plan.slots if slot.phase.value == "tune"}) >= 2, "K >= 2 paired seeds per configuration"


def _report_checks(tmp_path) -> None:
    """The report of the tuned sweep: findings on held-out runs only, budget, history, pruned runs, tuned vs untuned."""
    import json

    from analysis.report import build_report

    out = build_report("tuned", f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}", tmp_path / "report", log_artifacts=False).out
    tuned = json.loads((out / "tuning.json").read_text())
    findings = json.loads((out / "findings.json").read_text())
    assert findings["findings"]["1"]["addressed"]
    (headline,) = [r for r in findings["findings"]["1"]["results"] if r["headline"]]
    assert headline["n_seeds"] == 2, "the finding uses the two held-out seeds only"
    (row,) = tuned["tuned_vs_untuned"]
    assert row["tuned"] == pytest.approx(headline["estimate"]) and row["untuned"] is not None
    assert [entry["configurations"] for entry in tuned["budget"]] == [3, 3], "the same budget for every arm"
    assert len(tuned["configurations"]) == 6
    complete_mixed = [c for c in tuned["configurations"] if c["cell"] == "data.arm=mixed" and c["state"] == "complete"]
    if len(complete_mixed) >= 2:  # the ratio is searched in the mixed arm only; ASHA may leave one configuration
        assert tuned["best_ratio"]["cell"] == "data.arm=mixed" and tuned["best_ratio"]["seeds"] == 2
        assert tuned["best_ratio"]["ci_low"] <= tuned["best_ratio"]["ratio"] <= tuned["best_ratio"]["ci_high"]
    else:
        assert "best_ratio" not in tuned
    md = (out / "report.md").read_text()
    assert "## Tuning (Optuna)" in md and "figures/tuning_history.png" in md
    assert ("Pruned trials: none" in md) == (not tuned["pruned_runs"])
    for name in tuned["pruned_runs"]:
        assert name in md
