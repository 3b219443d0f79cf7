"""Benchmark: the paper preset's real path on one GPU, at ~1B scale, against `uvlm plan`'s estimate.

    python benchmarks/gpu_paper_shape.py                 # one GPU: about 4 minutes
    python benchmarks/gpu_paper_shape.py --tiny          # the same path on CPU at tiny width (checks the script)

What it loads is saved first, the way the real checkpoints ship (nothing is downloaded): a ~1.1B
Llama (hidden 2048, 16 layers, MLP 5632, vocabulary 32,000) saved in bfloat16 with only a
sentencepiece tokenizer.model; a SigLIP-base-shaped full SiglipModel (768 wide, 12 layers, 224 px,
16 px patches: 196 tokens); a LlamaGen vq_ds16_c2i-shaped VQ checkpoint with its trainer's args
(ch 128, 2 blocks, z 256, 16,384 codes, 256 px: 256 tokens). The run is `paper-vicuna7b-siglip-llamagen`
with those folders, one worker with the preset's batch per worker (128 / 8 = 16), LoRA r=128/alpha 256,
bf16, on generated 224 px smart-watch data; each config once with and once without activation checkpointing.

In-process on one GPU (the recipe of a Ray Train worker, without Ray: the GPU work is the same; the
device machine has no Ray). Prints per run: step time (median of the steady state), tokens/s, MFU
against --peak-tflops (4 x LM parameters per token for LoRA: forward, input gradients; + 2 x tower
parameters per image token), peak memory (torch.cuda.max_memory_allocated), evaluation time,
checkpoint size and time, and the plan's per-worker peak beside the measured one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPU = {"lm": dict(hidden=2048, layers=16, heads=16, intermediate=5632, vocabulary=32000),
       "siglip": dict(image_size=224, hidden=768, layers=12, heads=12),
       "vq": dict(image_size=256, ch=128, blocks=2, z_channels=256, codebook_size=16384),
       "sets": {"optim.batch_size": 16, "data.generate_image_size": 224, "data.generate_train_images": 1000}}
TINY = {"lm": dict(hidden=64, layers=2, heads=4), "siglip": dict(image_size=64), "vq": dict(image_size=32),
        "sets": {"optim.batch_size": 8, "data.generate_image_size": 64, "data.generate_train_images": 64,
                 "understanding.image_size": 64, "generation.image_size": 32, "lm.lora_rank": 8, "lm.lora_alpha": 16}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny width (checks the path without a GPU)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 40 on GPU, 6 tiny)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--gpu", default="h200", help="the plan's accelerator (uvlm plan --gpu)")
    parser.add_argument("--folder", default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    import torch

    shape = TINY if args.tiny else GPU
    if not args.tiny and not torch.cuda.is_available():
        print("no GPU visible: run with --tiny to check the path on CPU", file=sys.stderr)
        return 2
    folder = Path(args.folder or tempfile.mkdtemp(prefix="uvlm-gpu-bench-"))
    device = torch.device("cpu" if args.tiny else "cuda")
    started = time.monotonic()
    paths = save_checkpoints(folder / "models", shape, device)
    print(f"checkpoints saved in {time.monotonic() - started:.0f} s", flush=True)
    results = []
    for checkpointing in (False, True):
        results.append(measure(folder, paths, shape, device, args, checkpointing))
        print(json.dumps(results[-1], indent=1), flush=True)
    header = f"{'activation ckpt':<16}{'step s':>8}{'tokens/s':>10}{'MFU':>7}{'peak GiB':>10}{'plan GiB':>10}{'eval s':>8}{'ckpt MB':>9}{'ckpt s':>8}"
    print(header)
    for r in results:
        print(f"{str(r['activation_checkpointing']):<16}{r['step_seconds_median']:>8.3f}{r['tokens_per_second']:>10.0f}"
              f"{r['mfu']:>7.1%}{r['peak_memory_gib']:>10.2f}{r['plan_peak_gib']:>10.2f}{r['eval_seconds']:>8.1f}"
              f"{r['checkpoint_mb']:>9.1f}{r['checkpoint_seconds']:>8.2f}")
    vq_rows = vq_memory(paths["generation.vq_pretrained_path"], shape["vq"]["image_size"], device)
    print(f"{'VQ images':<10}{'chunk':>6}{'peak GiB':>10}{'seconds':>9}   (encode + decode)")
    for row in vq_rows:
        print(f"{row['images']:<10}{row['chunk']:>6}{row['peak_gib']:>10.2f}{row['seconds']:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "vq": vq_rows}, indent=2))
    return 0


def vq_memory(path: str, image_size: int, device) -> list[dict]:
    """Peak memory of the VQ's encode and decode against the number of images: flat past one chunk."""
    import torch

    from trainables.chunks import set_image_budget
    from trainables.llamagen import load_llamagen_vq

    vq = load_llamagen_vq(path, image_size).to(device)
    set_image_budget(vq, 2 * 2**30 if device.type == "cuda" else 8 * vq.bytes_per_image)  # tiny: 8-image chunks
    rows = []
    for n in (1, vq.chunk, 4 * vq.chunk, 16 * vq.chunk):
        images = torch.rand(n, 3, image_size, image_size, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        started = time.monotonic()
        vq.decode(vq.encode(images))
        if device.type == "cuda":
            torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else float("nan")
        rows.append({"images": n, "chunk": vq.chunk, "peak_gib": peak, "seconds": time.monotonic() - started})
        del images
    return rows


def save_checkpoints(root: Path, shape: dict, device) -> dict[str, str]:
    import torch

    from trainables import standins

    root.mkdir(parents=True, exist_ok=True)
    standins.save_lm(root / "lm", dtype=torch.bfloat16, device=str(device), **shape["lm"])
    standins.save_siglip(root / "siglip", **shape["siglip"])
    standins.save_llamagen(root / "vq.pt", **shape["vq"])
    return {"lm.pretrained_path": str(root / "lm"), "understanding.pretrained_path": str(root / "siglip"),
            "generation.vq_pretrained_path": str(root / "vq.pt")}


def measure(folder: Path, paths: dict, shape: dict, device, args, checkpointing: bool) -> dict:
    import torch

    from trainables.accelerators import ACCELERATORS
    from trainables.config import config_path, load_config
    from trainables.data.prepare import ensure_dataset
    from trainables.launch import loop_config
    from trainables.mlflow_names import Metric, overall
    from trainables.plan import make_plan
    from trainables.train import LocalSession, Recipe

    steps = args.steps or (6 if args.tiny else 40)
    config = load_config(config_path("paper-vicuna7b-siglip-llamagen"), {
        **paths, **shape["sets"], "data.path": str(folder / "data"), "data.generate_test_images": 64, "data.test_images": 64,
        "budget.unit": "steps", "budget.value": steps, "eval.every_fraction": 0.5, "eval.max_eval_records": 64,
        "eval.grid_images": 4, "runtime.num_workers": 1, "runtime.use_gpu": not args.tiny,
        "runtime.cache_dir": str(folder / "cache"), "lm.activation_checkpointing": checkpointing,
        "runtime.precision": "bf16"})
    ensure_dataset(config.data)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    session = LocalSession(folder / "run")
    session.device = device  # the one-worker recipe on the GPU
    recipe = Recipe(loop_config(config, folder / f"run-{checkpointing}", None), session)
    started = time.monotonic()
    metrics = recipe.run()
    wall = time.monotonic() - started
    with tempfile.TemporaryDirectory() as kept:
        begun = time.monotonic()
        recipe._save_checkpoint(Path(kept))
        checkpoint_seconds = time.monotonic() - begun
        checkpoint_mb = sum(p.stat().st_size for p in Path(kept).iterdir()) / 2**20
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    plan = make_plan(config, ACCELERATORS[args.gpu])
    step = statistics.median(recipe.step_times[2:] or recipe.step_times)
    tokens = sum(len(e.ids) for e in recipe.examples) / len(recipe.examples) * config.optim.batch_size
    lm_params = sum(p.numel() for n, p in recipe.model.lm.named_parameters() if "lora_" not in n and "trainable_tokens" not in n)
    tower_params = sum(p.numel() for p in recipe.model.encoder.parameters())
    und_images = sum(e.understanding for e in recipe.examples) / len(recipe.examples) * config.optim.batch_size
    flops = (4 + (2 if checkpointing else 0)) * lm_params * tokens + 2 * tower_params * recipe.model.encoder.num_tokens * und_images
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "activation_checkpointing": checkpointing,
        "lm_parameters": lm_params, "steps": steps, "batch": config.optim.batch_size, "tokens_per_step": round(tokens),
        "step_seconds_median": step, "tokens_per_second": tokens / step, "model_tflop_per_step": flops / 1e12,
        "mfu": flops / step / (args.peak_tflops * 1e12) if device.type == "cuda" else float("nan"),
        "peak_memory_gib": peak, "plan_peak_gib": plan.peak_gb - plan.rows[-1][1],  # the plan without its framework overhead
        "plan_rows_gib": {name: round(value, 3) for name, value, _ in plan.rows},
        "eval_seconds": metrics[Metric.EVAL_SECONDS], "setup_seconds": metrics[Metric.SETUP_SECONDS], "wall_seconds": wall,
        "checkpoint_mb": checkpoint_mb, "checkpoint_seconds": checkpoint_seconds,
        "final_loss": metrics[Metric.TRAIN_LOSS], "vqa_overall": metrics.get(overall(Metric.VQA)),
    }


if __name__ == "__main__":
    sys.exit(main())
