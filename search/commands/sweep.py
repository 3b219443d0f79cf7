"""`uvlm sweep` and `uvlm validate`: run a space file as a Ray Tune + Optuna sweep logged to MLflow, or check it."""

from __future__ import annotations

import argparse
import sys

from search.commands import number
from trainables import limits

SWEEP_HELP = """\
Run a space file (spaces/*.yaml) as one Ray Tune experiment: every crossed
factor combination x every seed, searched hyperparameters from Optuna, each
trial a Ray Train run logged as a nested MLflow run under the sweep's run.
Examples:
  uvlm sweep spaces/smoke.yaml
  uvlm sweep spaces/mixing.yaml --dry-run
  uvlm sweep spaces/mixing.yaml --resume                # after a crash or Ctrl-C
  uvlm sweep spaces/alignment.yaml --address ray-head:6379 --tracking-uri http://mlflow:5000 \\
      --storage /shared/ray_results
Exit code: 0 when every trial finished, 1 when some failed or were not run, 2 on bad input.
"""

VALIDATE_HELP = """\
Check space files without running anything: types, ranges, names of
encoders, spaces and metrics, every trial's config, the datasets, and that a
trial's resources fit the machine (or the cluster at --address). Prints the
trial table. Example:
  uvlm validate spaces/*.yaml
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser("sweep", help="run a space file as a Ray Tune + Optuna sweep logged to MLflow",
                                  description=SWEEP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("space", metavar="SPACE.yaml", help="the space file of the study")
    sweep.add_argument("--name", help="the sweep's identity: MLflow experiment, Ray folder, Optuna studies "
                                      "(default: the space file's name without .yaml)")
    sweep.add_argument("--dry-run", action="store_true", help="check everything and print the trial table; run nothing")
    sweep.add_argument("--resume", action="store_true",
                       help="continue the sweep of this name after a crash or Ctrl-C; finished trials are not rerun")
    _common(sweep)
    sweep.add_argument("--max-concurrent", type=number(limits.WORKERS), metavar="N",
                       help="trials at once (default: the space's budget.max_concurrent, else what the cluster holds)")
    sweep.add_argument("--tracking-uri", metavar="URI",
                       help="MLflow tracking server or database (default: $MLFLOW_TRACKING_URI, else "
                            "sqlite in the working folder)")
    sweep.add_argument("--storage", metavar="PATH",
                       help="Ray results folder; on a cluster, one that every node reaches "
                            "(default: <working folder>/ray_results)")
    sweep.add_argument("--trainable", metavar="MODULE:FUNCTION",
                       help="the function that trains one trial, with the signature of trainables.launch.fit "
                            "(default: trainables.launch:fit_in_trial)")
    sweep.add_argument("--verbose", action="store_true", help="show Ray's and the workers' logs")
    sweep.set_defaults(run=run_sweep)

    validate = subparsers.add_parser("validate", help="check space files and print their trial tables; run nothing",
                                     description=VALIDATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    validate.add_argument("spaces", nargs="+", metavar="SPACE.yaml", help="space files to check")
    _common(validate)
    validate.set_defaults(run=run_validate)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", metavar="RAY_ADDRESS",
                        help="a running Ray cluster, e.g. 10.0.0.1:6379 (default: start Ray on this machine)")
    parser.add_argument("--workdir", metavar="DIR",
                        help="working folder for the embedded MLflow store, Optuna storage, Ray results and run "
                             "outputs (default: $UVLM_WORKDIR, else ./uvlm-work)")


def _options(args: argparse.Namespace):
    from search.sweep import SweepOptions
    from trainables.errors import UserError

    if getattr(args, "dry_run", False) and getattr(args, "resume", False):
        raise UserError("--dry-run and --resume do not go together: a dry run checks a space file before a sweep starts")
    return SweepOptions(
        name=getattr(args, "name", None), tracking_uri=getattr(args, "tracking_uri", None), address=args.address,
        max_concurrent=getattr(args, "max_concurrent", None), resume=getattr(args, "resume", False),
        storage=getattr(args, "storage", None), workdir=args.workdir, body=getattr(args, "trainable", None),
        verbose=getattr(args, "verbose", False),
    )


def run_sweep(args: argparse.Namespace) -> int:
    from search.planner import load_space
    from search.sweep import dry_run, run_sweep as sweep

    options = _options(args)
    plan = load_space(args.space)
    if args.dry_run:
        print(dry_run(plan, options), flush=True)
        return 0
    from trainables import workspace
    from trainables.mlflow_store import check_store

    check_store(workspace.tracking_uri(options.tracking_uri, options.workdir), create=True)  # before Ray and torch load
    if options.storage and "://" not in options.storage:  # a local Ray results folder (not s3:// and the like)
        workspace.output_folder(options.storage, "--storage")
    return sweep(plan, options).exit_code


def run_validate(args: argparse.Namespace) -> int:
    from search.planner import load_space
    from search.sweep import dry_run

    options = _options(args)
    plans = [load_space(path) for path in args.spaces]  # every file parses before any is reported
    for plan in plans:
        print(dry_run(plan, options), flush=True)
    print(f"uvlm: {len(plans)} space file(s) valid", file=sys.stderr)
    return 0
