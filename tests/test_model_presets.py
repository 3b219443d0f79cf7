"""Every shipped preset validates, and builds and runs as tiny shapes (tiny local LM, SigLIP and LlamaGen VQ; no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import trainables
from trainables.config import TrainConfig, load_config
from trainables.encoders import to_float_images
from trainables.freezing import apply_trainability
from trainables.model import build_model
from trainables.sequences import collate, generation_example, understanding_example
from trainables.tokenizer import PretrainedTokenizer

torch.set_num_threads(1)

PRESETS = sorted((Path(trainables.__file__).parent / "presets").glob("*.yaml"))
WORDS = "What time is shown ? Draw a smart watch . Here is the image 0 1 2 3 4 5 6 7 8 9 : %".split()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny Llama + tokenizer, a tiny SigLIP tower and a tiny LlamaGen VQ checkpoint, saved like the real ones."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, SiglipVisionConfig, SiglipVisionModel

    from trainables.llamagen import LlamaGenVQ

    root = tmp_path_factory.mktemp("models")
    vocab = ["<unk>", "<s>", "</s>"] + sorted(set(WORDS))
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(root / "lm")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, tie_word_embeddings=False)).save_pretrained(root / "lm")
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         image_size=32, patch_size=16)).save_pretrained(root / "siglip")
    vq = LlamaGenVQ(ch=32, ch_mult=[1, 1, 2, 2, 4], blocks=1, z_channels=32, codebook_size=64, dim=8, image_size=32)
    torch.save({"model": vq.state_dict()}, root / "vq_ds16_c2i.pt")
    return root


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
def test_paper_preset_builds_and_runs_as_tiny_shapes(path, tiny_models):
    config = load_config(path, {
        "lm.pretrained_path": str(tiny_models / "lm"),
        "understanding.pretrained_path": str(tiny_models / "siglip"),
        "generation.vq_pretrained_path": str(tiny_models / "vq_ds16_c2i.pt"),
        "generation.image_size": 32,
        "lm.lora_rank": 4,
    })
    tok = PretrainedTokenizer(config.lm.pretrained_path)
    vq = None
    if config.generation.space.value == "vq":
        from trainables.vq import load_vq

        vq = load_vq(config.generation.vq_pretrained_path, config.generation.image_size)
        assert vq.codebook_size == 64 and vq.code_dim == 8 and vq.num_tokens == 4  # 32 px / 16
    model = build_model(config, tok, data_image_size=64, vq=vq)
    counts = apply_trainability(model, config.lm, config.trainability)
    assert 0 < counts["lm"][0] < counts["lm"][1] and counts["encoder"][0] == 0
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    model.fit_stats(to_float_images(images))
    nu, ng = model.encoder.num_tokens, model.space.num_tokens
    batch = collate([understanding_example(tok, [("What time is shown ?", "0 3 : 0 7")], 0, nu),
                     generation_example(tok, "Draw a smart watch .", "Here is the image", 1, ng)], images, tok)
    out = model(batch)
    (out["text_sum"] / out["text_count"] + out["image_sum"] / out["image_count"]).backward()
    assert torch.isfinite(out["image_sum"]) and out["image_count"] == ng
    prompts = collate([generation_example(tok, "Draw a smart watch .", "Here is the image", 0, 0)], images, tok, left_pad=True)
    generated = model.generate_image(prompts.input_ids, prompts.attention_mask)
    assert generated.features.shape == (1, ng, model.space.feature_dim)
    pictures = model.decode_images(generated)
    assert (pictures is not None) == (config.generation.space.value == "vq")


def test_llamagen_checkpoint_errors(tmp_path):
    from trainables.errors import UserError
    from trainables.vq import load_vq

    with pytest.raises(UserError, match="not a file"):
        load_vq(str(tmp_path / "missing.pt"), 256)
    torch.save({"model": {"something": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a LlamaGen VQ checkpoint"):
        load_vq(str(tmp_path / "other.pt"), 256)

