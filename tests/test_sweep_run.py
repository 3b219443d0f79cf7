"""Sweeps end to end with cheap trial bodies (tests/sweep_bodies.py): MLflow layout, failures, early stopping,
concurrent logging, and kill -9 of the driver followed by --resume.

Each test runs the real `uvlm sweep` process with `--trainable sweep_bodies:...`, so Ray, Tune, Optuna and
MLflow are all real; only the training is replaced.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.cluster import temp_dir as ray_temp_dir
from trainables.mlflow_names import ENDING_TAGS, OPTUNA_TAGS, SWEEP_TAGS, TRIAL_TAGS, Tag, factor_tag

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = {"data.path": "data/tiny", "data.generate_train_images": 20, "data.generate_test_images": 10,
             "data.test_images": 10}


def space_file(folder: Path, name: str, **tree) -> Path:
    tree.setdefault("study", name)
    tree["fixed"] = {**TINY_DATA, **tree.get("fixed", {})}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def uvlm(folder: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 400, popen: bool = False):
    environment = {**os.environ, "UVLM_WORKDIR": str(folder / "work"),
                   "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), **(env or {})}
    environment.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "search.cli", *args]
    if popen:
        return subprocess.Popen(command, cwd=folder, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=timeout)


def client(folder: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{folder / 'work' / 'mlflow.db'}")


def runs_of(folder: Path, sweep: str, role: str = "trial") -> list:
    mlflow = client(folder)
    experiment = mlflow.get_experiment_by_name(sweep)
    return mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`uvlm.role` = '{role}'", max_results=1000)


def uvlm_tags(run) -> set[str]:
    return {key for key in run.data.tags if key.startswith("uvlm.") or key == Tag.PARENT}


def kill_ray_leftovers(folder: Path) -> None:
    """Ray processes that outlive a kill -9 of the driver: found by their temp folder, killed by PID."""
    marker = ray_temp_dir(folder / "work")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in command_line:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _recorded_process(entry: dict) -> psutil.Process | None:
    """A recorded Ray process that still runs (not a zombie), or None."""
    try:
        process = psutil.Process(entry["pid"])
        return process if process.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def test_sweep_logs_parent_and_nested_runs_in_the_contract_layout(tmp_path):
    space = space_file(tmp_path, "layout", factors={"data.arm": ["understanding", "mixed"]}, seeds=2,
                       objective={"metric": "test/vqa/overall", "mode": "max"},
                       search={"params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}})
    result = uvlm(tmp_path, "sweep", str(space), "--trainable", "sweep_bodies:quick")
    assert result.returncode == 0, result.stderr
    assert "4 finished, 0 failed, 0 pruned (complete" in result.stderr
    assert "Traceback" not in result.stderr

    (parent,) = runs_of(tmp_path, "layout", "sweep")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "layout"
    assert parent.data.tags["uvlm.sweep"] == "layout" and parent.data.tags["uvlm.study"] == "layout"
    assert parent.data.tags["uvlm.git_commit"]
    assert uvlm_tags(parent) == SWEEP_TAGS
    artifacts = {artifact.path for artifact in client(tmp_path).list_artifacts(parent.info.run_id)}
    assert {"layout.yaml", "trial_table.json", "versions.json", "trials.json"} <= artifacts
    versions = json.loads(Path(client(tmp_path).download_artifacts(parent.info.run_id, "versions.json",
                                                                    str(tmp_path))).read_text())
    assert {"torch", "transformers", "tokenizers", "pillow", "numpy", "git_commit"} <= versions.keys()

    trials = runs_of(tmp_path, "layout")
    assert len(trials) == 4
    for run in trials:
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id and tags["uvlm.role"] == "trial"
        assert tags["uvlm.sweep"] == "layout" and tags["uvlm.study"] == "layout" and tags["uvlm.trial_id"]
        assert tags["uvlm.arm"] == run.data.params["data.arm"] == tags["uvlm.factor.data.arm"]
        assert tags["uvlm.cell"] == f"data.arm={tags['uvlm.arm']}"
        assert tags["uvlm.seed"] == run.data.params["seed"]
        assert 1e-4 <= float(run.data.params["optim.lr"]) <= 1e-2
        history = client(tmp_path).get_metric_history(run.info.run_id, "test/vqa/overall")
        assert [metric.step for metric in history] == [10, 20, 30]
    assert sorted((run.data.tags["uvlm.arm"], run.data.tags["uvlm.seed"]) for run in trials) == [
        ("mixed", "0"), ("mixed", "1"), ("understanding", "0"), ("understanding", "1")]
    assert sorted(run.info.run_name for run in trials) == [
        "layout/arm=mixed/seed=0", "layout/arm=mixed/seed=1", "layout/arm=understanding/seed=0",
        "layout/arm=understanding/seed=1"]
    for run in trials:  # exactly the tags the layout declares
        # searched: every run trains an Optuna trial's configuration and names it
        assert uvlm_tags(run) - ENDING_TAGS == TRIAL_TAGS | OPTUNA_TAGS | {factor_tag("data.arm")}, run.info.run_name

    studies = {summary.study_name: summary.n_trials for summary in
               optuna.study.get_all_study_summaries(f"sqlite:///{tmp_path / 'work' / 'optuna.db'}")}
    # One Optuna trial per configuration: each arm's one configuration ran on both seeds (told their mean).
    assert studies == {"layout/data.arm=understanding": 1, "layout/data.arm=mixed": 1}

    again = uvlm(tmp_path, "sweep", str(space), "--trainable", "sweep_bodies:quick")
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr
    resumed = uvlm(tmp_path, "sweep", str(space), "--trainable", "sweep_bodies:quick", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert len(runs_of(tmp_path, "layout")) == 4, "a finished sweep resumes to nothing"


def test_a_body_that_trains_in_the_trial_gets_no_tune_report_callback(tmp_path):
    """TuneReportCallback's queue is an actor process of its own per trial, polled every 0.2 s: only a
    TorchTrainer's workers need it. A one-worker body that trains in the trial process is handed none."""
    from search.trial import trains_here
    from sweep_bodies import in_process, quick
    from trainables.config import load_config

    space = space_file(tmp_path, "here", seeds=2)
    result = uvlm(tmp_path, "sweep", str(space), "--trainable", "sweep_bodies:in_process")
    assert result.returncode == 0, result.stderr
    trials = runs_of(tmp_path, "here")
    assert [run.data.metrics["callbacks_given"] for run in trials] == [0.0, 0.0]

    one, two = load_config(None, []), load_config(None, ["runtime.num_workers=2"])
    assert trains_here(one, in_process) and trains_here(one, "trainables.launch:fit_in_trial")
    assert not trains_here(two, in_process), "several workers: a TorchTrainer, which needs the callback"
    assert not trains_here(one, quick) and not trains_here(one, "trainables.launch:fit")


