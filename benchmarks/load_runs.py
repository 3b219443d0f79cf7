"""Benchmark: loading a sweep of 10,000 trial runs, `analysis.load_runs` against `mlflow.search_runs` to pandas.

    python benchmarks/load_runs.py [--runs 10000] [--store /tmp/uvlm-bench-load/mlflow.db]

The store is written once by `analysis.synthetic.write_sweep` (about 10 minutes for
10,000 runs on 2 cores) and reused on later calls. Timed, best of `--repeat`:
our SQL reader (sqlite), our MlflowClient reader (the path used for tracking
servers), `mlflow.search_runs(..., output_format="pandas")`, and `load_history`.

Measured (10,020 trials x 117 columns, 2-core machine shared with other jobs, load average 6-24):
load_runs via SQL 3.4-4.0 s; mlflow.search_runs to pandas 46-52 s (11-15x slower);
load_runs via MlflowClient 42-89 s; load_history of 2 metrics (79k rows) 1.3-2.5 s.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path


def design(runs: int):
    from analysis.synthetic import SyntheticSweep

    cells = 3 * 5 * 4  # arms x sizes x affine strengths
    return SyntheticSweep(name="bench-load", train_images=(250, 500, 1000, 2000, 4000),
                          affine_strengths=(0.0, 0.2, 0.4, 0.6), seeds=tuple(range(math.ceil(runs / cells))),
                          searched={"optim.lr": (1e-4, 1e-2, True)}, fail_fraction=0.02)


def best_of(repeat: int, function) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--store", default="/tmp/uvlm-bench-load/mlflow.db")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    import logging

    import mlflow

    from analysis.frames import list_sweeps, load_history, load_runs
    from analysis.synthetic import write_sweep
    from trainables.mlflow_names import Metric, Role, overall, role_filter

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    store = Path(args.store).resolve()
    store.parent.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store}"
    if not store.exists() or "bench-load" not in list_sweeps(uri):
        print(f"writing {args.runs} synthetic trial runs to {store} (once) ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        write_sweep(uri, design(args.runs))
        print(f"  written in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    ours, frame = best_of(args.repeat, lambda: load_runs("bench-load", uri))
    client, _ = best_of(1, lambda: load_runs("bench-load", uri, method="client"))
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("bench-load")

    def baseline():
        mlflow.set_tracking_uri(uri)
        return mlflow.search_runs([experiment.experiment_id], role_filter(Role.TRIAL), max_results=100_000,
                                  output_format="pandas")

    theirs, pandas_frame = best_of(args.repeat, baseline)
    history, long = best_of(1, lambda: load_history("bench-load", uri, metrics=[overall(Metric.VQA), Metric.TRAIN_LOSS]))
    assert frame.height == len(pandas_frame), (frame.height, len(pandas_frame))
    print(f"runs: {frame.height} trials, {frame.width} columns; history rows (2 metrics): {long.height}")
    print(f"analysis.load_runs (sqlite SQL)        {ours:7.2f} s")
    print(f"analysis.load_runs (MlflowClient path) {client:7.2f} s")
    print(f"mlflow.search_runs -> pandas           {theirs:7.2f} s")
    print(f"ratio search_runs / load_runs          {theirs / ours:7.1f}x")
    print(f"analysis.load_history (2 metrics)      {history:7.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
