"""Smart-watch generation throughput: `uvlm data smartwatch` against a research-code baseline, in one run.

The baseline does what research code usually does: one process, and per image
render it, save one PNG file (PIL defaults) and one JSON file of its records.
Ours is `generate_smartwatch`: worker processes over fixed shards, PNG bytes
and records into Parquet, a manifest with hashes. Both sample the same faces
and records; the times include everything (ours: process start-up and hashing).
On a shared machine the load changes from second to second, so the two are
timed alternately, --repeats times, and each keeps its best time.

    python benchmarks/data_generation.py                      # 1,000 images at 64 and 224 px, best of 3: under a minute on 2 idle cores
    python benchmarks/data_generation.py --images 60000 --sizes 224   # the paper's training set
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from trainables.data.render import render_watch
from trainables.data.smartwatch import SmartwatchOptions, generate_smartwatch, image_records, sample_image


def baseline(images: int, size: int, folder: Path) -> float:
    """Seconds to render `images` and write one PNG and one JSON file each, in this process."""
    folder.mkdir(parents=True)
    start = time.perf_counter()
    for index in range(images):
        face, colour, rng = sample_image(0, "train", index)
        image_id = f"train-{index:06d}"
        records = image_records(face, rng, image_id, "train")
        render_watch(face, colour, size).save(folder / f"{image_id}.png")
        with open(folder / f"{image_id}.json", "w") as handle:
            json.dump([dataclasses.asdict(record) for record in records], handle)
    return time.perf_counter() - start


def ours(images: int, size: int, folder: Path, workers: int | None) -> float:
    """Seconds for `generate_smartwatch` to write the same images (plus one test image) as a dataset."""
    options = SmartwatchOptions(train_images=images, test_images=1, image_size=size)
    start = time.perf_counter()
    generate_smartwatch(options, folder, workers=workers, show_progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images per setting (default 1000)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="image sides in pixels")
    parser.add_argument("--workers", type=int, default=None, help="our worker processes (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timings per setting; the best counts")
    args = parser.parse_args()
    if min(args.images, args.repeats, args.workers or 1) < 1:
        parser.error("--images, --repeats and --workers must be >= 1")
    workers = args.workers or os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory(prefix="uvlm-bench-") as scratch:
        for size in args.sizes:
            base_seconds, our_seconds = float("inf"), float("inf")
            for repeat in range(args.repeats):
                folder = Path(scratch) / f"{size}-{repeat}"
                base_seconds = min(base_seconds, baseline(args.images, size, folder / "baseline"))
                our_seconds = min(our_seconds, ours(args.images, size, folder / "ours", workers))
                shutil.rmtree(folder)
            rows.append((size, args.images / base_seconds, (args.images + 1) / our_seconds))
    print(f"smart-watch generation, {args.images} images per setting, best of {args.repeats}, "
          f"ours with {workers} workers on {os.cpu_count()} cores")
    print(f"{'size':>6} {'baseline img/s':>15} {'ours img/s':>11} {'ratio':>6}")
    for size, base_rate, our_rate in rows:
        print(f"{size:>4}px {base_rate:>15.0f} {our_rate:>11.0f} {our_rate / base_rate:>5.2f}x")


if __name__ == "__main__":
    main()
