"""Benchmark: a sweep's orchestration overhead, its wall time against its trials' own time.

    python benchmarks/sweep_overhead.py [--steps 40] [--seeds 2] [--space spaces/smoke.yaml]

Runs the space (default: the smoke space; `--steps` overrides budget.value so that
trials last as long as wanted, e.g. about two minutes) as a real `uvlm sweep`
process in a fresh working folder, then reads its MLflow runs and prints:

  wall                 the sweep command, process start to exit (Ray start, data, trials, summary)
  fit (sum)            the trials' own time: wall time of `trainables.launch.fit` (time/fit_seconds)
  train loop (sum)     the training loops alone (time/train_seconds)
  orchestration ratio  wall x concurrency / sum(fit): what Tune, Optuna, MLflow and the trial
                       drivers add around the trainable (1.00 = nothing; target <= 1.15)
  total ratio          wall x concurrency / sum(train loop): the above plus the trainable's own
                       start-up (TorchTrainer, data, model) and evaluations
  per-trial start-up   median of (fit - train loop): the trainable's fixed cost per trial;
                       median of (trial run - fit): the trial driver's own cost (MLflow open/close)

Figures on a shared 2-core machine vary with its load: run it on an idle one.
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
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(ROOT / "spaces" / "smoke.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="override budget.value (training steps per trial)")
    parser.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    parser.add_argument("--folder", default=None, help="where to run (default: a fresh temporary folder)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    folder = Path(args.folder or tempfile.mkdtemp(prefix="uvlm-bench-sweep-"))
    folder.mkdir(parents=True, exist_ok=True)
    tree = yaml.safe_load(Path(args.space).read_text())
    if args.steps:
        tree.setdefault("fixed", {}).update({"budget.unit": "steps", "budget.value": args.steps,
                                             "eval.every_steps": max(1, args.steps // 2)})
    if args.seeds:
        tree["seeds"] = args.seeds
    space = folder / "bench.yaml"
    space.write_text(yaml.safe_dump(tree, sort_keys=False))

    env = {**os.environ, "UVLM_WORKDIR": str(folder / "work")}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "search.cli", "sweep", str(space)], cwd=folder, env=env,
                            stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        return result.returncode

    figures = measure(folder, wall)
    print(report(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def measure(folder: Path, wall: float) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'work' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bench")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(run for run in runs if run.data.tags.get("uvlm.role") == "sweep")
    trials = [run for run in runs if run.data.tags.get("uvlm.role") == "trial" and run.info.status == "FINISHED"]
    concurrency = int(parent.data.tags["uvlm.concurrency"])
    fit = [run.data.metrics["time/fit_seconds"] for run in trials]
    train = [run.data.metrics["time/train_seconds"] for run in trials]
    run_time = [(run.info.end_time - run.info.start_time) / 1000 for run in trials]
    return {
        "trials": len(trials), "concurrency": concurrency, "wall_seconds": wall,
        "fit_seconds_sum": sum(fit), "train_seconds_sum": sum(train),
        "fit_seconds_median": statistics.median(fit), "train_seconds_median": statistics.median(train),
        "orchestration_ratio": wall * concurrency / sum(fit),
        "total_ratio": wall * concurrency / sum(train),
        "trainable_startup_seconds_median": statistics.median(f - t for f, t in zip(fit, train)),
        "driver_seconds_median": statistics.median(r - f for r, f in zip(run_time, fit)),
    }


def report(figures: dict[str, float]) -> str:
    return "\n".join([
        f"trials {figures['trials']}, {figures['concurrency']} at a time",
        f"wall                    {figures['wall_seconds']:8.1f} s",
        f"fit (sum)               {figures['fit_seconds_sum']:8.1f} s   (median per trial {figures['fit_seconds_median']:.1f} s)",
        f"train loop (sum)        {figures['train_seconds_sum']:8.1f} s   (median per trial {figures['train_seconds_median']:.1f} s)",
        f"orchestration ratio     {figures['orchestration_ratio']:8.3f}     (wall x concurrency / sum fit; target <= 1.15)",
        f"total ratio             {figures['total_ratio']:8.3f}     (wall x concurrency / sum train loop)",
        f"trainable start-up      {figures['trainable_startup_seconds_median']:8.1f} s   per trial (fit - train loop, median)",
        f"trial driver            {figures['driver_seconds_median']:8.1f} s   per trial (MLflow run - fit, median)",
    ])


if __name__ == "__main__":
    sys.exit(main())
