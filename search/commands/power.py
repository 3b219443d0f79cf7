"""`uvlm power SWEEP`: the power of a sweep's headline results, to size the next sweep (more seeds, or a cluster)."""

from __future__ import annotations

import argparse

from search.commands import number
from trainables import limits


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "power",
        help="print each headline result's seed SD, detectable effect and the seeds a target half-width needs",
        description="Read the sweep's runs from MLflow, compute its headline results (those its space file declares, "
                    "else the default set) and print, for each: the seeds run, the SD over seeds of the per-seed "
                    "paired effect, the 95% interval, its half-width and the verdict, the smallest effect a two-sided "
                    "5% t-test detects with 80% power with those seeds, and the seeds a 95% half-width of "
                    "--half-width needs at that SD. --pool reads the same design run on other seeds (another "
                    "working folder) with it, as one sweep of all their seeds.",
    )
    parser.add_argument("sweep", metavar="SWEEP", help="the sweep's name (its MLflow experiment)")
    parser.add_argument("--half-width", type=number(limits.HALF_WIDTH, float), default=None, metavar="W",
                        help="target 95%% half-width on the statistic's own scale (default 0.02)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the working folder's sqlite store)")
    parser.add_argument("--pool", action="append", default=[], metavar="[SWEEP@]WHERE",
                        help="read the same design run on other seeds with it, as one sweep: WHERE is that sweep's "
                             "working folder (e.g. the --workdir of `uvlm demo --seeds 100-107`) or tracking URI; "
                             "SWEEP defaults to this sweep's name. Repeatable. Refused unless the cells, their "
                             "settings and the headlines agree and no seed is in two of the sweeps")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from trainables.mlflow_store import check_store
    from trainables import workspace

    check_store(workspace.tracking_uri(args.tracking_uri))  # before the analysis stack is imported
    import polars as pl

    from analysis.power import power_frame
    from analysis.results import FindingReport, family_sentence
    from analysis.sweep import sweep_findings
    from trainables.errors import UserError

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if args.pool:
        from analysis.pooling import default_ref, parse_ref, pool_seeds, pool_sentence, pooled_findings

        refs = [default_ref(args.sweep, args.tracking_uri), *(parse_ref(where, args.sweep) for where in args.pool)]
        runs, _, declared, findings = pooled_findings(refs)
        print(pool_sentence(pool_seeds(runs, refs)))
    else:
        _, _, declared, findings = sweep_findings(args.sweep, args.tracking_uri)
    headlines = [r for f in findings.values() if isinstance(f, FindingReport) for r in f.headlines]
    if not headlines:
        raise UserError(f"sweep {args.sweep!r} has no headline result to size: " +
                        "; ".join(f for f in findings.values() if isinstance(f, str)))
    source = "declared in the space file" if declared else "the default set (the space file declares none)"
    print(f"Headline results of {args.sweep!r} ({source}); power of a two-sided 5% t-test over per-seed effects:")
    print(family_sentence(headlines))
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, fmt_str_lengths=60, tbl_formatting="ASCII_MARKDOWN"):
        print(power_frame(headlines, args.half_width, verdicts=True))
    return 0
