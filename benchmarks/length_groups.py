"""Step time of the trainable by `runtime.length_groups`: one padded batch (1, the baseline) against length groups.

    python benchmarks/length_groups.py [--steps 40] [--groups 1 2 3 4] [--arms understanding mixed generation]

For each arm, one run's recipe is built as `uvlm train` builds it (shipped tiny CPU configuration,
1,000 training images, one thread), then `Recipe.train_step` is timed on the same global batches
with each group count in turn, step after step, so that the load of a shared machine drifts over
all of them alike. Printed: median step time per setting, the ratio to one group, and the padded
tokens per real token that each setting computes on.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "smartwatch"


def measure(arm: str, steps: int, groups: list[int], data: Path) -> dict[int, tuple[float, float]]:
    """group count -> (median step seconds, padded tokens / real tokens)."""
    import torch

    from trainables.config import load_config
    from trainables.launch import loop_config
    from trainables.rundata import length_groups
    from trainables.train import LocalSession, Recipe

    config = load_config(None, [f"data.path={data}", f"data.arm={arm}", "data.train_images=1000",
                                f"budget.value={steps}"])
    times: dict[int, list[float]] = {k: [] for k in groups}
    padding: dict[int, list[float]] = {k: [] for k in groups}
    with tempfile.TemporaryDirectory() as out:
        recipe = Recipe(loop_config(config, out, None), LocalSession(Path(out)))
        recipe.setup()
        torch.set_num_threads(1)
        for step in range(steps):
            batch = [recipe.examples[i] for i in recipe.order.batch(step, config.optim.batch_size)]
            real = sum(len(e.ids) for e in batch)
            for k in groups:
                runtime = recipe.config.runtime.model_copy(update={"length_groups": k})
                recipe.config = recipe.config.model_copy(update={"runtime": runtime})
                started = time.perf_counter()
                recipe.train_step(batch)
                times[k].append(time.perf_counter() - started)
                padding[k].append(sum(len(g) * max(len(e.ids) for e in g) for g in length_groups(batch, k)) / real)
    return {k: (statistics.median(times[k]), statistics.mean(padding[k])) for k in groups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="global batches timed per setting")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 3, 4], help="settings; the first is the baseline")
    parser.add_argument("--arms", nargs="+", default=["understanding", "mixed", "generation"])
    parser.add_argument("--data", type=Path, default=DATA, help="smart-watch dataset (made by `uvlm data smartwatch`)")
    args = parser.parse_args()
    if not (args.data / "manifest.json").is_file():
        raise SystemExit(f"no dataset at {args.data}: run `uvlm data smartwatch --out {args.data}` first")

    print(f"{'arm':<14} {'groups':>6} {'step ms':>8} {'ratio':>6} {'padded/real':>11}")
    for arm in args.arms:
        results = measure(arm, args.steps, args.groups, args.data)
        base = results[args.groups[0]][0]
        for k, (seconds, padded) in results.items():
            print(f"{arm:<14} {k:>6} {seconds * 1000:>8.1f} {seconds / base:>6.3f} {padded:>11.3f}")


if __name__ == "__main__":
    main()
