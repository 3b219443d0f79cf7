"""Ray for uvlm's commands: start a local one or join a cluster, quietly and quickly, and stop it.

`uvlm sweep` and `uvlm train` both start Ray here, so a single run and a
sweep's trials see the same environment. A local Ray keeps its temp folder
(sockets, logs) under the working folder when that path is short enough.

A local Ray's processes (gcs_server, raylet, their workers) can outlive a
driver killed with `kill -9`. `start` records them in
`<workdir>/ray/pids-<driver pid>.json` (each pid with its create time, and the
driver's); `stop` removes the file. `stop_leftovers` (called by `--resume`)
stops the recorded processes, and what they started, of a driver that is gone:
only processes whose pid and create time both match the record, so nothing
this machine reused the pid for and no Ray another process started.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
from pathlib import Path

from search import same_code
from trainables.errors import UserError

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",  # no token-auth message on a local cluster
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # no actor warning per Train run
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard loggers per trial: MLflow has it all
    "TUNE_GLOBAL_CHECKPOINT_S": "2",  # snapshot often: a trial started after the last snapshot reruns on --resume
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0, Tune prints no tables (SweepCallback prints a line per change)
    # Ray Train's controller polls its workers every 2 s by default and exports Prometheus metrics:
    # polling every 0.2 s without metrics cut the fixed cost of a Train run from ~13 s to ~8.5 s
    # (measured, 1-step runs on 2 cores); multi-worker trials pay it once each.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}
# Ray puts Unix sockets under its temp folder; their paths must stay below the OS limit (107 bytes).
MAX_RAY_TEMP_LENGTH = 40


def start(address: str | None, folder: Path, verbose: bool = False, *, cpus: int | None = None,
          gpus: int | None = None, label: str = "", worker_log_level: str | None = None) -> dict[str, float]:
    """Start a local Ray (temp folder under `folder`) or join the cluster at `address`; -> its resources.

    verbose: the workers' output reaches this terminal; `worker_log_level` (e.g. "ERROR") then
    keeps the Python loggers of the job's processes to that level, and Ray's default otherwise.
    A local Ray's processes are recorded under `folder` with `label` (the sweep's name), for `stop_leftovers`.
    """
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        ray.shutdown()
    quiet = dict(include_dashboard=False, log_to_driver=verbose, configure_logging=True,
                 logging_level=logging.INFO if verbose else logging.WARNING)
    if worker_log_level is not None:
        quiet["logging_config"] = ray.LoggingConfig(log_level=worker_log_level)
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, runtime_env={"env_vars": RAY_ENV}, **quiet)
        else:
            ray.init(address="local", num_cpus=cpus or os.cpu_count(), num_gpus=gpus, _temp_dir=temp_dir(folder),
                     **quiet)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as error:
        raise UserError(f"cannot {'join the Ray cluster at ' + repr(address) if address else 'start Ray'}: "
                        f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if not verbose:
        for logger_name in ("ray", "ray.tune", "ray.train"):
            logging.getLogger(logger_name).setLevel(logging.ERROR)
    if not address:
        _record_processes(folder, label)
    try:
        same_code.check_workers()
    except UserError:
        stop()
        raise
    return dict(ray.cluster_resources())


def stop() -> None:
    import ray

    global _record
    if ray.is_initialized():
        ray.shutdown()
    if _record is not None:
        _record.unlink(missing_ok=True)
        _record = None


# ---- what a killed driver left running ------------------------------------------------------------

PIDS_FOLDER = "ray"
_record: Path | None = None  # this driver's record, removed by stop()


def pids_folder(folder: Path) -> Path:
    return folder / PIDS_FOLDER


def _record_processes(folder: Path, label: str) -> None:
    """The driver's child processes right after ray.init: Ray's head processes (workers are theirs)."""
    import psutil

    global _record
    driver = psutil.Process()
    processes = []
    for child in driver.children(recursive=True):
        try:
            processes.append({"pid": child.pid, "create_time": child.create_time(), "name": child.name()})
        except psutil.Error:
            continue
    target = pids_folder(folder) / f"pids-{driver.pid}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    record = {"label": label, "driver": {"pid": driver.pid, "create_time": driver.create_time()}, "processes": processes}
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1))
    temporary.replace(target)
    _record = target


def stop_leftovers(folder: Path, label: str, grace_s: float = 5.0) -> list[int]:
    """Stop the Ray processes recorded under `folder` with `label` by drivers that are gone (SIGTERM, then
    SIGKILL after `grace_s`); -> the pids stopped. A record whose driver still runs is left alone."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for path in sorted(pids_folder(folder).glob("pids-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("label") != label:
            continue
        if _same_process(record["driver"]) is not None:
            continue  # its driver still runs: its Ray is in use
        for entry in record.get("processes", []):
            process = _same_process(entry)
            if process is None:
                continue
            try:
                found.update({child.pid: child for child in process.children(recursive=True)})
            except psutil.Error:
                pass
            found[process.pid] = process
        path.unlink(missing_ok=True)
    processes = list(found.values())
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
            process.resume()  # a stopped process (Ctrl-Z, a debugger) acts on SIGTERM only once continued
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return sorted(found)


def _same_process(entry: dict):
    """The process of a recorded pid if it is still the one recorded (same create time), else None."""
    import psutil

    try:
        process = psutil.Process(int(entry["pid"]))
        if abs(process.create_time() - float(entry["create_time"])) < 0.01 and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except (psutil.Error, KeyError, TypeError, ValueError):
        pass
    return None


def check_reachable(address: str) -> None:
    """ray.init retries an unreachable HOST:PORT for many minutes; one TCP connection answers in seconds."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", ray:// client addresses: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise UserError(f"nothing answers at the Ray cluster address {address!r} ({error.strerror or error}); "
                        f"start the head with `ray start --head --port {port}`, or drop --address") from None


def temp_dir(folder: Path) -> str:
    """<workdir>/ray when its path is short enough for Ray's sockets, else a short one under /tmp."""
    path = folder / "ray"
    if len(str(path)) > MAX_RAY_TEMP_LENGTH:
        path = Path("/tmp") / f"uvlm-ray-{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def resources(address: str | None, gpus_needed: bool = False) -> dict[str, float]:
    """CPUs and GPUs that trials can use: this machine, or the cluster at `address` (joined briefly)."""
    if address:
        try:
            return start(address, Path.cwd())
        finally:
            stop()
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(_local_gpus()) if gpus_needed else 0.0}


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA means no GPUs
        return 0
