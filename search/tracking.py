"""The tracking store and provenance: `connect` checks a tracking URI once and fails fast; versions, git commit.

What goes into the store (tags, run names, run lifecycle, metric names) is
owned by `trainables.mlflow_layout`.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

from trainables.errors import UserError
from trainables.mlflow_layout import first_line

PACKAGES = ("uvlm", "torch", "ray", "optuna", "mlflow", "transformers", "peft", "pyarrow", "polars", "pydantic", "numpy")


def connect(uri: str):
    """An MlflowClient for `uri`, checked: a server must answer, an sqlite store is created here, once.

    A fresh sqlite store opened by several processes at once fails in its
    migrations, so the driver creates it before any trial starts.
    """
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    logging.getLogger("alembic").setLevel(logging.WARNING)
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        _check_server(uri)
    elif scheme == "sqlite":
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise UserError(f"tracking URI {uri!r}: folder {str(folder)!r} does not exist")
    elif scheme not in ("file", "postgresql", "mysql", "mssql", "databricks") and not uri.startswith("/"):
        raise UserError(f"tracking URI {uri!r}: unsupported scheme {scheme or '(none)'!r}; "
                        f"use sqlite:///PATH, http(s)://HOST:PORT or a database URL")
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure here means the store is unusable
        raise UserError(f"tracking URI {uri!r} cannot be used: {first_line(error)}") from None
    return client


def client(uri: str):
    """An MlflowClient without checks, for processes started after `connect` checked the store."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """MLflow's client retries for minutes; ask /health once with a short timeout instead."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status != 200:
                raise UserError(f"tracking server {uri} answered /health with HTTP {response.status}")
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"tracking server {uri} is unreachable ({reason}); start it or drop --tracking-uri "
                        f"to use the embedded store") from None


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def git_commit(folder: Path | None = None) -> str:
    """HEAD of the checkout uvlm runs from, '+dirty' when it has uncommitted changes; 'unknown' outside git."""
    folder = folder or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
