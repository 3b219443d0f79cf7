"""The tracking store and provenance: `connect` checks a tracking URI once and fails fast; versions, git commit.

What goes into the store (tags, run names, run lifecycle, metric names) is
owned by `trainables.mlflow_layout`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
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
    migrations ("table ... already exists"), so the driver creates it before
    any trial starts, and commands started side by side on one new store (two
    `uvlm train`) take turns through a lock file (`_creation_lock`).
    """
    import logging

    with _creation_lock(uri):
        check_store(uri, create=True)
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
        logging.getLogger("alembic").setLevel(logging.WARNING)
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        except Exception as error:  # noqa: BLE001 - any failure here means the store is unusable
            raise UserError(f"tracking URI {uri!r} cannot be used: {first_line(error)}") from None
    return client


@contextlib.contextmanager
def _creation_lock(uri: str):
    """Held while an sqlite store is opened (and maybe created). The lock file lives in the temporary folder,
    named after the store's absolute path, so that nothing is written beside a store that may not be MLflow's."""
    path = sqlite_path(uri) if uri.lower().startswith("sqlite:") else None
    if path is None or not str(path) or str(path) == ":memory:":
        yield
        return
    import hashlib
    import tempfile

    from filelock import FileLock, Timeout

    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"uvlm-store-{digest}.lock"
    try:
        with FileLock(str(lock), timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise UserError(f"tracking store {path} is being opened by another uvlm command (lock {lock}) for more "
                        f"than {LOCK_TIMEOUT_S} s; wait for it, or delete the lock if no uvlm command runs") from None


LOCK_TIMEOUT_S = 120


def check_store(uri: str, create: bool = False) -> None:
    """A UserError naming the store when `uri` cannot be opened, found before MLflow touches it.

    MLflow opens any sqlite file it is given and creates its tables in it (in
    another program's database too), so an existing file must already be an
    MLflow store; a missing one is created only when `create` (writers).
    """
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        _check_server(uri)
    elif scheme == "sqlite":
        _check_sqlite(uri, create)
    elif scheme == "file" or uri.startswith("/"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
            raise UserError(f"tracking URI {uri!r} is a folder store, which MLflow 3 refuses (unless "
                            f"MLFLOW_ALLOW_FILE_STORE=true); use a database such as sqlite:///PATH/mlflow.db")
    elif scheme not in ("postgresql", "mysql", "mssql", "databricks"):
        raise UserError(f"tracking URI {uri!r}: unsupported scheme {scheme or '(none)'!r}; "
                        f"use sqlite:///PATH, http(s)://HOST:PORT or a database URL")


def sqlite_path(uri: str) -> Path:
    """sqlite:///relative.db -> relative.db, sqlite:////abs/m.db -> /abs/m.db (SQLAlchemy's rule)."""
    path = uri.removeprefix("sqlite://").split("?", 1)[0]
    return Path(path[1:] if path.startswith("/") else path)


MLFLOW_TABLES = {"alembic_version", "experiments", "runs", "metrics", "params", "tags"}


def _check_sqlite(uri: str, create: bool) -> None:
    path = sqlite_path(uri)
    store = f"MLflow store {str(path)!r} (tracking URI {uri})"
    if path.is_dir():
        raise UserError(f"{store} is a folder; an sqlite store is a file, e.g. sqlite:///{path / 'mlflow.db'}")
    if not path.exists():
        if not create:
            raise UserError(f"no MLflow store at {str(path)!r} (tracking URI {uri}); pass --tracking-uri or run a sweep first")
        if not path.parent.is_dir():
            raise UserError(f"tracking URI {uri!r}: folder {str(path.parent)!r} does not exist")
        return
    try:
        with path.open("rb") as file:
            header = file.read(16)
    except OSError as error:
        raise UserError(f"{store} cannot be read ({error.strerror})") from None
    if header != b"SQLite format 3\x00":
        raise UserError(f"{store} is not an SQLite database" + (" (an empty file)" if not header else ""))
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as error:
        raise UserError(f"{store} cannot be read: {error}") from None
    if not MLFLOW_TABLES <= tables:
        raise UserError(f"{store} is an SQLite database of another program (no MLflow tables); "
                        f"point --tracking-uri at an MLflow store, or at a new file")


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
