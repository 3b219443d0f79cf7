"""Run a server (the MLflow UI, optuna-dashboard) in the foreground until it exits or uvlm is told to stop,
and leave none of its processes behind either way.

`mlflow ui` starts a uvicorn worker, a job runner and huey consumers; stopping
the process uvlm started leaves those running and holding the port. So the
server gets a process group of its own (a new session), and SIGINT (Ctrl-C),
SIGTERM (a process manager, `timeout`) and SIGHUP (a closed terminal) all end
the whole group: SIGTERM first, SIGKILL for what is left after `GRACE_S`.
Being in its own session, the server no longer sees the terminal's Ctrl-C
itself: uvlm forwards it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_S = 10.0
POLL_S = 0.2


def serve(command: list[str]) -> int:
    """Run `command` until it exits (-> its exit code) or a stop signal arrives (-> 0); its group is gone after."""
    stopped = False

    def stop(signum: int, frame: object) -> None:
        # Only a flag: a handler that raised could land in the clean-up below and cut it short.
        nonlocal stopped
        stopped = True

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        server = subprocess.Popen(command, start_new_session=True)
        try:
            while server.poll() is None and not stopped:
                time.sleep(POLL_S)
        finally:
            end_group(server)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if stopped else server.returncode


def end_group(leader: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM to every process of the leader's group, SIGKILL to those still there after `grace_s`; returns when
    the group is empty. Also after the leader exited by itself: its workers may outlive it."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(leader.pid, signum)
        deadline = time.monotonic() + grace_s
        while _group_alive(leader) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _group_alive(leader):
            return


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def _group_alive(leader: subprocess.Popen) -> bool:
    leader.poll()  # reaps the leader: a zombie would keep its group alive
    try:
        os.killpg(leader.pid, 0)
    except ProcessLookupError:
        return False
    return True