def test_failing_and_nan_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    space = space_file(tmp_path, "faults", factors={"data.arm": ["understanding", "generation", "mixed"]}, seeds=2)
    result = uvlm(tmp_path, "sweep", str(space), "--trainable", "sweep_bodies:flaky")
    assert result.returncode == 1, result.stderr
    assert "3 finished, 3 failed, 0 pruned (complete" in result.stderr
    by_cell = {}
    for run in runs_of(tmp_path, "faults"):
        by_cell[(run.data.tags["uvlm.arm"], run.data.tags["uvlm.seed"])] = run
    assert all(by_cell[("generation", seed)].info.status == "FAILED" for seed in "01")
    assert "boom" in by_cell[("generation", "0")].data.tags["uvlm.error"]
    nan_run = by_cell[("understanding", "1")]
    assert nan_run.info.status == "FAILED" and "non-finite final metrics" in nan_run.data.tags["uvlm.error"]
    assert by_cell[("generation", "0")].data.params["data.arm"] == "generation", "a failed trial keeps its params"
    assert {by_cell[key].info.status for key in [("mixed", "0"), ("mixed", "1"), ("understanding", "0")]} == {"FINISHED"}
    assert "failed: faults/arm=generation/seed=0: ValueError: boom" in result.stderr, result.stderr


def test_asha_prunes_weak_trials_and_their_runs_end_killed(tmp_path):
    space = space_file(tmp_path, "asha", fixed={"budget.value": 60}, seeds=[0, 1, 2, 3],
                       objective={"metric": "test/vqa/overall", "mode": "max"},
                       early_stopping={"enabled": True, "grace_steps": 10, "reduction_factor": 2})
    result = uvlm(tmp_path, "sweep", str(space), "--trainable", "sweep_bodies:ladder", "--max-concurrent", "1")
    assert result.returncode == 0, result.stderr
    assert "1 finished, 0 failed, 3 pruned (complete" in result.stderr
    statuses = {run.data.tags["uvlm.seed"]: (run.info.status, run.data.tags.get("uvlm.pruned")) for run in runs_of(tmp_path, "asha")}
    assert statuses == {"0": ("FINISHED", None), "1": ("KILLED", "true"), "2": ("KILLED", "true"), "3": ("KILLED", "true")}


def test_eight_trials_log_concurrently_to_the_embedded_store(tmp_path):
    from sweep_bodies import CHATTY_METRICS, CHATTY_STEPS

    space = space_file(tmp_path, "chatty", seeds=8)
    result = uvlm(tmp_path, "sweep", str(space), "--trainable", "sweep_bodies:chatty", "--max-concurrent", "8")
    assert result.returncode == 0, result.stderr
    assert "8 trials" in result.stderr and "8 at a time" in result.stderr
    trials = runs_of(tmp_path, "chatty")
    assert len(trials) == 8 and {run.info.status for run in trials} == {"FINISHED"}
    with sqlite3.connect(tmp_path / "work" / "mlflow.db") as db:
        for run in trials:
            (count,) = db.execute("select count(*) from metrics where run_uuid = ? and key like 'test/m%'",
                                  (run.info.run_id,)).fetchone()
            assert count == CHATTY_STEPS * CHATTY_METRICS, run.info.run_name


