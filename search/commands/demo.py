"""`uvlm demo`: the main job, the four studies at CPU scale in one command (search/demo.py does the work)."""

from __future__ import annotations

import argparse

DEMO_HELP = """\
Run the four studies of the platform (spaces/mixing.yaml, alignment.yaml,
transfer.yaml and ratio.yaml, the mixing ratio searched by Optuna) as sweeps
named after them, at CPU scale with 5 seeds per cell (ratio: 3 paired seeds
per configuration): generate the smart-watch data, train, report each study
and write a combined report (<working folder>/reports/index.html). About 27
minutes on a 2-core CPU (54 trials, two at a time; findings 1 and 3 on a
tiny LM pretrained on text, made in the background in about 4 minutes while
the studies on the random LM run). Interrupted? Run it
again: finished sweeps are skipped and an interrupted one resumes without
redoing finished trials.
Two studies run on request; they do not fit beside the four:
`--study tuning` (each arm tuned with the same Optuna budget, its best re-run
on held-out seeds and compared with the untuned finding, about 13 minutes)
and `--study pretraining` (the mixing study's arms on a random and on a
text-pretrained tiny LM, exploratory, about 14 minutes).
Examples:
  uvlm demo
  uvlm demo --study tuning           # fair per-arm tuning, reported against the untuned finding
  uvlm demo --study pretraining      # does the mutual benefit depend on the LM's pretraining?
  uvlm demo --smoke                  # every step of all six studies at toy size, a few minutes (CI)
  uvlm demo --workdir /tmp/uvlm-demo
  uvlm demo --seeds 100-105 --workdir uvlm-work-fresh   # the same design on other seeds
  uvlm demo --seeds 0-11 --workdir uvlm-work-12         # twice the seeds and the time: narrower intervals
Exit code: 0 when every trial of every study finished, 1 otherwise, 2 on bad input.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="the main job: the four studies at CPU scale, reported",
                                   description=DEMO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="the same studies, tuning and pretraining, shrunk to toy size (one seed, a few steps): "
                             "checks the whole path in minutes; sweeps are named <study>-smoke")
    parser.add_argument("--workdir", metavar="DIR",
                        help="working folder (default: $UVLM_WORKDIR, else ./uvlm-work)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking server or database (default: $MLFLOW_TRACKING_URI, else sqlite in the "
                             "working folder)")
    parser.add_argument("--study", action="append", metavar="NAME",
                        help="run only this study (repeatable): mixing, alignment, transfer, ratio, tuning "
                             "or pretraining (default: the first four)")
    parser.add_argument("--seeds", metavar="LIST",
                        help="run every study on these seeds instead of its own, e.g. 100-107 or 3,5,8: the same "
                             "design's intervals on other seeds (use a fresh --workdir; the space files are copied "
                             "under <working folder>/seeded-spaces)")
    parser.add_argument("--trainable", metavar="MODULE:FUNCTION",
                        help="the function that trains one trial, as in `uvlm sweep` (default: "
                             "trainables.launch:fit_in_trial)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(smoke=args.smoke, workdir=args.workdir, tracking_uri=args.tracking_uri,
                                body=args.trainable, studies=args.study, seeds=parse_seeds(args.seeds)))


def parse_seeds(text: str | None) -> list[int] | None:
    """'100-107' or '3,5,8' (or both, comma-separated) -> a sorted list of distinct seeds."""
    from trainables import limits
    from trainables.errors import UserError

    if text is None:
        return None
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            low, high = int(first), int(last or first)
            if high < low:
                raise ValueError
            seeds.update(range(low, high + 1))
    except ValueError:
        raise UserError(f"--seeds {text!r}: write a range such as 100-107 or a list such as 3,5,8") from None
    bad = [seed for seed in seeds if not limits.SEED[0] <= seed <= limits.SEED[1]]
    if bad:
        raise UserError(f"--seeds: {bad[0]} is outside {limits.SEED[0]}..{limits.SEED[1]}")
    return sorted(seeds)
