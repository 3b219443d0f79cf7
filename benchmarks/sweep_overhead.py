"""Benchmark: what a sweep spends besides training, against a baseline run in the same process.

    python benchmarks/sweep_overhead.py [--space spaces/mixing.yaml] [--seeds 2] [--steps N]
    python benchmarks/sweep_overhead.py --workdir uvlm-work      # measure the sweeps of a finished `uvlm demo`

Runs the space twice as real `uvlm sweep` processes, each in a fresh working folder: once with the
default trial body (`trainables.launch:fit_in_trial`: a one-worker trial trains in its reused Tune
trial process) and once with the baseline body `trainables.launch:fit` (a TorchTrainer worker group
per trial, as before). Then it reads each sweep's MLflow runs and prints, per sweep:

  wall          the sweep, process start to exit (Ray start, data, trials, summary); with --workdir,
                the parent run's start to end
  train loop    sum over trials of the training steps alone (time/train_seconds)
  ratio         wall x concurrency / sum(train loop): 1.00 = nothing but training steps (target <= 1.10)
  fixed median  per trial, everything that is not a training step: the trial's MLflow run from
  fixed p90     start to end minus its training steps (set-up, evaluations, checkpoints, MLflow)
  eval median   per trial, the evaluations alone (time/eval_seconds), included in the fixed cost
  fixed - eval  per trial, the fixed cost without the evaluations (set-up, checkpoints, MLflow, Tune)

and the new/baseline ratios. With --workdir, a last row `all` takes the folder's sweeps as one (the demo's
three studies: their slot-seconds add up, the per-trial columns are over all their trials). Figures on a
shared 2-core machine vary with its load: run it on an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from trainables.yamlfile import read_yaml

ROOT = Path(__file__).resolve().parents[1]
BODIES = {"default": "trainables.launch:fit_in_trial", "baseline": "trainables.launch:fit"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(ROOT / "spaces" / "mixing.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="override the budget (training steps per trial)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per cell (default 2)")
    parser.add_argument("--only", choices=sorted(BODIES), help="run one body only")
    parser.add_argument("--workdir", help="measure every sweep in this finished working folder instead (runs nothing)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    if args.workdir:
        times = {name: sweep_times(Path(args.workdir), name, None) for name in sweep_names(Path(args.workdir))}
        figures = {name: figures_of([sweep]) for name, sweep in times.items()}
        if len(times) > 1:
            figures["all"] = figures_of(list(times.values()))
    else:
        figures = {}
        for label, body in BODIES.items():
            if args.only and label != args.only:
                continue
            folder = Path(tempfile.mkdtemp(prefix=f"uvlm-bench-{label}-"))
            wall, code, stderr = run_sweep(folder, Path(args.space), args.steps, args.seeds, body)
            if code != 0:
                print(stderr[-4000:], file=sys.stderr)
                return code
            figures[label] = figures_of([sweep_times(folder / "work", "bench", wall)])
    print(report(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def run_sweep(folder: Path, space_path: Path, steps: int | None, seeds: int, body: str) -> tuple[float, int, str]:
    tree = read_yaml(space_path, "space file")
    tree["seeds"] = seeds
    if steps:
        tree.setdefault("fixed", {}).update({"budget.unit": "steps", "budget.value": steps})
    for key in ("data.path",):  # the space's relative data folders, shared by both runs (generated once)
        if key in tree.get("fixed", {}):
            tree["fixed"][key] = str(ROOT / tree["fixed"][key])
    space = folder / "bench.yaml"
    space.write_text(yaml.safe_dump(tree, sort_keys=False))
    env = {**os.environ, "UVLM_WORKDIR": str(folder / "work")}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "search.cli", "sweep", str(space), "--trainable", body],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    return time.monotonic() - started, result.returncode, result.stderr


def sweep_names(workdir: Path) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    return [e.name for e in client.search_experiments() if e.name not in ("Default", "uvlm-train")]


@dataclass
class SweepTimes:
    """One sweep's clock: its wall, its trials at once, and per finished trial the training steps,
    the fixed cost (its MLflow run minus its training steps) and the evaluations."""

    wall: float
    concurrency: int
    train: list[float]
    fixed: list[float]
    evals: list[float]


def sweep_times(workdir: Path, sweep: str, wall: float | None) -> SweepTimes:
    from mlflow.tracking import MlflowClient

    from trainables.mlflow_names import FINISHED, Metric, Role, Tag

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(sweep)
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    parent = next(run for run in runs if run.data.tags.get(Tag.ROLE) == Role.SWEEP)
    trials = [run for run in runs if run.data.tags.get(Tag.ROLE) == Role.TRIAL and run.info.status == FINISHED]
    if wall is None:
        wall = (parent.info.end_time - parent.info.start_time) / 1000
    train = [run.data.metrics[Metric.TRAIN_SECONDS] for run in trials]
    return SweepTimes(
        wall=wall, concurrency=int(parent.data.tags[Tag.CONCURRENCY]), train=train,
        fixed=[(run.info.end_time - run.info.start_time) / 1000 - t for run, t in zip(trials, train)],
        evals=[run.data.metrics.get(Metric.EVAL_SECONDS, 0.0) for run in trials])


def figures_of(sweeps: list[SweepTimes]) -> dict[str, float]:
    """The benchmark's columns over one sweep, or over several run one after another (a demo's studies:
    their slot-seconds add up, and the per-trial columns are over all their trials)."""
    train = [t for sweep in sweeps for t in sweep.train]
    fixed = sorted(f for sweep in sweeps for f in sweep.fixed)
    less_eval = [f - e for sweep in sweeps for f, e in zip(sweep.fixed, sweep.evals)]
    wall = sum(sweep.wall for sweep in sweeps)
    slot_seconds = sum(sweep.wall * sweep.concurrency for sweep in sweeps)
    return {
        "trials": len(train), "concurrency": slot_seconds / wall, "wall_seconds": wall,
        "train_seconds_sum": sum(train), "ratio": slot_seconds / sum(train),
        "fixed_seconds_median": statistics.median(fixed), "fixed_seconds_p90": fixed[min(len(fixed) - 1, int(0.9 * len(fixed)))],
        "eval_seconds_median": statistics.median(e for sweep in sweeps for e in sweep.evals),
        "fixed_less_eval_median": statistics.median(less_eval),
    }


def report(figures: dict[str, dict[str, float]]) -> str:
    columns = [("trials", "{:.0f}"), ("concurrency", "{:.3g}"), ("wall_seconds", "{:.1f}"), ("train_seconds_sum", "{:.1f}"),
               ("ratio", "{:.3f}"), ("fixed_seconds_median", "{:.1f}"), ("fixed_seconds_p90", "{:.1f}"),
               ("eval_seconds_median", "{:.1f}"), ("fixed_less_eval_median", "{:.1f}")]
    heads = ["sweep", "trials", "at once", "wall s", "train loop s", "ratio", "fixed median s", "fixed p90 s", "eval median s",
             "fixed - eval median s"]
    rows = [[name] + [fmt.format(values[key]) for key, fmt in columns] for name, values in figures.items()]
    widths = [max(len(str(row[i])) for row in [heads] + rows) for i in range(len(heads))]
    lines = ["  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)) for row in [heads] + rows]
    if "default" in figures and "baseline" in figures:
        new, old = figures["default"], figures["baseline"]
        lines.append(f"default / baseline: wall {new['wall_seconds'] / old['wall_seconds']:.2f}x, "
                     f"ratio {new['ratio'] / old['ratio']:.2f}x, fixed median {new['fixed_seconds_median'] / old['fixed_seconds_median']:.2f}x")
    lines.append("ratio = wall x concurrency / sum of training-step seconds (target <= 1.10); "
                 "fixed = a trial's MLflow run time minus its training steps (target median <= 4 s, p90 <= 8 s)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
