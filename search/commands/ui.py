"""`uvlm ui`: the MLflow UI for the embedded store, on 127.0.0.1 unless --host says otherwise."""

from __future__ import annotations

import argparse

from search.commands import number
from trainables import limits

LOOPBACK = "127.0.0.1"

UI_HELP = """\
Start the MLflow UI for the working folder's embedded store (sqlite) on
127.0.0.1 (this machine only) and print its address; Ctrl-C, SIGTERM or
SIGHUP stops it and every worker it started. The UI has no login and can
change runs: --host 0.0.0.0 opens it to the network, with a warning. Sweeps
are experiments named after the sweep, trials are runs nested under the sweep's run; single
`uvlm train` runs are in experiment uvlm-train. Example:
  uvlm ui --port 5000
  uvlm ui --host 0.0.0.0      # reachable from other machines (trusted networks only)
The Optuna studies (one per cell of a searched sweep) are in <working folder>/optuna.db:
  uvlm dashboard                     # optuna-dashboard on 127.0.0.1:8080
"""


RUNS_VIEW = "/#/experiments?workflowType=machine_learning"
"""MLflow 3's UI opens on its GenAI view unless asked for the model-training one, where sweeps and runs are."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ui", help="start the MLflow UI for the embedded store on 127.0.0.1",
                                   description=UI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=number(limits.PORT), default=5000, help="port (default 5000)")
    parser.add_argument("--host", default=LOOPBACK,
                        help=f"address to listen on (default {LOOPBACK}: this machine only); e.g. 0.0.0.0 serves "
                             f"the UI, without a login, to every machine that reaches this one")
    parser.add_argument("--workdir", metavar="DIR", help="working folder (default: $UVLM_WORKDIR, else ./uvlm-work)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="a store other than the embedded one (default: $MLFLOW_TRACKING_URI, else the embedded sqlite)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from search import server, tracking
    from trainables import workspace

    wide = _check_host(args.host)
    uri = workspace.tracking_uri(args.tracking_uri, args.workdir)
    if uri.startswith(("http://", "https://")):
        tracking.connect(uri)
        print(f"uvlm: {uri} is a tracking server already: open {uri.rstrip('/')}{RUNS_VIEW} in a browser", flush=True)
        return 0
    tracking.connect(uri)  # creates the embedded store once, so the UI never races its migrations
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
               "--port", str(args.port), "--workers", "1"]
    if not (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        command += ["--default-artifact-root", workspace.artifact_root(args.workdir)]
    if wide:
        print(f"uvlm: warning: --host {args.host} serves the MLflow UI beyond this machine, without a login; anyone "
              f"who reaches port {args.port} can read and change every run", file=sys.stderr, flush=True)
    shown = LOOPBACK if args.host in ("0.0.0.0", "::") else args.host
    print(f"uvlm: MLflow UI for {uri} at http://{shown}:{args.port}{RUNS_VIEW} (Ctrl-C stops it)", flush=True)
    return server.serve(command)


def _check_host(host: str) -> bool:
    """True when `host` is reachable from other machines (not loopback); a UserError when it does not resolve."""
    import ipaddress
    import socket

    from trainables.errors import UserError

    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError):
        raise UserError(f"--host {host!r} is not an address or a known host name") from None
    return not all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)
