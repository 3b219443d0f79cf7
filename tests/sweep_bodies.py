"""Trial bodies for the sweep tests: the signature of trainables.launch.fit, without training.

Each behaves as the trainable's contract says rank 0 does: it logs params and
per-evaluation metrics into the MLflow run it is given, reports each
evaluation to Tune, writes metrics.json and returns the final metrics.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

EVALUATIONS = 3


def quick(config, out_dir, *, run_name, storage_path, mlflow_run=None, callbacks=()):
    """A deterministic 'score' from the config: lower lr and the mixed arm score higher."""
    from ray import tune

    from search import tracking
    from trainables import mlflow_io

    pause = float(os.environ.get("UVLM_TEST_TRIAL_SECONDS", "0"))
    client = tracking.client(mlflow_run["tracking_uri"]) if mlflow_run else None
    if client:
        mlflow_io.log_params(client, mlflow_run["run_id"], config.flatten())
    arm_bonus = {"understanding": 0.1, "generation": 0.0, "mixed": 0.15}[config.data.arm.value]
    metrics = {}
    for evaluation in range(1, EVALUATIONS + 1):
        time.sleep(pause / EVALUATIONS)
        step = evaluation * 10
        metrics = {"step": step, "train/loss": 1.0 / evaluation,
                   "test/vqa/overall": round(0.5 + arm_bonus - math.log10(config.optim.lr) * 0.01 + 0.01 * config.seed + 0.02 * evaluation, 6)}
        if client:
            mlflow_io.log_metrics(client, mlflow_run["run_id"], metrics, step=step)
        tune.report(metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def in_process(config, out_dir, *, run_name, storage_path, mlflow_run=None, callbacks=()):
    """`quick`, marked as training in the trial's own process (as trainables.launch.fit_in_trial is);
    its final metrics also say how many Tune callbacks it was handed."""
    return quick(config, out_dir, run_name=run_name, storage_path=storage_path, mlflow_run=mlflow_run) | {
        "callbacks_given": len(callbacks)}


in_process.trains_in_trial = True


def flaky(config, out_dir, *, run_name, storage_path, mlflow_run=None, callbacks=()):
    """Fails for the generation arm, returns NaN for seed 1 of the understanding arm, else as `quick`."""
    if config.data.arm.value == "generation":
        raise ValueError("boom: the generation arm is broken in this test")
    metrics = quick(config, out_dir, run_name=run_name, storage_path=storage_path, mlflow_run=mlflow_run)
    if config.data.arm.value == "understanding" and config.seed == 1:
        metrics["test/vqa/overall"] = float("nan")
    return metrics


def chatty(config, out_dir, *, run_name, storage_path, mlflow_run=None, callbacks=()):
    """Logs STEPS evaluations of METRICS metrics each, as fast as it can (the store under concurrent load)."""
    from ray import tune

    from search import tracking
    from trainables import mlflow_io

    client = tracking.client(mlflow_run["tracking_uri"])
    mlflow_io.log_params(client, mlflow_run["run_id"], config.flatten())
    metrics = {}
    for step in range(1, CHATTY_STEPS + 1):
        metrics = {f"test/m{index:02d}": step * 0.01 + index for index in range(CHATTY_METRICS)}
        mlflow_io.log_metrics(client, mlflow_run["run_id"], metrics, step=step)
    tune.report({"step": CHATTY_STEPS, **metrics})
    return {"step": CHATTY_STEPS, **metrics}


CHATTY_STEPS, CHATTY_METRICS = 20, 30


def ladder(config, out_dir, *, run_name, storage_path, mlflow_run=None, callbacks=()):
    """Reports an objective every 10 steps up to budget.value; the higher the seed, the worse (ASHA prunes it)."""
    from ray import tune

    metrics = {}
    for step in range(10, int(config.budget.value) + 1, 10):
        time.sleep(0.3)
        metrics = {"step": step, "test/vqa/overall": 1.0 - 0.1 * config.seed + 0.001 * step}
        tune.report(metrics)
    return metrics


def spread(config, out_dir, *, run_name, storage_path, mlflow_run=None, callbacks=()):
    """A real TorchTrainer with config.runtime.num_workers workers (1 CPU each) that records where each ran.

    Returns how many distinct nodes the workers used; tags the run with the node ids.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from search import tracking
    from trainables import mlflow_io

    out_dir.mkdir(parents=True, exist_ok=True)

    def loop(loop_config):
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        node = ray.get_runtime_context().get_node_id()
        (Path(loop_config["out_dir"]) / f"worker-{rank}.node").write_text(node)
        ray.train.report({"step": 1, "test/vqa/overall": 0.5})

    trainer = TorchTrainer(
        loop, train_loop_config={"out_dir": str(out_dir)},
        scaling_config=ray.train.ScalingConfig(num_workers=config.runtime.num_workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=run_name, storage_path=str(storage_path), callbacks=list(callbacks)),
    )
    trainer.fit()
    nodes = sorted({path.read_text() for path in out_dir.glob("worker-*.node")})
    if mlflow_run:
        client = tracking.client(mlflow_run["tracking_uri"])
        mlflow_io.set_tags(client, mlflow_run["run_id"], {"test.worker_nodes": ",".join(nodes)})
    return {"step": 1, "test/vqa/overall": 0.5, "test/nodes": len(nodes)}


def graded(config, out_dir, *, run_name, storage_path, mlflow_run=None, callbacks=()):
    """An objective every 10 steps up to budget.value that peaks at lr = 3e-3 and at generation_ratio = 0.5,
    a little higher for higher seeds; seeds >= 5 (held out in the tests) score 0.5 lower, so ASHA would
    stop them at once if it ever saw them."""
    from ray import tune

    from search import tracking
    from trainables import mlflow_io

    client = tracking.client(mlflow_run["tracking_uri"]) if mlflow_run else None
    if client:
        mlflow_io.log_params(client, mlflow_run["run_id"], config.flatten())
    quality = (0.6 - 0.1 * abs(math.log10(config.optim.lr / 3e-3)) - 0.1 * abs(config.data.generation_ratio - 0.5)
               + 0.01 * config.seed - (0.5 if config.seed >= 5 else 0.0))
    metrics = {}
    for step in range(10, int(config.budget.value) + 1, 10):
        time.sleep(0.2)
        metrics = {"step": step, "test/vqa/overall": round(quality + 0.001 * step, 6)}
        if client:
            mlflow_io.log_metrics(client, mlflow_run["run_id"], metrics, step=step)
        tune.report(metrics)
    return metrics
