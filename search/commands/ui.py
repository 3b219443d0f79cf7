"""`uvlm ui`: the MLflow UI for the embedded store, on 127.0.0.1."""

from __future__ import annotations

import argparse

UI_HELP = """\
Start the MLflow UI for the working folder's embedded store (sqlite) on
127.0.0.1 and print its address; Ctrl-C stops it. Sweeps are experiments
named after the sweep, trials are runs nested under the sweep's run; single
`uvlm train` runs are in experiment uvlm-train. Example:
  uvlm ui --port 5000
The Optuna studies (one per cell of a searched sweep) are in <working folder>/optuna.db:
  uvlm dashboard                     # optuna-dashboard on 127.0.0.1:8080
"""


RUNS_VIEW = "/#/experiments?workflowType=machine_learning"
"""MLflow 3's UI opens on its GenAI view unless asked for the model-training one, where sweeps and runs are."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ui", help="start the MLflow UI for the embedded store on 127.0.0.1",
                                   description=UI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    parser.add_argument("--workdir", metavar="DIR", help="working folder (default: $UVLM_WORKDIR, else ./uvlm-work)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="a store other than the embedded one (default: $MLFLOW_TRACKING_URI, else the embedded sqlite)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os
    import subprocess
    import sys

    from search import tracking
    from trainables import workspace
    from trainables.errors import UserError

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535 (got {args.port})")
    uri = workspace.tracking_uri(args.tracking_uri, args.workdir)
    if uri.startswith(("http://", "https://")):
        tracking.connect(uri)
        print(f"uvlm: {uri} is a tracking server already: open {uri.rstrip('/')}{RUNS_VIEW} in a browser", flush=True)
        return 0
    tracking.connect(uri)  # creates the embedded store once, so the UI never races its migrations
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(args.port), "--workers", "1"]
    if not (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        command += ["--default-artifact-root", workspace.artifact_root(args.workdir)]
    print(f"uvlm: MLflow UI for {uri} at http://127.0.0.1:{args.port}{RUNS_VIEW} (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0
