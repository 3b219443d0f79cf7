"""`uvlm demo`: the main job, the three studies at CPU scale in one command (search/demo.py does the work)."""

from __future__ import annotations

import argparse

DEMO_HELP = """\
Run the three studies of the platform (spaces/mixing.yaml, alignment.yaml,
transfer.yaml) as sweeps named after them, at CPU scale with 3 seeds per
cell: generate the smart-watch data, train, report each study and write a
combined report (<working folder>/reports/index.html). About half an hour on a
2-core CPU. Interrupted? Run it again: finished sweeps are skipped and an
interrupted one resumes without redoing finished trials.
The Optuna studies run on request: `--study ratio` (the mixing ratio searched
by Optuna, about 8 minutes) and `--study tuning` (each arm tuned with the same
Optuna budget, its best re-run on held-out seeds and compared with the untuned
finding, about 13 minutes); they do not fit the 30 minutes beside the three.
Examples:
  uvlm demo
  uvlm demo --study tuning           # fair per-arm tuning, reported against the untuned finding
  uvlm demo --smoke                  # every step of all five studies at toy size, a few minutes (CI)
  uvlm demo --workdir /tmp/uvlm-demo
Exit code: 0 when every trial of every study finished, 1 otherwise, 2 on bad input.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="the main job: the three studies at CPU scale, reported",
                                   description=DEMO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="the same three studies shrunk to toy size (one seed, a few steps): checks the whole "
                             "path in minutes; sweeps are named <study>-smoke")
    parser.add_argument("--workdir", metavar="DIR",
                        help="working folder (default: $UVLM_WORKDIR, else ./uvlm-work)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking server or database (default: $MLFLOW_TRACKING_URI, else sqlite in the "
                             "working folder)")
    parser.add_argument("--study", action="append", metavar="NAME",
                        help="run only this study (repeatable): mixing, alignment, transfer, ratio or tuning "
                             "(default: the first three)")
    parser.add_argument("--trainable", metavar="MODULE:FUNCTION",
                        help="the function that trains one trial, as in `uvlm sweep` (default: trainables.launch:fit)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(smoke=args.smoke, workdir=args.workdir, tracking_uri=args.tracking_uri,
                                body=args.trainable, studies=args.study))
