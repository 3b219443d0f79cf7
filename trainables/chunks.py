"""Images through the frozen image modules (VQ tokenizers, vision towers) a chunk at a time.

A LlamaGen VQ at 256 px holds ~0.3 GB of activations per image in its first level, so pushing
a fit sample of 512 images, or an evaluation's decodes, through it at once would take tens of GB.
Each such module states an estimate of its peak activation bytes per image (`bytes_per_image`);
`set_image_budget` gives it the largest chunk that fits runtime.image_memory_gb, and its encode or
decode then runs chunk by chunk: peak memory is flat in the number of images past one chunk
(benchmarks/vq_memory.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

DEFAULT_CHUNK = 64


def set_image_budget(model: nn.Module, budget_bytes: float) -> None:
    """Give every chunked module inside `model` the chunk its per-image estimate allows."""
    for module in model.modules():
        per_image = getattr(module, "bytes_per_image", None)
        if per_image:
            module.chunk = max(1, int(budget_bytes // per_image))


def chunked(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, chunk: int) -> torch.Tensor:
    """fn over `inputs` (N, ...) `chunk` rows at a time, the outputs concatenated along the first axis."""
    if len(inputs) <= chunk:
        return fn(inputs)
    return torch.cat([fn(inputs[start : start + chunk]) for start in range(0, len(inputs), chunk)])


def full_precision(device: torch.device) -> torch.autocast:
    """Autocast off: a frozen tokenizer's codes are the same inside and outside a bf16 forward."""
    return torch.autocast(device.type, enabled=False)
