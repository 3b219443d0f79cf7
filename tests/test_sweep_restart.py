"""What a resumed sweep changes before it starts again: the new --max-concurrent, and the Ray processes its
killed predecessor left (stopped only when they are the recorded ones). End to end in
tests/test_sweep_run.py (test_kill_9_of_the_driver_then_resume_finishes_every_trial_exactly_once)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
from ray import tune
from ray.tune.search import Searcher

from search import cluster
from search.concurrency import SessionLimiter, set_concurrency


class Fixed(Searcher):
    def suggest(self, trial_id):
        return {"x": 1}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def trainable(config):
    return {"score": config["x"]}


def test_a_restored_tuner_runs_the_new_number_of_trials_at_once(tmp_path):
    limiter = SessionLimiter(Fixed(metric="score", mode="max"), max_concurrent=1)
    tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=limiter, num_samples=4),
               run_config=tune.RunConfig(name="restore", storage_path=str(tmp_path)))
    tuner = tune.Tuner.restore(str(tmp_path / "restore"), trainable=trainable)
    set_concurrency(tuner, 3)
    restored = tuner._local_tuner._tune_config
    assert isinstance(restored.search_alg, SessionLimiter) and restored.search_alg.max_concurrent == 3
    assert restored.max_concurrent_trials is None  # Tune wraps no limiter of its own around ours
    # Tune loads the limiter's saved state over it when the run resumes: the session's limit stays.
    saved = limiter.get_state()
    restored.search_alg.set_state(saved)
    assert saved["max_concurrent"] == 1 and restored.search_alg.max_concurrent == 3


def _record(folder, label, driver, processes):
    folder = cluster.pids_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pids-{driver.pid}-{label}.json"
    path.write_text(json.dumps({"label": label, "driver": {"pid": driver.pid, "create_time": driver.create_time()},
                                "processes": [{"pid": p.pid, "create_time": p.create_time(), "name": p.name()}
                                              for p in processes]}))
    return path


def test_leftovers_of_a_dead_driver_are_stopped_and_nothing_else(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a driver that is gone
    record = {"pid": dead.pid, "create_time": psutil.Process(dead.pid).create_time()}
    dead.wait()
    sleepers = [subprocess.Popen(["sleep", "120"]) for _ in range(4)]
    leftover, reused, foreign, live_drivers = (psutil.Process(p.pid) for p in sleepers)
    try:
        # a record of the dead driver: one process still the recorded one, one whose pid was reused since
        folder = cluster.pids_folder(tmp_path)
        folder.mkdir(parents=True)
        (folder / f"pids-{record['pid']}.json").write_text(json.dumps({
            "label": "crash", "driver": record,
            "processes": [{"pid": leftover.pid, "create_time": leftover.create_time(), "name": "raylet"},
                          {"pid": reused.pid, "create_time": reused.create_time() - 100, "name": "gcs_server"}]}))
        # a record of this live process (a running sweep), and one of another sweep
        live = _record(tmp_path, "crash", psutil.Process(), [live_drivers])
        other = _record(tmp_path, "other", psutil.Process(), [foreign])
        began = time.monotonic()
        assert cluster.stop_leftovers(tmp_path, "crash", grace_s=5) == [leftover.pid]
        assert time.monotonic() - began < 5, "sleep stops on SIGTERM"
        assert not leftover.is_running() or leftover.status() == psutil.STATUS_ZOMBIE
        for untouched in (reused, foreign, live_drivers):
            assert untouched.is_running() and untouched.status() != psutil.STATUS_ZOMBIE
        assert not (folder / f"pids-{record['pid']}.json").exists() and live.exists() and other.exists()
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
