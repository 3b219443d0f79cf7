"""`uvlm train [CONFIG.yaml] [--set key=value ...] [--out DIR]`: one run of the unified VLM, no sweep.

Without a config it trains the shipped default (the tiny CPU configuration),
generating its smart-watch data first when `data.path` does not exist. The
run goes through Ray Train on a local Ray (or in-process with `--no-ray`)
and is logged to MLflow (experiment `uvlm-train`). DIR gets metrics.json,
generated.png, config.yaml.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EXPERIMENT = "uvlm-train"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train and evaluate one unified VLM (no sweep)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML file of TrainConfig sections (default: the tiny CPU config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field by its dotted name, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--out", help="output folder (default: <workdir>/runs/<run name>)")
    parser.add_argument("--name", help="run name in MLflow and Ray (default: train-<time>)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the embedded store)")
    parser.add_argument("--no-ray", action="store_true", help="run the same loop in this process, without Ray (debugging)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trainables import workspace
    from trainables.config import load_config

    config = load_config(args.config, args.overrides)
    name = args.name or time.strftime("train-%Y%m%d-%H%M%S")
    out_dir = Path(args.out) if args.out else workspace.workdir() / "runs" / name
    from trainables.data.prepare import ensure_dataset

    ensure_dataset(config.data)
    mlflow_run = start_mlflow_run(workspace.tracking_uri(args.tracking_uri), name, config)
    try:
        metrics = train(config, out_dir, name, mlflow_run, in_process=args.no_ray)
    except BaseException as error:
        end_mlflow_run(mlflow_run, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED", error)
        raise
    end_mlflow_run(mlflow_run, "FINISHED")
    print(summary(metrics))
    print(f"uvlm: wrote {out_dir}/metrics.json" + (" and generated.png" if (out_dir / "generated.png").exists() else ""))
    return 0


def train(config, out_dir: Path, name: str, mlflow_run: dict[str, str], in_process: bool) -> dict[str, float]:
    from trainables.launch import fit, loop_config

    if in_process:
        from trainables.train import run_local

        return run_local(loop_config(config, out_dir, mlflow_run))
    from search.sweep import RAY_ENV

    for key, value in RAY_ENV.items():  # the same quiet, quick Ray as a sweep's
        os.environ.setdefault(key, value)
    import tempfile

    import ray

    from trainables import workspace

    runtime = config.runtime
    needed = runtime.num_workers * runtime.threads_per_worker
    temp_dir = tempfile.mkdtemp(prefix="uvr", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(address="local", num_cpus=max(needed, os.cpu_count() or 1), num_gpus=None if runtime.use_gpu else 0,
             include_dashboard=False, _temp_dir=temp_dir, log_to_driver=True, configure_logging=False)
    try:
        return fit(config, out_dir, run_name=name, storage_path=workspace.workdir() / "ray-results", mlflow_run=mlflow_run)
    finally:
        ray.shutdown()


def start_mlflow_run(uri: str, name: str, config) -> dict[str, str]:
    """Create the run in the driver (workers only log into it)."""
    from mlflow.tracking import MlflowClient

    from search import tracking
    from trainables import workspace

    client = MlflowClient(uri)
    experiment_id = tracking.experiment_id(client, EXPERIMENT, workspace.artifact_root() if uri.startswith("sqlite:") else None)
    tags = {"uvlm.role": "train", "uvlm.arm": config.data.arm.value, "uvlm.seed": str(config.seed)}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    return {"tracking_uri": uri, "run_id": run.info.run_id}


def end_mlflow_run(mlflow_run: dict[str, str], status: str, error: BaseException | None = None) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_run["tracking_uri"])
    if error is not None:
        client.set_tag(mlflow_run["run_id"], "uvlm.error", str(error)[:5000] or type(error).__name__)
    client.set_terminated(mlflow_run["run_id"], status=status)


def summary(metrics: dict[str, float]) -> str:
    """Per-attribute test scores beside the constant baselines (and the probe's reading of true tokens), then the
    other final metrics."""
    from trainables.data.records import ATTRIBUTES

    lines = [f"{'VQA':<16}{'model':>8}{'baseline':>10}"]
    for key in (*ATTRIBUTES, "overall"):
        if f"test/vqa/{key}" in metrics:
            lines.append(f"{key:<16}{metrics[f'test/vqa/{key}']:>8.3f}{metrics.get(f'baseline/vqa/{key}', float('nan')):>10.3f}")
    if "test/caption/score" in metrics:
        lines.append(f"{'caption':<16}{metrics['test/caption/score']:>8.3f}{metrics.get('baseline/caption/score', float('nan')):>10.3f}")
    if "test/gen/probe/overall" in metrics:
        lines.append(f"{'generation probe':<16}{'model':>8}{'baseline':>10}{'true':>8}")
        for key in (*ATTRIBUTES, "overall"):
            if f"test/gen/probe/{key}" in metrics:
                lines.append(f"{key:<16}{metrics[f'test/gen/probe/{key}']:>8.3f}"
                             f"{metrics.get(f'baseline/gen/probe/{key}', float('nan')):>10.3f}"
                             f"{metrics.get(f'probe/true/{key}', float('nan')):>8.3f}")
    for key in ("test/gen/cosine", "test/gen/token_accuracy", "test/gen/frechet", "time/step_seconds"):
        if key in metrics:
            lines.append(f"{key:<26}{metrics[key]:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    from search.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
