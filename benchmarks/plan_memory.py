"""Benchmark: `uvlm plan`'s memory estimate against the measured peak of CPU runs at several small shapes.

    python benchmarks/plan_memory.py          # about 2 minutes on 2 cores

Each shape trains 4 steps in a fresh process (in-process recipe, one worker, no evaluation). Measured: the
model's parameter bytes, and the peak RSS of the training steps over the RSS once the model is built (the
peak is reset there through /proc/self/clear_refs). Estimated: the plan's weights, and its rows that a
training step adds: AdamW states, autocast's weight copies and the larger of the activations of a length group
(at the data's own padded length) and the gradients (not the image working set, evaluation KV cache or GPU
overhead). The ratio should stay within 0.7-1.3. The plan's own estimate of the padded length is printed beside
the data's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "256x4 full fp32 b32": {"lm.hidden_size": 256, "lm.intermediate_size": 1024, "lm.num_layers": 4, "optim.batch_size": 32},
    "512x4 full fp32 b16": {"lm.hidden_size": 512, "lm.intermediate_size": 2048, "lm.num_layers": 4, "optim.batch_size": 16},
    "512x8 lora fp32 b32": {"lm.hidden_size": 512, "lm.intermediate_size": 2048, "lm.num_layers": 8, "lm.trainability": "lora",
                            "optim.batch_size": 32},
    "512x4 full bf16 b32": {"lm.hidden_size": 512, "lm.intermediate_size": 2048, "lm.num_layers": 4, "optim.batch_size": 32,
                            "runtime.precision": "bf16"},
    "1024x4 lora bf16 b16": {"lm.hidden_size": 1024, "lm.intermediate_size": 4096, "lm.num_layers": 4, "lm.num_heads": 8,
                             "lm.trainability": "lora", "optim.batch_size": 16, "runtime.precision": "bf16"},
    "1024x4 lora bf16 b16 ckpt": {"lm.hidden_size": 1024, "lm.intermediate_size": 4096, "lm.num_layers": 4, "lm.num_heads": 8,
                                  "lm.trainability": "lora", "optim.batch_size": 16, "runtime.precision": "bf16",
                                  "lm.activation_checkpointing": True},
}


def config_for(name: str, folder: Path):
    from trainables.config import load_config

    return load_config(None, {**SHAPES[name], "data.path": str(folder / "data"), "data.generate_train_images": 200,
                              "data.generate_test_images": 16, "data.test_images": 16, "budget.value": 4,
                              "eval.every_steps": 1000, "runtime.cache_dir": str(folder / "cache"), "runtime.length_groups": 1})


def measure(name: str, folder: Path) -> dict:
    import torch

    from trainables.accelerators import ACCELERATORS
    from trainables.launch import loop_config
    from trainables.plan import make_plan
    from trainables.train import LocalSession, Recipe

    torch.set_num_threads(2)
    config = config_for(name, folder)
    recipe = Recipe(loop_config(config, folder / "run", None), LocalSession(folder / "run"))
    recipe.setup()
    built = status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from here: training alone
    recipe.train()
    growth = status_mb("VmHWM") - built
    lengths = [len(e.ids) for e in recipe.examples]
    # the activation model is checked at the data's own padded length (the plan's estimate of it is shown apart)
    plan = make_plan(config, ACCELERATORS["h100-80gb"], tokens_per_record=max(lengths))
    rows = {row: value * 1024 for row, value, _ in plan.rows}
    estimated = make_plan(config, ACCELERATORS["h100-80gb"]).tokens_per_record
    weights = sum(p.numel() * p.element_size() for p in recipe.model.parameters()) / 2**20
    training = rows["optimizer states"] + rows["autocast weight copies"] + max(rows["activations"], rows["gradients"])
    return {"shape": name, "training_mb": growth, "training_plan_mb": training,
            "weights_mb": weights, "weights_plan_mb": rows["frozen weights"] + rows["trained weights"],
            "plan_tokens": estimated, "data_tokens_mean": sum(lengths) / len(lengths), "data_tokens_max": max(lengths)}


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (the peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    if len(sys.argv) == 3:  # a child: one shape
        print(json.dumps(measure(sys.argv[1], Path(sys.argv[2]))))
        return 0
    from trainables.data.prepare import ensure_dataset

    folder = Path(tempfile.mkdtemp(prefix="uvlm-plan-memory-"))
    ensure_dataset(config_for(next(iter(SHAPES)), folder).data)
    print(f"{'shape':<28}{'weights MB':>11}{'plan':>7}{'training MB':>12}{'plan':>7}{'plan/measured':>14}{'tokens plan':>12}{'data mean/max':>14}")
    for name in SHAPES:
        done = subprocess.run([sys.executable, __file__, name, str(folder)], capture_output=True, text=True)
        if done.returncode:
            print(f"{name:<28} failed: {done.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name:<28}{r['weights_mb']:>11.0f}{r['weights_plan_mb']:>7.0f}{r['training_mb']:>12.0f}{r['training_plan_mb']:>7.0f}"
              f"{r['training_plan_mb'] / r['training_mb']:>14.2f}{r['plan_tokens']:>12}{r['data_tokens_mean']:>9.0f}/{r['data_tokens_max']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
