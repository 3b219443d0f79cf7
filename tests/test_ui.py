"""`uvlm ui` serves the MLflow UI of the embedded store on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request


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
        os.killpg(process.pid, 9)  # the UI and the server workers it started, by our child's process group
        process.wait(timeout=30)
    assert (tmp_path / "work" / "mlflow.db").exists()


def test_sweep_experiments_open_on_the_training_runs_view(tmp_path):
    """MLflow 3's UI opens an experiment without a kind on GenAI tabs; ours are tagged as model training (Runs tab)."""
    from search import tracking
    from trainables import mlflow_layout as layout

    client = tracking.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    created = layout.experiment_id(client, "mixing", str(tmp_path / "artifacts"))
    assert client.get_experiment(created).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("made-by-hand")  # e.g. by an older uvlm
    assert layout.experiment_id(client, "made-by-hand") == older
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"


def ui_command(monkeypatch, tmp_path, capsys, *flags: str) -> tuple[list[str], str]:
    """What `uvlm ui` would start (the MLflow UI itself is not started) and what it printed on stderr."""
    from search.cli import main

    started = []
    monkeypatch.setenv("UVLM_WORKDIR", str(tmp_path / "work"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(subprocess, "call", lambda command: started.append(command) or 0)
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