@pytest.mark.slow  # too slow for the default run; .ci/run runs it
def test_kill_9_of_the_driver_then_resume_finishes_every_trial_exactly_once(tmp_path):
    tree = dict(factors={"data.arm": ["understanding", "generation", "mixed"]}, seeds=2,
                objective={"metric": "test/vqa/overall", "mode": "max"},
                search={"params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}})
    space = space_file(tmp_path, "crash", **tree)
    driver = uvlm(tmp_path, "sweep", str(space), "--trainable", "sweep_bodies:quick", "--max-concurrent", "1",
                  popen=True, env={"UVLM_TEST_TRIAL_SECONDS": "4"})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            time.sleep(1)
            if (tmp_path / "work" / "mlflow.db").exists() and _finished(tmp_path, "crash") >= 2 \
                    and _finished(tmp_path, "crash", "RUNNING") >= 1:
                break  # kill mid-trial: at least two finished and one still running
        assert driver.poll() is None, driver.stdout.read()
        (record,) = (tmp_path / "work" / "ray").glob("pids-*.json")
        recorded = json.loads(record.read_text())
        assert recorded["driver"]["pid"] == driver.pid and recorded["label"] == "crash"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        killed_at = time.time() * 1000
        # Ray's head processes share the driver's fate (PR_SET_PDEATHSIG) and die with it; its agents and idle
        # workers outlive it and quit on their own only once they notice, after a delay that depends on the
        # machine (CI once found them gone before the resume). Frozen, they are certain to be left behind.
        leftovers = [process for process in map(_recorded_process, recorded["processes"]) if process is not None]
        assert leftovers, recorded
        for process in leftovers:
            process.suspend()
    except BaseException:
        kill_ray_leftovers(tmp_path)
        raise
    finally:
        driver.kill()
    before = {run.info.run_id: run for run in runs_of(tmp_path, "crash")}
    finished_before = {run_id for run_id, run in before.items() if run.info.status == "FINISHED"}
    assert 2 <= len(finished_before) < 6
    assert any(run.info.status == "RUNNING" for run in before.values()), "the kill left trials running"

    try:
        resumed = uvlm(tmp_path, "sweep", str(space), "--trainable", "sweep_bodies:quick", "--resume",
                       "--max-concurrent", "2", env={"UVLM_TEST_TRIAL_SECONDS": "4"})
    finally:
        kill_ray_leftovers(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Ray processes left by the killed driver of sweep 'crash'" in resumed.stderr
    for process in leftovers:  # stopped by the resumed driver, before it started its own Ray
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE, process
    assert not list((tmp_path / "work" / "ray").glob("pids-*.json")), "a driver that ends removes its record"
    after = runs_of(tmp_path, "crash")
    assert not [run for run in after if run.info.status == "RUNNING"]
    finished = [run for run in after if run.info.status == "FINISHED"]
    assert sorted(int(run.data.tags["uvlm.slot"]) for run in finished) == list(range(6)), "each slot finished once"
    for run in after:
        if run.info.run_id in finished_before:
            assert run.data.tags["uvlm.attempt"] == "1" and run.info.end_time == before[run.info.run_id].info.end_time
    assert len({run.info.run_name for run in after}) == len(after), "run names are unique within the sweep"
    (parent,) = runs_of(tmp_path, "crash", "sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags["uvlm.sessions"] == "2"
    # --max-concurrent 2 on resume: two of the resumed trials ran at once (the first session ran one at a time)
    assert parent.data.tags["uvlm.concurrency"] == "2"
    spans = [(run.info.start_time, run.info.end_time) for run in finished if run.info.start_time > killed_at]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:]), spans

    # Optuna proposes what an uninterrupted sweep proposes, slot by slot.
    reference_space = space_file(tmp_path, "reference", **tree)
    reference = uvlm(tmp_path, "sweep", str(reference_space), "--trainable", "sweep_bodies:quick")
    assert reference.returncode == 0, reference.stderr
    proposed = {run.data.tags["uvlm.slot"]: run.data.params["optim.lr"] for run in finished}
    expected = {run.data.tags["uvlm.slot"]: run.data.params["optim.lr"] for run in runs_of(tmp_path, "reference")}
    assert proposed == expected


def _finished(folder: Path, sweep: str, status: str = "FINISHED") -> int:
    try:
        with sqlite3.connect(folder / "work" / "mlflow.db", timeout=5) as db:
            (count,) = db.execute(
                "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                "where r.status = ? and t.key = 'uvlm.role' and t.value = 'trial'", (status,)).fetchone()
            return count
    except sqlite3.Error:
        return 0
