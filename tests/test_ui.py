"""`uvlm ui` serves the MLflow UI of the embedded store on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_serves_the_embedded_store(tmp_path):
    port = free_port()
    env = {**os.environ, "UVLM_WORKDIR": str(tmp_path / "work")}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        first = process.stdout.readline()
        assert f"at http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning" in first  # not the GenAI view
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                time.sleep(1)
        else:
            raise AssertionError("the MLflow UI did not answer /health within 120 s")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?max_results=5", timeout=10) as response:
            assert b"Default" in response.read()
    finally:
        kill_all(process)
    assert (tmp_path / "work" / "mlflow.db").exists()


def start_server(argv: list[str], workdir, ready_url: str) -> tuple[subprocess.Popen, Path]:
    """`uvlm ARGV` as a real process, once `ready_url` answers; -> it and the file of its stderr."""
    env = {**os.environ, "UVLM_WORKDIR": str(workdir)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = workdir.parent / "uvlm-stderr.txt"  # a file, not a pipe: a server left behind would keep a pipe open
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "search.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                                   stderr=stderr, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(ready_url, timeout=2):
                return process, log
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"{ready_url} did not answer: {log.read_text()[-2000:]}") from None
            time.sleep(0.5)


def servers_of(process: subprocess.Popen) -> list[psutil.Process]:
    """Every process `process` started, once their number stops growing (mlflow starts its workers after /health)."""
    found: list[psutil.Process] = []
    for _ in range(20):
        now = psutil.Process(process.pid).children(recursive=True)
        if found and len(now) == len(found):
            return now
        found = now
        time.sleep(1)
    return found


def assert_stops_cleanly(process: subprocess.Popen, log: Path, signum: int, port: int) -> None:
    """`signum` to the uvlm process alone (as a process manager, `timeout` or a closed terminal sends it): uvlm
    exits 0, none of the processes it started is left, and the next server can listen on the port."""
    started = servers_of(process)
    assert started, "the server was not started"
    try:
        os.kill(process.pid, signum)
        assert process.wait(timeout=60) == 0, log.read_text()[-2000:]
        left = []
        for server in started:
            try:
                if server.is_running() and server.status() != psutil.STATUS_ZOMBIE:
                    left.append(" ".join(server.cmdline())[:80])
            except psutil.NoSuchProcess:
                pass
        assert not left, f"{len(left)} of {len(started)} processes left after {signal.Signals(signum).name}: {left}"
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no obstacle
            sock.bind(("127.0.0.1", port))  # OSError 'Address already in use' while a server still listens
            sock.listen()
    finally:
        kill_all(process, started)


def kill_all(process: subprocess.Popen, started: Sequence[psutil.Process] = ()) -> None:
    """The uvlm process, what it started, and what it started earlier (`started`), whatever a failed test left."""
    try:
        started = [*started, *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    for server in started:
        try:
            server.kill()  # psutil checks the pid is still that process
        except psutil.NoSuchProcess:
            pass
    process.kill()
    process.wait(timeout=30)


@pytest.mark.parametrize("signum", [signal.SIGTERM,  # HUP and INT take the same path: slow, .ci/run runs them
                                    pytest.param(signal.SIGHUP, marks=pytest.mark.slow),
                                    pytest.param(signal.SIGINT, marks=pytest.mark.slow)], ids=["TERM", "HUP", "INT"])
def test_ui_leaves_nothing_behind_when_stopped(tmp_path, signum):
    """mlflow ui starts uvicorn, a job runner and huey consumers; they held the port after uvlm got SIGTERM."""
    port = free_port()
    process, log = start_server(["ui", "--port", str(port)], tmp_path / "work", f"http://127.0.0.1:{port}/health")
    assert_stops_cleanly(process, log, signum, port)


def test_sweep_experiments_open_on_the_training_runs_view(tmp_path):
    """MLflow 3's UI opens an experiment without a kind on GenAI tabs; ours are tagged as model training (Runs tab)."""
    from search import tracking
    from trainables import mlflow_io

    client = tracking.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    created = mlflow_io.experiment_id(client, "mixing", str(tmp_path / "artifacts"))
    assert client.get_experiment(created).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("made-by-hand")  # e.g. by an older uvlm
    assert mlflow_io.experiment_id(client, "made-by-hand") == older
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"


def ui_command(monkeypatch, tmp_path, capsys, *flags: str) -> tuple[list[str], str]:
    """What `uvlm ui` would start (the MLflow UI itself is not started) and what it printed on stderr."""
    from search import server
    from search.cli import main

    started = []
    monkeypatch.setenv("UVLM_WORKDIR", str(tmp_path / "work"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(server, "serve", lambda command: started.append(command) or 0)
    assert main(["ui", "--port", "5123", *flags]) == 0
    (command,) = started
    return command, capsys.readouterr().err


def test_ui_binds_to_this_machine_only_by_default(monkeypatch, tmp_path, capsys):
    command, err = ui_command(monkeypatch, tmp_path, capsys)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "warning" not in err


def test_a_wider_bind_needs_the_flag_and_warns(monkeypatch, tmp_path, capsys):
    command, err = ui_command(monkeypatch, tmp_path, capsys, "--host", "0.0.0.0")
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "uvlm: warning: --host 0.0.0.0 serves the MLflow UI beyond this machine" in err
    command, err = ui_command(monkeypatch, tmp_path, capsys, "--host", "localhost")  # loopback by name: no warning
    assert command[command.index("--host") + 1] == "localhost" and "warning" not in err
