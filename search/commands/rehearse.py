"""`uvlm rehearse CONFIG [--set key=value ...] [--real-paths] [--gpu]`: every code path a paper-scale run
takes, at tiny shapes, before any GPU hour is spent.

First the config's plan at full scale (`uvlm plan`; a config that cannot fit is refused, exit 2).
Then the same config, shrunk, through Ray Train with 2 workers (gloo on CPU; NCCL with --gpu):
  - its pretrained LM, vision tower and VQ replaced by stand-ins saved as the real checkpoints ship
    (a float16 Llama with only a sentencepiece tokenizer.model, a full SigLIP checkpoint, a LlamaGen
    VQ checkpoint carrying its trainer's args), or with --real-paths its own folders;
  - a small generated smart-watch dataset (64 training images at 64 px), batch 8, 24 optimiser steps;
  - evaluations at 1/3 and 2/3 of the run and at the end, each sharded over the workers;
  - a failure at step 12 on purpose: Ray Train restarts the workers, which resume from the
    checkpoint of step 8, as a preempted GPU run would;
  - finite metrics, logged to MLflow (experiment uvlm-rehearsal).
It prints what it exercised. Takes about a minute on 2 CPU cores. Examples:
  uvlm rehearse paper-vicuna7b-siglip-llamagen
  uvlm rehearse paper-vicuna7b-siglip-same --set lm.trainability=frozen
  uvlm rehearse paper-vicuna7b-siglip-llamagen --set lm.trainability=full --set runtime.strategy=fsdp
  uvlm rehearse my-run.yaml --real-paths --gpu        # on a GPU node, with the real checkpoints
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from search.commands.plan import DEFAULT_GPU, add_config_arguments

EXPERIMENT = "uvlm-rehearsal"
STEPS, EVERY, FAIL_AT, BATCH, WORKERS = 24, 1 / 3, 12, 8, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rehearse", help="run a paper-scale config at tiny shapes through every code path it takes",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--real-paths", action="store_true",
                        help="keep the config's checkpoint folders instead of tiny stand-ins (their shapes are kept too)")
    parser.add_argument("--gpu", action="store_true", help="2 GPU workers with NCCL (default: 2 CPU workers with gloo)")
    parser.add_argument("--plan-gpu", default=DEFAULT_GPU, help=f"the GPU the plan is made for (default {DEFAULT_GPU})")
    parser.add_argument("--workdir", metavar="DIR", help="working folder (default: $UVLM_WORKDIR, else ./uvlm-work)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search.commands import plan
    from trainables import workspace
    from trainables.config import config_path, load_config

    config = load_config(config_path(args.config), args.overrides)
    print(plan.check(config, args.plan_gpu), flush=True)
    if args.workdir:
        os.environ["UVLM_WORKDIR"] = args.workdir
    folder = workspace.workdir() / "rehearsal"
    tiny, exercised = shrink(config, folder, args.real_paths, args.gpu)
    print(f"\nuvlm: rehearsing at tiny shapes in {folder}", flush=True)
    metrics, history = rehearse(tiny, folder)
    problems = check(metrics, history)
    print(report(tiny, exercised, metrics, history))
    if problems:
        print("uvlm: the rehearsal did not exercise everything: " + "; ".join(problems))
        return 1
    print("uvlm: rehearsal passed: plan, then `uvlm train` with the real folders")
    return 0


def shrink(config, folder: Path, real_paths: bool, gpu: bool):
    """The config at tiny shapes, and what its checkpoints are (for the report)."""
    from trainables.config import load_config
    from trainables.standins import save_standins

    sets = {
        "data.path": str(folder / "data"), "data.generate_train_images": 64, "data.generate_test_images": 16,
        "data.generate_image_size": 64, "data.test_images": 16, "data.train_images": None,
        "optim.batch_size": BATCH, "budget.unit": "steps", "budget.value": STEPS,
        "eval.every_fraction": EVERY, "eval.max_eval_records": 8, "eval.grid_images": 4,
        "runtime.num_workers": WORKERS, "runtime.use_gpu": gpu, "runtime.threads_per_worker": 1,
        "runtime.cache_dir": str(folder / "cache"),
    }
    if not real_paths:
        standins = save_standins(folder / "standins", image_size=64, generation_size=32)
        sets |= {"understanding.image_size": 64, "generation.image_size": 32,
                 "lm.lora_rank": min(config.lm.lora_rank, 8), "lm.lora_alpha": min(config.lm.lora_alpha, 16)}
        sets |= {key: value for key, value in standins.overrides().items() if _uses(config, key)}
    tiny = load_config(config.model_dump(mode="json"), sets)
    return tiny, checkpoints(tiny)


def _uses(config, key: str) -> bool:
    """Whether the config reads the checkpoint field `key` (a stand-in replaces only what the config loads)."""
    section, field = key.split(".")
    if key == "generation.feature_pretrained_path":
        return config.generation.space.value in ("siglip", "clip")
    if key == "understanding.pretrained_path":
        return config.understanding.encoder.value in ("siglip", "clip")
    if key == "generation.vq_pretrained_path":
        return config.generation.vq_pretrained_path is not None
    return getattr(getattr(config, section), field) is not None


def checkpoints(config) -> list[str]:
    """A line per checkpoint the run loads: where, and as what it was saved."""
    lines = []
    if config.lm.pretrained_path:
        folder = Path(config.lm.pretrained_path)
        saved = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        tokenizer = sorted(p.name for p in folder.glob("tokenizer*"))
        lines.append(f"LM          {folder} (saved {saved.get('dtype') or saved.get('torch_dtype') or '?'}; tokenizer files: "
                     f"{', '.join(tokenizer) or 'none'})")
    for what, path in (("tower", config.understanding.pretrained_path), ("VQ", config.generation.vq_pretrained_path)):
        if path:
            kind = ""
            if Path(path, "config.json").is_file():
                kind = f" ({json.loads(Path(path, 'config.json').read_text()).get('model_type', '?')} checkpoint)"
            elif Path(path).is_file():
                from trainables.llamagen import read_checkpoint

                blob = read_checkpoint(Path(path))
                kind = f" (keys: {', '.join(sorted(blob)) if isinstance(blob, dict) else type(blob).__name__})"
            lines.append(f"{what:<12}{path}{kind}")
    return lines


def rehearse(config, folder: Path) -> tuple[dict[str, float], list[float]]:
    """Train through Ray Train with the rehearsed failure; -> final metrics and the steps evaluations were logged at."""
    from mlflow.tracking import MlflowClient

    from search import cluster
    from search.commands.train import end_mlflow_run, start_mlflow_run
    from trainables import workspace
    from trainables.data.prepare import ensure_dataset
    from trainables.launch import fit
    from trainables.mlflow_names import FAILED, FINISHED, Metric

    uri = workspace.tracking_uri(None)
    ensure_dataset(config.data)
    name = time.strftime("rehearse-%Y%m%d-%H%M%S")
    mlflow_run = start_mlflow_run(uri, name, config, EXPERIMENT)
    cluster.start(None, workspace.workdir(), verbose=True, cpus=max(WORKERS, os.cpu_count() or 1),
                  gpus=None if config.runtime.use_gpu else 0, worker_log_level="ERROR")
    try:
        metrics = fit(config, folder / "runs" / name, run_name=name, storage_path=folder / "ray-results",
                      mlflow_run=mlflow_run, fail_at_step=FAIL_AT)
    except BaseException as error:
        end_mlflow_run(mlflow_run, FAILED, error)
        raise
    finally:
        cluster.stop()
    end_mlflow_run(mlflow_run, FINISHED)
    history = MlflowClient(uri).get_metric_history(mlflow_run["run_id"], Metric.STEP)
    return metrics, sorted({m.value for m in history})


def check(metrics: dict[str, float], evaluated: list[float]) -> list[str]:
    from trainables.mlflow_names import Metric

    problems = []
    if metrics.get(Metric.STEP) != STEPS:
        problems.append(f"the run ended at step {metrics.get(Metric.STEP)}, not {STEPS}")
    if metrics.get(Metric.RESUMED_FROM_STEP) is None:
        problems.append("the run did not resume from a checkpoint after the rehearsed failure")
    if len([step for step in evaluated if step < STEPS]) < 2:
        problems.append(f"evaluations along the run at steps {evaluated}, fewer than 2")
    bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:
        problems.append(f"non-finite metrics: {', '.join(bad)}")
    return problems


def report(config, exercised: list[str], metrics: dict[str, float], evaluated: list[float]) -> str:
    from trainables.mlflow_names import Metric, overall

    runtime, backend = config.runtime, "nccl" if config.runtime.use_gpu else "gloo"
    lines = ["exercised:", *[f"  {line}" for line in exercised],
             f"  precision   {runtime.precision.value}: frozen weights {'bf16' if runtime.precision.value == 'bf16' else 'fp32'}, "
             f"trained weights fp32, forward under {'bf16 autocast' if runtime.precision.value == 'bf16' else 'fp32'}",
             f"  LM          {config.lm.trainability.value}" + (f" r={config.lm.lora_rank}" if config.lm.trainability.value == "lora" else "")
             + ", new token rows trained",
             f"  Ray Train   {runtime.num_workers} workers, {backend}, {_strategy(runtime)}; loss all-reduce and evaluation gather "
             "on each worker's device",
             f"  steps       {int(metrics.get(Metric.STEP, 0))} of batch {config.optim.batch_size}; failure at step {FAIL_AT}, "
             f"resumed from the checkpoint of step {metrics.get(Metric.RESUMED_FROM_STEP, float('nan')):.0f}",
             f"  evaluations at steps {', '.join(f'{s:.0f}' for s in evaluated)} (sharded over the workers; checkpoint at each)",
             f"  metrics     loss {metrics.get(Metric.TRAIN_LOSS, float('nan')):.3f}, VQA {metrics.get(overall(Metric.VQA), float('nan')):.3f}, "
             f"generation probe {metrics.get(overall(Metric.GEN_PROBE), float('nan')):.3f}; all finite: "
             f"{all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))}"]
    return "\n".join(lines)


def _strategy(runtime) -> str:
    if runtime.strategy.value == "fsdp":
        return "FSDP (weights, gradients and AdamW states sharded; gathered whole to evaluate; one full checkpoint)"
    return "DDP"
