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

from search.commands import name as name_type

EXPERIMENT = "uvlm-train"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train and evaluate one unified VLM (no sweep)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML file of TrainConfig sections, or a shipped preset's name (default: the tiny CPU config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field by its dotted name, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--out", help="output folder (default: <workdir>/runs/<run name>)")
    parser.add_argument("--name", type=name_type, help="run name in MLflow and Ray (default: train-<time>)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the embedded store)")
    parser.add_argument("--no-ray", action="store_true", help="run the same loop in this process, without Ray (debugging)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trainables import workspace
    from trainables.config import config_path, load_config
    from trainables.errors import UserError

    config = load_config(config_path(args.config) if args.config else None, args.overrides)
    name = args.name or time.strftime("train-%Y%m%d-%H%M%S")
    out_dir = workspace.output_folder(args.out) if args.out else workspace.workdir() / "runs" / name
    if out_dir.is_dir() and any(out_dir.iterdir()):  # another run's metrics and checkpoints would be overwritten
        raise UserError(f"{'--out' if args.out else 'run folder'} {str(out_dir)!r} already holds files; "
                        f"choose another {'--out' if args.out else '--name'}")
    from trainables.data.prepare import ensure_dataset
    from trainables.mlflow_names import FAILED, FINISHED, GENERATED_IMAGE, KILLED, METRICS_FILE
    from trainables.mlflow_store import check_store

    uri = workspace.tracking_uri(args.tracking_uri)
    check_store(uri, create=True)  # before the dataset is generated and the model built
    ensure_dataset(config.data)
    if config.lm.pretraining.steps:
        from trainables.pretrain import ensure_text_lm

        ensure_text_lm(config)
    mlflow_run = start_mlflow_run(uri, name, config)
    try:
        metrics = train(config, out_dir, name, mlflow_run, in_process=args.no_ray)
    except BaseException as error:
        end_mlflow_run(mlflow_run, KILLED if isinstance(error, KeyboardInterrupt) else FAILED, error)
        raise
    end_mlflow_run(mlflow_run, FINISHED)
    print(summary(metrics))
    print(f"uvlm: wrote {out_dir}/{METRICS_FILE}" + (f" and {GENERATED_IMAGE}" if (out_dir / GENERATED_IMAGE).exists() else ""))
    return 0


def train(config, out_dir: Path, name: str, mlflow_run: dict[str, str], in_process: bool) -> dict[str, float]:
    from trainables.launch import fit, loop_config

    if in_process:
        from trainables.train import run_local

        return run_local(loop_config(config, out_dir, mlflow_run))
    from search import cluster
    from trainables import workspace

    runtime = config.runtime
    needed = runtime.num_workers * runtime.threads_per_worker
    # The worker's progress bar and errors reach this terminal; Ray's log lines do not: Ray Train's
    # INFO lines, and its placement-group cleaner's warning every second that the state API is out of
    # reach (the dashboard serves it, and uvlm does not start one), would bury the progress bar.
    cluster.start(None, workspace.workdir(), verbose=True, cpus=max(needed, os.cpu_count() or 1),
                  gpus=None if runtime.use_gpu else 0, worker_log_level="ERROR")
    try:
        return fit(config, out_dir, run_name=name, storage_path=workspace.workdir() / "ray-results", mlflow_run=mlflow_run)
    finally:
        cluster.stop()


def start_mlflow_run(uri: str, name: str, config, experiment: str = EXPERIMENT) -> dict[str, str]:
    """Create the run in the driver (workers only log into it)."""
    from search import tracking
    from trainables import mlflow_io
    from trainables.mlflow_names import train_tags
    from trainables import workspace

    client = tracking.connect(uri)
    experiment_id = mlflow_io.experiment_id(client, experiment, workspace.artifact_root() if uri.startswith("sqlite:") else None)
    run_id = mlflow_io.start_run(client, experiment_id, name, train_tags(arm=config.data.arm.value, seed=config.seed))
    return {"tracking_uri": uri, "run_id": run_id}


def end_mlflow_run(mlflow_run: dict[str, str], status: str, error: BaseException | None = None) -> None:
    from mlflow.tracking import MlflowClient

    from trainables import mlflow_io

    client = MlflowClient(mlflow_run["tracking_uri"])
    mlflow_io.finish(client, mlflow_run["run_id"], status, str(error) or type(error).__name__ if error is not None else None)


def summary(metrics: dict[str, float]) -> str:
    """Per-attribute test scores beside the constant baselines (and the probe's reading of true tokens), then the
    other final metrics."""
    from trainables.mlflow_names import ATTRIBUTES, CORNERS, Metric

    lines = [f"{'VQA':<16}{'model':>8}{'baseline':>10}"]
    for key in (*ATTRIBUTES, "overall"):
        if f"{Metric.VQA}/{key}" in metrics:
            lines.append(f"{key:<16}{metrics[f'{Metric.VQA}/{key}']:>8.3f}"
                         f"{metrics.get(f'{Metric.BASELINE_VQA}/{key}', float('nan')):>10.3f}")
    if Metric.CAPTION in metrics:
        lines.append(f"{'caption':<16}{metrics[Metric.CAPTION]:>8.3f}{metrics.get(Metric.BASELINE_CAPTION, float('nan')):>10.3f}")
    if f"{Metric.GEN_PROBE}/overall" in metrics:
        lines.append(f"{'generation probe':<16}{'model':>8}{'baseline':>10}{'true':>8}")
        for key in (*ATTRIBUTES, "overall"):
            if f"{Metric.GEN_PROBE}/{key}" in metrics:
                lines.append(f"{key:<16}{metrics[f'{Metric.GEN_PROBE}/{key}']:>8.3f}"
                             f"{metrics.get(f'{Metric.BASELINE_GEN_PROBE}/{key}', float('nan')):>10.3f}"
                             f"{metrics.get(f'{Metric.PROBE_TRUE}/{key}', float('nan')):>8.3f}")
    if f"{Metric.GEN_ICON}/overall" in metrics:
        lines.append(f"{'weather icon in':<16}{'model':>8}{'baseline':>10}{'forced':>8}   (the requested corner, prompts naming both)")
        for key in (*CORNERS, "overall"):
            if f"{Metric.GEN_ICON}/{key}" in metrics:
                lines.append(f"{key:<16}{metrics[f'{Metric.GEN_ICON}/{key}']:>8.3f}"
                             f"{metrics.get(f'{Metric.BASELINE_GEN_ICON}/{key}', float('nan')):>10.3f}"
                             f"{metrics.get(f'{Metric.GEN_ICON_FORCED}/{key}', float('nan')):>8.3f}")
    for key in (Metric.GEN_COSINE, Metric.GEN_TOKEN_ACCURACY, Metric.GEN_FRECHET, Metric.STEP_SECONDS):
        if key in metrics:
            lines.append(f"{key:<26}{metrics[key]:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    from search.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
