"""`uvlm dashboard`: optuna-dashboard for the working folder's Optuna studies, on 127.0.0.1.

A separate command beside `uvlm ui` (the MLflow UI): the two are separate servers
with their own ports and lifetimes, and each one's command line stays one line.
"""

from __future__ import annotations

import argparse

DASHBOARD_HELP = """\
Serve the working folder's Optuna studies (<working folder>/optuna.db) with
optuna-dashboard on 127.0.0.1 and print its address; Ctrl-C stops it. Each
searched sweep has one study per cell, named <sweep>/<cell>; an Optuna trial is
one configuration, scored on the sweep's seeds (its value is their mean), and
carries each seed's MLflow run id as user attribute mlflow_run_id.seed=<seed>.
The MLflow side: `uvlm ui`. Example:
  uvlm dashboard --port 8080
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dashboard", help="start optuna-dashboard for the working folder's Optuna studies",
                                   description=DASHBOARD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    parser.add_argument("--workdir", metavar="DIR", help="working folder (default: $UVLM_WORKDIR, else ./uvlm-work)")
    parser.set_defaults(run=run)


def command_line(workdir: str | None = None, port: int = 8080) -> list[str]:
    """The optuna-dashboard process `uvlm dashboard` runs (also what `uvlm demo` suggests)."""
    import shutil
    import sys
    from pathlib import Path

    from trainables import workspace

    beside = Path(sys.executable).parent / "optuna-dashboard"  # the console script of this environment first
    program = str(beside) if beside.is_file() else shutil.which("optuna-dashboard") or "optuna-dashboard"
    return [program, workspace.optuna_storage(workdir), "--host", "127.0.0.1", "--port", str(port), "--quiet"]


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from search import server
    from search.tuning import check_storage
    from trainables import workspace
    from trainables.errors import UserError

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535 (got {args.port})")
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise UserError("optuna-dashboard is not installed; reinstall uvlm (pip install -e .), which depends on it")
    storage = workspace.optuna_storage(args.workdir)
    if not workspace.workdir(args.workdir).joinpath("optuna.db").is_file():
        raise UserError(f"no Optuna studies yet: {storage} does not exist (a sweep with search.params creates it)")
    check_storage(storage)
    print(f"uvlm: Optuna dashboard for {storage} at http://127.0.0.1:{args.port}/dashboard (Ctrl-C stops it)", flush=True)
    return server.serve(command_line(args.workdir, args.port))
