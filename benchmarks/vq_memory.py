"""Benchmark: peak memory of a LlamaGen VQ's encode + decode against the number of images, chunked by
runtime.image_memory_gb (trainables/chunks.py) and, as the baseline, in one batch.

    python benchmarks/vq_memory.py            # about 1 minute on 2 cores

Each measurement runs in a fresh process (peak RSS is a lifetime maximum); the figure is the peak RSS
over the RSS just before the call, with the model and the input images already in memory. The VQ is
LlamaGen's design at half width and half resolution (ch 64, 128 px: 64 tokens), so that CPU time stays
short; its activations per image are a sixteenth of vq_ds16_c2i's at 256 px.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGES = (1, 8, 32, 128)
BUDGET_GB = 0.25


def measure(images: int, chunked: bool) -> dict:
    """In this process: build the VQ, then encode and decode `images` random images once."""
    import torch

    from trainables.chunks import set_image_budget
    from trainables.llamagen import LlamaGenVQ

    torch.set_num_threads(2)
    torch.manual_seed(0)
    vq = LlamaGenVQ(ch=64, ch_mult=[1, 1, 2, 2, 4], blocks=2, z_channels=128, codebook_size=4096, dim=8, image_size=128).eval()
    set_image_budget(vq, BUDGET_GB * 2**30)
    if not chunked:
        vq.chunk = images
    batch = torch.rand(images, 3, 128, 128)
    before = rss_mb()
    vq.decode(vq.encode(batch))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": images, "chunk": vq.chunk, "peak_over_start_mb": peak - before,
            "estimate_per_chunk_mb": vq.bytes_per_image * min(vq.chunk, images) / 2**20}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    if len(sys.argv) == 3:  # a child: one measurement
        print(json.dumps(measure(int(sys.argv[1]), sys.argv[2] == "chunked")))
        return 0
    print(f"{'images':>7}{'chunk':>7}{'chunked MB':>12}{'one batch MB':>14}{'ratio':>8}{'estimate MB':>13}")
    for n in IMAGES:
        rows = {}
        for mode in ("chunked", "whole"):
            done = subprocess.run([sys.executable, __file__, str(n), mode], capture_output=True, text=True, check=True)
            rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        c, w = rows["chunked"], rows["whole"]
        print(f"{n:>7}{c['chunk']:>7}{c['peak_over_start_mb']:>12.0f}{w['peak_over_start_mb']:>14.0f}"
              f"{w['peak_over_start_mb'] / max(c['peak_over_start_mb'], 1):>8.2f}{c['estimate_per_chunk_mb']:>13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
