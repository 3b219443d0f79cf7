"""The GPUs `uvlm plan` knows: memory, dense bf16 peak and memory bandwidth, from the vendors' datasheets (SXM parts)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Accelerator:
    name: str
    memory_gb: float
    bf16_tflops: float  # dense
    bandwidth_tbs: float  # HBM


ACCELERATORS = {
    "h100-80gb": Accelerator("H100 80GB SXM", 80, 989, 3.35),
    "h200": Accelerator("H200 141GB SXM", 141, 989, 4.8),
    "a100-80gb": Accelerator("A100 80GB SXM", 80, 312, 2.0),
    "a100-40gb": Accelerator("A100 40GB", 40, 312, 1.6),
    "l40s": Accelerator("L40S 48GB", 48, 362, 0.86),
}
