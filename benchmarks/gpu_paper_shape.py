"""Benchmark: the paper-shaped model on a GPU through Ray Train (NCCL, bf16): step time, peak memory, MFU.

    python benchmarks/gpu_paper_shape.py                 # one GPU machine, about 5-8 minutes
    python benchmarks/gpu_paper_shape.py --tiny          # the same path on CPU at tiny width (gloo, fp32)

The paper's setting at reduced width, randomly initialised (nothing is downloaded): a ~1B-parameter
Llama (hidden 2048, 16 layers, MLP 5632) with LoRA r=128/alpha=256, a SigLIP-base-wide
understanding encoder (768 wide but 2 layers as every random tower, 224 px, 16 px patches: 196 tokens), a VQ generation space (256 px,
16 px patches: 256 tokens, k-means codebook of 1024 codes fitted on the data) with cross-entropy,
batch 64 per GPU, on 224 px smart-watch data it generates first. One TorchTrainer worker per GPU.

Prints step time (median of the steady state), throughput, peak GPU memory, the model FLOPs per step
(4 x LM parameters per real token for LoRA: forward plus activation gradients, frozen weights get no
weight gradient; plus the encoder's forward) and the model FLOP utilisation against --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPU_SHAPE = {
    "lm.hidden_size": 2048, "lm.num_layers": 16, "lm.num_heads": 16, "lm.intermediate_size": 5632,
    "lm.max_positions": 1024, "lm.trainability": "lora", "lm.lora_rank": 128, "lm.lora_alpha": 256,
    "understanding.encoder": "siglip", "understanding.hidden_size": 768, "understanding.image_size": 224,
    "understanding.patch_size": 16,
    "generation.space": "vq", "generation.loss": "ce", "generation.image_size": 256, "generation.patch_size": 16,
    "generation.codebook_size": 1024,
    "data.generate_image_size": 224, "optim.lr": 2e-4, "optim.projector_lr": 1e-4, "runtime.precision": "bf16",
    "runtime.use_gpu": True, "runtime.threads_per_worker": 4,
}
TINY_SHAPE = {
    "lm.trainability": "lora", "lm.lora_rank": 8, "lm.lora_alpha": 16, "lm.max_positions": 256,
    "understanding.encoder": "siglip", "understanding.patch_size": 16,
    "generation.space": "vq", "generation.loss": "ce", "generation.codebook_size": 64,
    "data.generate_image_size": 64, "runtime.threads_per_worker": 1,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny width (checks the path without a GPU)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 300 on GPU, 20 tiny)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default 64 per GPU, 16 tiny)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--folder", default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    import torch

    from search import cluster
    from trainables.config import load_config
    from trainables.data.prepare import ensure_dataset
    from trainables.launch import fit

    gpus = 0 if args.tiny else torch.cuda.device_count()
    if not args.tiny and gpus == 0:
        print("no GPU visible: run with --tiny to check the path on CPU", file=sys.stderr)
        return 2
    workers = max(1, gpus)
    steps = args.steps or (20 if args.tiny else 300)
    batch = args.batch or (16 if args.tiny else 64 * workers)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="uvlm-gpu-bench-"))
    shape = TINY_SHAPE if args.tiny else GPU_SHAPE
    config = load_config(None, {
        **shape, "data.path": str(folder / "data"), "data.generate_train_images": 2000, "data.generate_test_images": 64,
        "data.test_images": 64, "data.arm": "mixed", "optim.batch_size": batch, "budget.unit": "steps",
        "budget.value": steps, "eval.every_steps": 10 * steps, "eval.max_eval_records": 32, "eval.grid_images": 4,
        "runtime.num_workers": workers, "runtime.cache_dir": str(folder / "cache"),
    })
    started = time.monotonic()
    ensure_dataset(config.data)
    data_seconds = time.monotonic() - started
    cluster.start(None, folder, cpus=os.cpu_count(), gpus=gpus)
    try:
        started = time.monotonic()
        metrics = fit(config, folder / "run", run_name="gpu-bench", storage_path=folder / "ray")
        wall = time.monotonic() - started
    finally:
        cluster.stop()

    tokens, lm_params, encoder_params, n_und = tokens_and_params(config)
    step = metrics["time/step_seconds_median"]
    flops = 4 * lm_params * tokens * batch + 2 * encoder_params * n_und * batch
    figures = {
        "device": torch.cuda.get_device_name(0) if gpus else "cpu", "workers": workers, "steps": steps, "batch": batch,
        "lm_parameters": lm_params, "real_tokens_per_record": tokens, "step_seconds_median": step,
        "records_per_second": batch / step, "peak_memory_gb": metrics.get("memory/peak_gb", float("nan")),
        "model_tflop_per_step": flops / 1e12, "mfu": flops / step / (args.peak_tflops * 1e12 * workers) if gpus else float("nan"),
        "wall_seconds": wall, "data_seconds": data_seconds,
    }
    for key, value in figures.items():
        print(f"{key:<26}{value:.4g}" if isinstance(value, float) else f"{key:<26}{value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def tokens_and_params(config) -> tuple[float, int, int, int]:
    """Mean real tokens per training record, the LM's and the understanding encoder's parameter counts,
    and the encoder's tokens per image."""
    from trainables.rundata import RunData
    from trainables.tokenizer import WordTokenizer

    data = RunData(config, config.data.path)
    tok = WordTokenizer.build(data.texts)
    n_und = ((config.understanding.image_size or data.image_size) // config.understanding.patch_size) ** 2
    n_gen = (config.generation.image_size // config.generation.patch_size) ** 2
    examples = data.examples(tok, n_und, n_gen, config.lm.max_positions)
    tokens = statistics.mean(len(e.ids) for e in examples)
    h, layers, mlp = config.lm.hidden_size, config.lm.num_layers, config.lm.intermediate_size
    lm_params = layers * (4 * h * h + 3 * h * mlp) + 2 * tok.vocab_size * h  # attention, SwiGLU MLP, embeddings and head
    w = config.understanding.hidden_size
    encoder_params = 2 * (12 * w * w) if config.understanding.encoder.value in ("siglip", "clip") else 0
    return tokens, lm_params, encoder_params, n_und


if __name__ == "__main__":
    sys.exit(main())
