"""`uvlm dashboard` serves the working folder's Optuna studies; headless Chromium finds a study's trials on the page."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest

from test_ui import assert_stops_cleanly, free_port, kill_all, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _study(workdir) -> optuna.Study:
    """A study as a searched sweep leaves it: named <sweep>/<cell>, one trial per configuration, run ids attached."""
    workdir.mkdir(parents=True)
    study = optuna.create_study(study_name="ratio/all", storage=f"sqlite:///{workdir / 'optuna.db'}", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for number in range(3):
        trial = study.ask()
        trial.suggest_float("data.generation_ratio", 0.1, 2.0)
        trial.set_user_attr("mlflow_run_id.seed=0", f"run{number}seed0")
        study.tell(trial, 0.5 + 0.1 * number)
    return study


def test_dashboard_refuses_a_missing_storage(tmp_path):
    env = {**os.environ, "UVLM_WORKDIR": str(tmp_path / "empty")}
    result = subprocess.run([sys.executable, "-m", "search.cli", "dashboard"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no Optuna studies yet" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["TERM", "HUP", "INT"])
def test_dashboard_leaves_nothing_behind_when_stopped(tmp_path, signum):
    _study(tmp_path / "work")
    port = free_port()
    process, log = start_server(["dashboard", "--port", str(port)], tmp_path / "work",
                                f"http://127.0.0.1:{port}/api/studies")
    assert_stops_cleanly(process, log, signum, port)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make install-test installs it)")
def test_dashboard_shows_the_studys_trials_in_headless_chromium(tmp_path):
    _study(tmp_path / "work")
    port = free_port()
    env = {**os.environ, "UVLM_WORKDIR": str(tmp_path / "work")}
    process = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        first = process.stdout.readline()
        assert f"at http://127.0.0.1:{port}/dashboard" in first, first
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.loads(response.read())["study_summaries"]
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "optuna-dashboard did not answer within 120 s"
                time.sleep(1)
        (study,) = [summary for summary in studies if summary["study_name"] == "ratio/all"]
        page = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000", "--dump-dom",
             f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}/trials"],
            capture_output=True, text=True, timeout=120).stdout
        assert "ratio/all" in page
        for number in range(3):
            assert f"Trial {number}" in page
        assert "run0seed0" in page  # the selected trial's MLflow run id, shown as its user attribute
    finally:
        kill_all(process)
