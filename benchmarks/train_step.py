"""Speed of the trainable: Ray Train step time against a bare PyTorch loop, start-up cost, side-by-side runs.

    python benchmarks/train_step.py [--steps 300] [--set key=value ...] [--parallel] [--json OUT]

1. bare: the same model, data and global batches in a plain loop in this process
   (collate + forward + backward + clip + AdamW step), one thread, no Ray, no evaluation;
   measured before and after the Ray run, and averaged (the load of a shared machine drifts).
2. ray:  `trainables.launch.fit` of the same config (1 worker, 1 thread) on a local Ray.
   Its steady-state step time is the median step of the run; the ratio ray/bare should be
   at most 1.10. Start-up = wall time of `fit` minus the run's own setup, training and
   evaluation time: what Ray Train adds around a run.
3. --parallel: the bare loop in two 1-thread processes side by side against one alone
   (throughput ratio; ~1.8x expected on two cores).
4. --compile: the bare loop with the LM's decoder layers under torch.compile (inductor, dynamic
   shapes: batches vary in length) against the plain loop, in this process: its steady step, the
   compile time its first step pays, and the steps a run needs before that time is repaid.

Defaults are the shipped tiny CPU configuration (mixed arm); --steps sets the budget.
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


def bare_step_seconds(overrides: list[str], steps: int) -> float:
    """Median step time of a plain PyTorch loop of the trainable's model on the same batches."""
    return statistics.median(bare_step_times(overrides, steps))


def bare_step_times(overrides: list[str], steps: int, compiled: bool = False) -> list[float]:
    """Every step's time of the plain loop; `compiled`: its LM's decoder layers under torch.compile."""
    import torch

    from trainables.config import load_config
    from trainables.launch import loop_config
    from trainables.rundata import global_counts
    from trainables.sequences import collate
    from trainables.train import LocalSession, Recipe

    config = load_config(None, overrides + [f"budget.value={steps}"])
    with tempfile.TemporaryDirectory() as out:
        recipe = Recipe(loop_config(config, out, None), LocalSession(Path(out)))
        recipe.setup()  # model, data, optimiser, exactly as a run builds them
        model, optimiser = recipe.model, recipe.optimiser
        if compiled:
            for layer in model.backbone.layers:
                layer.compile(dynamic=True)
        params = [p for p in model.parameters() if p.requires_grad]
        times = []
        for step in range(steps):
            started = time.perf_counter()
            examples = [recipe.examples[i] for i in recipe.order.batch(step, config.optim.batch_size)]
            text_n, image_n = global_counts(examples, model.space.num_tokens)
            out_ = model(collate(examples, recipe.data.train.images, recipe.tok))
            loss = out_["text_sum"] / max(text_n, 1) + model.alpha * out_["image_sum"] / max(image_n, 1)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
            optimiser.step()
            times.append(time.perf_counter() - started)
    return times


def ray_run(overrides: list[str], steps: int) -> dict[str, float]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import ray

    from trainables.config import load_config
    from trainables.launch import fit
    from trainables.mlflow_names import Metric

    config = load_config(None, overrides + [f"budget.value={steps}", f"eval.every_steps={steps + 1}"])
    temp = tempfile.mkdtemp(prefix="uvr", dir="/tmp")
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), num_gpus=0, include_dashboard=False,
             _temp_dir=temp, configure_logging=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            metrics = fit(config, Path(out) / "run", run_name=f"bench-{os.getpid()}", storage_path=Path(out) / "ray")
            wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    inside = metrics[Metric.SETUP_SECONDS] + metrics[Metric.TRAIN_SECONDS] + metrics[Metric.EVAL_SECONDS]
    return {"ray_step_seconds": metrics[Metric.STEP_SECONDS_MEDIAN], "fit_wall_seconds": wall,
            "startup_seconds": wall - inside, "setup_seconds": metrics[Metric.SETUP_SECONDS]}


def parallel(overrides: list[str], steps: int) -> dict[str, float]:
    """Throughput of two 1-thread bare loops side by side, relative to one alone."""
    command = [sys.executable, __file__, "--bare-only", "--steps", str(steps), *sum((["--set", o] for o in overrides), [])]
    env = os.environ | {"OMP_NUM_THREADS": "1"}

    def run(n: int) -> list[float]:
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
        return [json.loads(p.communicate()[0].strip().splitlines()[-1])["bare_step_seconds"] for p in procs]

    one = run(1)
    two = run(2)
    return {"one_run_step_seconds": one[0], "two_runs_step_seconds": statistics.mean(two),
            "side_by_side_throughput": 2 * one[0] / statistics.mean(two)}


def compiled(overrides: list[str], steps: int, bare: float) -> dict[str, float]:
    """torch.compile's steady step against the plain loop's, and the compile time it has to repay."""
    times = bare_step_times(overrides, steps, compiled=True)
    step = statistics.median(times[1:])
    saving = bare - step
    return {"compiled_step_seconds": step, "compiled_over_bare": step / bare, "compile_seconds": times[0] - step,
            "steps_to_repay": (times[0] - step) / saving if saving > 0 else float("inf")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--parallel", action="store_true", help="also measure two 1-thread runs side by side")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of the LM's layers")
    parser.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from trainables.config import load_config
    from trainables.data.prepare import ensure_dataset

    ensure_dataset(load_config(None, args.overrides).data)
    if args.bare_only:
        print(json.dumps({"bare_step_seconds": bare_step_seconds(args.overrides, args.steps)}))
        return
    before = bare_step_seconds(args.overrides, args.steps)  # bare before and after Ray: load drifts on shared machines
    figures = ray_run(args.overrides, args.steps)
    after = bare_step_seconds(args.overrides, args.steps)
    figures |= {"bare_step_seconds": (before + after) / 2, "bare_before": before, "bare_after": after}
    figures["ray_over_bare"] = figures["ray_step_seconds"] / figures["bare_step_seconds"]
    if args.parallel:
        figures |= parallel(args.overrides, args.steps)
    if args.compile:
        figures |= compiled(args.overrides, args.steps, figures["bare_step_seconds"])
    for key, value in figures.items():
        print(f"{key:<28}{value:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
