"""Every shipped preset validates, and builds and trains as tiny shapes on stand-ins saved as the real checkpoints ship
(a float16 LM with a tokenizer.model, a full SigLIP, a LlamaGen VQ with its args; no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import trainables
from trainables.config import TrainConfig, load_config
from trainables.encoders import to_float_images
from trainables.freezing import apply_trainability
from trainables.model import build_model
from trainables.losses import IGNORE
from trainables.precision import autocast, trained_in_fp32
from trainables.sequences import collate, generation_example, turn_tokens, understanding_example
from trainables.standins import save_standins
from trainables.tokenizer import PretrainedTokenizer, role_markers

torch.set_num_threads(1)

PRESETS = sorted((Path(trainables.__file__).parent / "presets").glob("*.yaml"))


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """A float16 Llama with only a tokenizer.model, a full SigLIP and a LlamaGen checkpoint with its trainer's args."""
    return save_standins(tmp_path_factory.mktemp("models"), image_size=64, generation_size=32)


def test_presets_are_shipped_and_start_with_their_command():
    names = {p.stem for p in PRESETS}
    assert {"tiny-cpu", "paper-vicuna7b-siglip-llamagen", "paper-vicuna7b-siglip-same"} <= names
    for path in PRESETS:
        assert path.read_text().startswith(f"# uvlm train trainables/presets/{path.name}")


def test_tiny_cpu_preset_is_the_default():
    tiny = load_config(next(p for p in PRESETS if p.stem == "tiny-cpu"))
    assert tiny.model_dump() == TrainConfig().model_dump()


def test_paper_presets_follow_the_study():
    for path in PRESETS:
        if not path.stem.startswith("paper"):
            continue
        c = load_config(path)
        assert (c.lm.trainability.value, c.lm.lora_rank, c.lm.lora_alpha) == ("lora", 128, 256)
        assert (c.optim.lr, c.optim.projector_lr, c.optim.warmup_ratio) == (2e-4, 1e-4, 0.03)
        assert (c.budget.unit.value, c.budget.value, c.generation.alpha) == ("epochs", 1, 0.2)
        assert c.understanding.encoder.value == "siglip" and c.understanding.image_size == 224
        assert c.runtime.precision.value == "bf16" and c.runtime.use_gpu


@pytest.mark.parametrize("path", [p for p in PRESETS if p.stem.startswith("paper")], ids=lambda p: p.stem)
def test_paper_preset_builds_and_trains_on_checkpoints_saved_as_the_real_ones(path, standins):
    """The dtype policy on float16-saved weights: frozen base in bf16, what trains in fp32, the forward under
    autocast; one AdamW step leaves every trained weight finite (fp16 LoRA weights would turn NaN)."""
    config = load_config(path, {**standins.overrides(), "understanding.image_size": 64, "generation.image_size": 32,
                                "lm.lora_rank": 4})
    tok = PretrainedTokenizer(config.lm.pretrained_path)
    vq = None
    if config.generation.space.value == "vq":
        from trainables.vq import load_vq

        vq = load_vq(config.generation.vq_pretrained_path, config.generation.image_size)
        assert vq.codebook_size == 64 and vq.code_dim == 8 and vq.num_tokens == 4  # 32 px / 16
    model = build_model(config, tok, data_image_size=64, vq=vq)
    counts = apply_trainability(model, config.lm, config.trainability, tok.added_ids)
    trained_in_fp32(model)
    assert 0 < counts["lm"][0] < counts["lm"][1] and counts["encoder"][0] == 0
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trained.values()} == {torch.float32}
    assert {p.dtype for name, p in model.lm.named_parameters() if not p.requires_grad} == {torch.bfloat16}
    assert any("trainable_tokens" in name for name in trained)  # the new rows (<image>, <boi>, <pad>) train
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    model.fit_stats(to_float_images(images))
    nu, ng = model.encoder.num_tokens, model.space.num_tokens
    batch = collate([understanding_example(tok, [("What time is shown?", "03:07")], 0, nu),
                     generation_example(tok, "Draw a smart watch.", "Here is the image.", 1, ng)], images, tok)
    optimiser = torch.optim.AdamW(trained.values(), lr=2e-4)
    cpu = torch.device("cpu")
    with autocast(config.runtime.precision, cpu):
        out = model(batch)
    (out["text_sum"] / out["text_count"] + out["image_sum"] / out["image_count"]).backward()
    optimiser.step()
    assert torch.isfinite(out["image_sum"]) and out["image_count"] == ng
    assert all(torch.isfinite(p).all() for p in trained.values())
    prompts = collate([generation_example(tok, "Draw a smart watch.", "Here is the image.", 0, 0)], images, tok, left_pad=True)
    with autocast(config.runtime.precision, cpu):
        generated = model.generate_image(prompts.input_ids, prompts.attention_mask)
        pictures = model.decode_images(generated)
    assert generated.features.shape == (1, ng, model.space.feature_dim)
    assert (pictures is not None) == (config.generation.space.value == "vq")


def test_a_pretrained_tokenizer_speaks_the_lms_own_conversation_format(standins):
    tok = PretrainedTokenizer(standins.lm)  # tokenizer.model alone, as Vicuna ships: no chat template
    assert tok.hf.decode(tok.user_prefix).strip() == "USER:" and tok.hf.decode(tok.assistant_prefix).strip() == "ASSISTANT:"
    ids, labels = turn_tokens(tok, "What time is shown?", "03:07")
    assert tok.decode(ids).startswith("USER: What time is shown? ASSISTANT: 03:07")
    assert tok.decode([i for i, label in zip(ids, labels) if label != IGNORE]) == "03:07"
    tok.hf.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
    assert role_markers(tok.hf) == ("<|user|>", "<|end|><|assistant|>")


def test_llamagen_checkpoint_errors(tmp_path):
    from trainables.errors import UserError
    from trainables.vq import load_vq

    with pytest.raises(UserError, match="not a file"):
        load_vq(str(tmp_path / "missing.pt"), 256)
    torch.save({"model": {"something": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a LlamaGen VQ checkpoint"):
        load_vq(str(tmp_path / "other.pt"), 256)

