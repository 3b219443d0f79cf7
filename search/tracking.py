"""The tracking store and provenance: `connect` checks a tracking URI once and fails fast; versions, git commit.

What goes into the store (tags, run names, run lifecycle, metric names) is
owned by `trainables.mlflow_names` and written by `trainables.mlflow_io`; whether a store can be opened
is `trainables.mlflow_store.check_store`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from trainables.errors import UserError
from trainables.mlflow_io import first_line
from trainables.mlflow_store import check_store, sqlite_path

# tokenizers and pillow shape the data itself (the BPE's splits, the faces' pixels): a result that moves between
# environments with the code unchanged is traced through these.
PACKAGES = ("uvlm", "torch", "ray", "optuna", "mlflow", "transformers", "tokenizers", "pillow", "peft", "pyarrow",
            "polars", "pydantic", "numpy")


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


def client(uri: str):
    """An MlflowClient without checks, for processes started after `connect` checked the store."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


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
