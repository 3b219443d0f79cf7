"""Trainability as a policy per named component (finding 3 is probed by freezing the LM or the adapters).

  lm                     full | lora | frozen   (lora: peft adapters on every linear layer of the LM)
  new token rows         the rows a pretrained vocabulary gained (<image>, <boi>, ...) train under lora and frozen
                         too (peft trainable tokens): <boi> is a training label, and a frozen random row could not learn it
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


ADAPTER_MARKS = ("lora_", "trainable_tokens_")  # peft's parameter names for LoRA weights and trainable token rows


def add_adapters(lm: nn.Module, config: LMConfig, new_tokens: list[int]) -> None:
    """Inject peft adapters in place (the LM object and its forward stay the same): LoRA on the linear layers
    under lora, and trainable rows for `new_tokens` in the input and output embeddings (lora and frozen)."""
    from peft import LoraConfig, TrainableTokensConfig, inject_adapter_in_model

    embeddings = embedding_names(lm)
    if config.trainability == LMTrainability.LORA:
        targets = sorted({name.rsplit(".", 1)[-1] for name, m in lm.named_modules() if isinstance(m, nn.Linear)} & set(LORA_TARGETS))
        tokens = {name: new_tokens for name in embeddings} if new_tokens else None
        inject_adapter_in_model(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                           target_modules=targets or None, trainable_token_indices=tokens), lm)
    elif new_tokens:
        inject_adapter_in_model(TrainableTokensConfig(target_modules=embeddings, token_indices=new_tokens), lm)


def embedding_names(lm: nn.Module) -> list[str]:
    """The module names (last part) of the LM's input and output embeddings, e.g. ['embed_tokens', 'lm_head']."""
    wanted = {id(lm.get_input_embeddings()), id(lm.get_output_embeddings())}
    return sorted({name.rsplit(".", 1)[-1] for name, m in lm.named_modules() if id(m) in wanted})


def is_adapter(name: str) -> bool:
    return any(mark in name for mark in ADAPTER_MARKS)


def apply_trainability(model: nn.Module, lm_config: LMConfig, parts: TrainabilityConfig,
                       new_tokens: list[int] = ()) -> dict[str, tuple[int, int]]:
    """Set requires_grad per component; `new_tokens`: ids a pretrained vocabulary gained.
    -> {component: (trainable params, total params)}."""
    has_adapters = any(is_adapter(n) for n, _ in model.lm.named_parameters())
    if lm_config.trainability != LMTrainability.FULL and not has_adapters:
        add_adapters(model.lm, lm_config, list(new_tokens))
    for name, module in components(model).items():
        if name == "lm":
            for pname, p in module.named_parameters():
                if lm_config.trainability == LMTrainability.FULL:
                    p.requires_grad_(not is_adapter(pname))
                else:
                    p.requires_grad_(is_adapter(pname))
        elif name in ("encoder", "space"):
            module.requires_grad_(False)
        else:
            module.requires_grad_(getattr(parts, POLICY.get(name, name)) == PartTrainability.TRAIN)
    return {
        name: (sum(p.numel() for p in m.parameters() if p.requires_grad), sum(p.numel() for p in m.parameters()))
        for name, m in components(model).items()
    }
