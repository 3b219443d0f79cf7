"""`uvlm report SWEEP`: turn a sweep's MLflow runs into findings with intervals, figures and a report."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write the findings report of a finished sweep",
        description="Read the sweep's trial runs from MLflow, estimate the three findings with 95% bootstrap "
                    "intervals over seeds, and write report.md, a self-contained report.html, findings.json, "
                    "tables (CSV/Parquet) and figures; they are also logged on the sweep's parent run.",
    )
    parser.add_argument("sweep", metavar="SWEEP", help="the sweep's name (its MLflow experiment)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: <workdir>/reports/SWEEP)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the working folder's sqlite store)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report on the parent MLflow run")
    parser.add_argument("--pool", action="append", default=[], metavar="[SWEEP@]WHERE",
                        help="report the same design run on other seeds with it, as one sweep (see `uvlm power "
                             "--help`); the report goes to <workdir>/reports/SWEEP-pooled and is not logged on a run")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from trainables.mlflow_store import check_store
    from trainables import workspace

    check_store(workspace.tracking_uri(args.tracking_uri))  # before the analysis stack is imported
    if args.out:
        workspace.output_folder(args.out)
    from analysis.report import build_report
    from trainables.mlflow_names import FINDINGS_FILE, REPORT_HTML, REPORT_MARKDOWN

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from analysis.pooling import parse_ref

    pool = [parse_ref(where, args.sweep) for where in args.pool]
    out = build_report(args.sweep, args.tracking_uri, args.out, log_artifacts=not args.no_log, pool=pool).out
    print(f"report: {out / REPORT_HTML}")
    print(f"        {out / REPORT_MARKDOWN}, {out / FINDINGS_FILE}")
    return 0
