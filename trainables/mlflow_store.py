"""Whether a tracking URI can be opened, found before MLflow touches it (readers and writers ask the same).

MLflow opens any sqlite file it is given and creates its tables in it, and its client retries an
unreachable server for minutes: `check_store` answers both at once with a UserError naming the store.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

from trainables.errors import UserError


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
