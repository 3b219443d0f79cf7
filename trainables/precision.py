"""The dtype policy of a run, stated once; the same on CPU and GPU.

  frozen weights        the pretrained LM's base (under lora or frozen) and the vision towers:
                        bfloat16 when runtime.precision is bf16, else float32
  trained weights       float32, whatever the checkpoint was saved in: the LM under full fine-tuning,
                        LoRA adapters, new token rows, projectors, head, image-cell embeddings
  the forward           under torch.autocast(bfloat16) when bf16 (training and evaluation alike), else plain float32

Why: transformers loads a checkpoint in the dtype its config names (float16 for Vicuna-7B v1.5),
and one AdamW step on a float16 weight whose gradient is zero makes it non-finite; peft gives LoRA
weights the base layer's dtype. On CPU, bf16 autocast runs (AMX makes it pay from width ~256 up);
the tiny default model stays in fp32, where the casts would cost more than they save.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from trainables.config import Precision


def frozen_dtype(precision: Precision) -> torch.dtype:
    """The dtype of weights that never train."""
    return torch.bfloat16 if precision == Precision.BF16 else torch.float32


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """A fresh context for one forward pass (or one evaluation) at the run's precision."""
    if precision != Precision.BF16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def trained_in_fp32(model: nn.Module) -> int:
    """Cast every trainable parameter to float32 in place (the optimiser then keeps fp32 states);
    -> how many parameters were cast. Call after trainability is applied, before the optimiser exists."""
    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            cast += p.numel()
    return cast
