"""The LM head on labelled positions only (trainables.losses.text_loss) against logits at every position, the
text loss as it was computed before.

    python benchmarks/text_head.py [--steps 120] [--set key=value ...]

Both run the real training step (`Recipe.train_step`: length groups, clipping, AdamW) of one model in this
process, one thread, in alternating blocks of 10 steps so that a drifting load on a shared machine falls on both.
Prints each one's median step, their ratio, and the two text losses of one batch (they must agree). Defaults are the
shipped tiny CPU configuration; the demo's studies run on `--set lm.pretraining.steps=800` (a 489-word vocabulary).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import trainables.model
from trainables.losses import IGNORE, text_loss

BLOCK = 10


def every_position(lm_head, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: (B, T, V) logits, then the rows with a label."""
    logits, labels = lm_head(hidden)[:, :-1], labels[:, 1:]
    keep = labels != IGNORE
    return F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum"), keep.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120, help="steps of each variant")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from trainables.config import load_config
    from trainables.data.prepare import ensure_dataset
    from trainables.launch import loop_config
    from trainables.sequences import collate
    from trainables.train import LocalSession, Recipe

    config = load_config(None, args.overrides + [f"budget.value={2 * args.steps}"])
    ensure_dataset(config.data)
    variants = {"labelled positions": text_loss, "every position": every_position}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as out:
        recipe = Recipe(loop_config(config, out, None), LocalSession(Path(out)))
        recipe.setup()
        model, size = recipe.model, config.optim.batch_size
        batch = collate([recipe.examples[i] for i in recipe.order.batch(0, size)], recipe.data.train.images, recipe.tok)
        with torch.no_grad():
            hidden = model.teacher_forced_hidden(batch, model.target_tokens(batch.gen_images)[0])
            losses = {name: float(loss(model.lm.get_output_embeddings(), hidden, batch.labels)[0]) for name, loss in variants.items()}
        for step in range(2 * args.steps):
            name = list(variants)[(step // BLOCK) % 2]
            trainables.model.text_loss = variants[name]
            started = time.perf_counter()
            recipe.train_step([recipe.examples[i] for i in recipe.order.batch(step, size)])
            times[name].append(time.perf_counter() - started)
        trainables.model.text_loss = text_loss
    vocab = model.lm.get_output_embeddings().weight.shape[0]
    print(f"vocabulary {vocab}, batch {size}, {args.steps} steps each (the first block of each left out)")
    print(f"{'variant':<22}{'median step s':>14}{'text loss, one batch':>22}")
    medians = {name: statistics.median(t[BLOCK:]) for name, t in times.items()}
    for name in variants:
        print(f"{name:<22}{medians[name]:>14.4f}{losses[name]:>22.4f}")
    print(f"labelled / every: {medians['labelled positions'] / medians['every position']:.3f}")


if __name__ == "__main__":
    main()
