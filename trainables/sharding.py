"""A sharded full fine-tune (runtime.strategy: fsdp) with PyTorch's FSDP2 (`fully_shard`) over Ray Train's
process group.

Units: every decoder layer of the LM is one, and the whole UnifiedVLM is the root (the LM's embeddings, final
norm and output head, the projectors, the image head and the cell embeddings). Frozen parameters outside the
LM (vision towers, the VQ, a frozen projector) stay whole on every worker: they never train, and the towers
are bf16 beside fp32 trained weights. Each worker keeps 1/W of the trained weights, of their gradients and of
the AdamW states; gradients are reduce-scattered and averaged over workers as DDP's all-reduce averages them,
so the recipe's loss scaling (x W) gives the same step as DDP.

Two places need more than the forward:
- Evaluation calls the model's own methods (decoding, teacher-forced reads), not its forward, and each worker
  scores a different share of the prompts and stops decoding when its own answers end. `whole(model)` gathers
  every unit once and keeps it gathered until the evaluation ends, so no collective runs inside it.
- Checkpoints hold full tensors (`full_state`, gathered to rank 0 on the CPU) and are read back by every
  worker into its shard (`load_full_state`): one file, whatever the number of workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def shard(model: nn.Module) -> nn.Module:
    """Shard `model` (a UnifiedVLM on its device, trainability applied) in place across the default process
    group; -> the same object, now an FSDPModule."""
    from torch.distributed.fsdp import fully_shard

    lm_params = {id(p) for p in model.lm.parameters()}
    whole_everywhere = {p for p in model.parameters() if not p.requires_grad and id(p) not in lm_params}
    for layer in model.backbone.layers:
        fully_shard(layer)
    fully_shard(model, ignored_params=whole_everywhere)
    # A worker whose share of the batch holds no generation record leaves the head without a gradient;
    # its zeros keep every worker's reduce-scatter the same (DDP's find_unused_parameters).
    model.set_reduce_scatter_unused_params(True)
    return model


@contextlib.contextmanager
def whole(model: nn.Module) -> Iterator[None]:
    """Every unit gathered for the block (one all-gather each, on every worker at once), then sharded again.
    Inside, forwards run no collective, so workers may run different numbers of them."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    model.set_reshard_after_forward(False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(unit is not model, recurse=False)  # the root stays gathered after its forward
        # Reshards every unit and clears the forward order the evaluation's many forwards recorded (the next
        # backward prefetches along it, and it differs from worker to worker).
        model.reset_iter_state()


def full_state(model: nn.Module, optimiser: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, optimiser) state with full tensors on rank 0's CPU (other ranks get empty dicts); every rank
    must call it. The optimiser's state is keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimiser, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: nn.Module, optimiser: torch.optim.Optimizer, model_state: dict[str, Any],
                    optimiser_state: dict[str, Any]) -> None:
    """Every rank reads the full state `full_state` saved and keeps its shard; `model_state` may hold only the
    trained part."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimiser, model_state_dict=model_state, optim_state_dict=optimiser_state,
                   options=StateDictOptions(full_state_dict=True, strict=False))
