"""`uvlm plan CONFIG [--gpu NAME] [--set key=value ...]`: a run's memory per worker and its time, before anything runs.

Reads no weights: the LM, towers and VQ are counted on PyTorch's meta device from their
checkpoints' config.json where the folders exist, else from the config's shape fields. Prints,
per worker, the frozen weights, trained weights, gradients, optimizer states, DDP buckets (or FSDP's
gathered units), the image working set, activations at the batch size and the evaluation's KV cache
(and under FSDP the model gathered whole); then the peak,
tokens a step, steps, evaluations and an estimate of GPU-hours. A config that cannot fit the GPU
is refused (exit 2) with the changes that would make it fit. Examples:
  uvlm plan paper-vicuna7b-siglip-llamagen                      # a shipped preset, on an H100 80GB
  uvlm plan paper-vicuna7b-siglip-llamagen --gpu a100-40gb
  uvlm plan my-run.yaml --set lm.trainability=full --set lm.activation_checkpointing=true
  uvlm plan paper-vicuna7b-siglip-llamagen --set lm.trainability=full --set runtime.strategy=fsdp
"""

from __future__ import annotations

import argparse

from search.commands import number
from trainables import limits

DEFAULT_GPU = "h100-80gb"


def register(subparsers: argparse._SubParsersAction) -> None:
    from trainables.accelerators import ACCELERATORS

    parser = subparsers.add_parser("plan", help="memory per worker and GPU-hours of a run, before it runs",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--gpu", choices=sorted(ACCELERATORS), default=DEFAULT_GPU,
                        help=f"the GPU each worker gets (default {DEFAULT_GPU}): its memory, bf16 peak and bandwidth")
    parser.add_argument("--memory-gb", type=number(limits.FACTOR, float), metavar="GB",
                        help="the GPU's memory in GiB, when it differs from --gpu's (e.g. a MIG slice)")
    parser.set_defaults(run=run)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a YAML config file or a shipped preset's name (e.g. paper-vicuna7b-siglip-llamagen)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field by its dotted name (repeatable)")


def run(args: argparse.Namespace) -> int:
    from trainables.config import config_path, load_config

    config = load_config(config_path(args.config), args.overrides)
    print(check(config, args.gpu, args.memory_gb))
    return 0


def check(config, gpu: str, memory_gb: float | None = None) -> str:
    """The rendered plan, or a UserError naming the fixes when it does not fit."""
    import dataclasses

    from trainables.errors import UserError
    from trainables.accelerators import ACCELERATORS
    from trainables.plan import fixes, make_plan, render

    accelerator = ACCELERATORS[gpu]
    if memory_gb is not None:
        accelerator = dataclasses.replace(accelerator, memory_gb=memory_gb)
    plan = make_plan(config, accelerator)
    shown = render(plan)
    if plan.fits:
        return shown
    print(shown, flush=True)
    found = fixes(config, accelerator)
    named = "; ".join(f"{name} ({peak:.1f} GiB)" for name, peak in found) or "none of LoRA, sharding, activation checkpointing or a smaller batch"
    raise UserError(f"plan: the run needs {plan.peak_gb:.1f} GiB per worker, over the {accelerator.memory_gb:g} GiB of "
                    f"{accelerator.name}; fixes that fit: {named}")
