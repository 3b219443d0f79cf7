"""Where a project's state lives: one working folder, and the MLflow tracking URI.

Everything uvlm writes by default goes under the working folder (`./uvlm-work`,
or `$UVLM_WORKDIR`): the embedded MLflow store `mlflow.db` with its artifacts,
the Optuna storage `optuna.db`, Ray's results and single-run outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

from trainables.errors import UserError

WORKDIR_ENV = "UVLM_WORKDIR"


def workdir(explicit: str | Path | None = None) -> Path:
    """The working folder (created on first use)."""
    path = Path(explicit or os.environ.get(WORKDIR_ENV) or "uvlm-work").resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file there, or a path through one
        reason = "a file is there" if isinstance(error, (FileExistsError, NotADirectoryError)) else error.strerror
        raise UserError(f"working folder {str(path)!r} cannot be created ({reason}); pass --workdir or set "
                        f"${WORKDIR_ENV}") from None
    return path


def tracking_uri(explicit: str | None = None, folder: str | Path | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the embedded sqlite store in the working folder."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{workdir(folder) / 'mlflow.db'}"


def artifact_root(folder: str | Path | None = None) -> str:
    """Artifact location for experiments created in the embedded store."""
    return (workdir(folder) / "mlartifacts").as_uri()


def optuna_storage(folder: str | Path | None = None) -> str:
    """The RDB storage of Optuna studies, beside the MLflow store (`optuna-dashboard` opens it)."""
    return f"sqlite:///{workdir(folder) / 'optuna.db'}"


def output_folder(path: str | Path, option: str = "--out") -> Path:
    """A folder a command will write into; a file at that path is a UserError before any work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {str(path)!r} is a file; give a folder")
    return path
