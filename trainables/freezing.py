"""Trainability as a policy per named component (finding 3 is probed by freezing the LM or the adapters).

  lm                     full | lora | frozen   (lora: peft adapters on every linear layer of the LM)
  understanding_projector, generation_projector, head    train | frozen
  encoder, space         always frozen (as in the paper)
  generation_positions   follows generation_projector (the image-cell embeddings feed the same input)

`apply_trainability` is the one place that sets `requires_grad`; it returns the
trainable and total parameter counts per component, which the run logs.
"""

from __future__ import annotations

from torch import nn

from trainables.config import LMConfig, LMTrainability, PartTrainability, TrainabilityConfig

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def components(model: nn.Module) -> dict[str, nn.Module]:
    """The named components of a UnifiedVLM."""
    return {
        "lm": model.lm,
        "encoder": model.encoder,
        "space": model.space,
        "understanding_projector": model.projector,
        "generation_projector": model.gen_projector,
        "head": model.head,
        **({"generation_positions": model.gen_positions} if model.gen_positions is not None else {}),
    }


POLICY = {"generation_positions": "generation_projector"}  # a component trained or frozen with another's policy


def add_lora(lm: nn.Module, config: LMConfig) -> None:
    """Inject peft LoRA adapters in place (the LM object and its forward stay the same)."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = sorted({name.rsplit(".", 1)[-1] for name, m in lm.named_modules() if isinstance(m, nn.Linear)} & set(LORA_TARGETS))
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=targets or None)
    inject_adapter_in_model(lora, lm)


def apply_trainability(model: nn.Module, lm_config: LMConfig, parts: TrainabilityConfig) -> dict[str, tuple[int, int]]:
    """Set requires_grad per component; -> {component: (trainable params, total params)}."""
    if lm_config.trainability == LMTrainability.LORA and not any("lora_" in n for n, _ in model.lm.named_parameters()):
        add_lora(model.lm, lm_config)
    for name, module in components(model).items():
        if name == "lm":
            for pname, p in module.named_parameters():
                if lm_config.trainability == LMTrainability.FULL:
                    p.requires_grad_("lora_" not in pname)
                else:
                    p.requires_grad_(lm_config.trainability == LMTrainability.LORA and "lora_" in pname)
        elif name in ("encoder", "space"):
            module.requires_grad_(False)
        else:
            module.requires_grad_(getattr(parts, POLICY.get(name, name)) == PartTrainability.TRAIN)
    return {
        name: (sum(p.numel() for p in m.parameters() if p.requires_grad), sum(p.numel() for p in m.parameters()))
        for name, m in components(model).items()
    }
