"""The unified VLM on synthetic tensors: shapes, every encoder/space pair, losses, freezing, affine map, errors."""

from __future__ import annotations

import pytest
import torch

from trainables.affine import AffineMap
from trainables.config import load_config
from trainables.encoders import to_float_images
from trainables.errors import UserError
from trainables.freezing import apply_trainability
from trainables.losses import IGNORE, image_loss, text_loss
from trainables.config import ImageLoss
from trainables.model import build_model
from trainables.sequences import collate, generation_example, teacher_forced, understanding_example
from trainables.spaces import needs_vq
from trainables.tokenizer import WordTokenizer, join_words, split_words
from trainables.vq import fit_kmeans_vq

torch.set_num_threads(1)

TEXTS = ["What time is shown? 03:07:59", "Draw a smart watch. The battery is at 42%.", "Here is the image.",
         "The weather is shown in the top-left corner."]
TINY = ["lm.hidden_size=32", "lm.num_heads=2", "lm.intermediate_size=64", "understanding.hidden_size=32"]


def make(overrides: list[str], n_images: int = 6):
    config = load_config(None, TINY + overrides)
    tok = WordTokenizer.build(TEXTS)
    images = torch.randint(0, 256, (n_images, 64, 64, 3), dtype=torch.uint8)
    vq = None
    if needs_vq(config.generation, config.understanding):
        vq = fit_kmeans_vq(to_float_images(images), config.generation.image_size, config.generation.patch_size, 16, 0, None, "t")
    model = build_model(config, tok, 64, vq)
    counts = apply_trainability(model, config.lm, config.trainability)
    model.fit_stats(to_float_images(images))
    return config, tok, images, model, counts


def mixed_batch(tok, images, model):
    nu, ng = model.encoder.num_tokens, model.space.num_tokens
    examples = [
        understanding_example(tok, [("What time is shown?", "03:07:59"), ("What time?", "03:07:59")], 0, nu),
        generation_example(tok, "Draw a smart watch.", "Here is the image.", 1, ng),
        understanding_example(tok, [("What time is shown?", "42%")], 2, nu),
        generation_example(tok, "Draw a smart watch. The battery is at 42%.", "Here is the image.", 3, ng),
    ]
    return collate(examples, images, tok)


def test_tokenizer_splits_numbers_digit_by_digit_and_round_trips():
    assert split_words("It is 03:07:59, 42%.") == ["It", "is", "0", "3", ":", "0", "7", ":", "5", "9", ",", "4", "2", "%", "."]
    tok = WordTokenizer.build(TEXTS)
    for text in ["03:07:59", "42%", "100%", "top-left", "The battery is at 42%.", "What time is shown?"]:
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("42%")) == 3 and len(tok.encode("7%")) == 2
    assert join_words(["0", "3", ":", "0", "7"]) == "03:07"


PAIRS = [
    ("patch", "patch", "cosine"), ("patch", "vq", "ce"), ("patch", "siglip", "cosine"), ("patch", "clip", "mse"),
    ("siglip", "patch", "cosine"), ("siglip", "same", "cosine"), ("clip", "same", "mse"), ("clip", "vq", "ce"),
    ("vq", "same", "ce"), ("vq", "patch", "cosine"), ("siglip", "clip", "cosine"),
]


@pytest.mark.parametrize("encoder,space,loss", PAIRS)
def test_every_encoder_space_pair_trains_and_generates(encoder, space, loss):
    _, tok, images, model, _ = make([f"understanding.encoder={encoder}", f"generation.space={space}", f"generation.loss={loss}"])
    batch = mixed_batch(tok, images, model)
    out = model(batch)
    assert out["text_count"] > 0 and out["image_count"] == 2 * model.space.num_tokens
    loss_value = out["text_sum"] / out["text_count"] + out["image_sum"] / out["image_count"]
    loss_value.backward()
    assert model.projector.parameters().__next__().grad is not None
    assert model.head.weight.grad is not None
    prompts = collate([generation_example(tok, "Draw a smart watch.", "Here is the image.", i, 0) for i in range(2)], images, tok, left_pad=True)
    generated = model.generate_image(prompts.input_ids, prompts.attention_mask)
    assert generated.features.shape == (2, model.space.num_tokens, model.space.feature_dim)
    assert (generated.codes is not None) == model.space.discrete
    pictures = model.decode_images(generated)
    assert (pictures is not None) == (space in ("patch", "vq") or (space == "same" and encoder in ("patch", "vq")))
    if pictures is not None:
        assert pictures.shape[:2] == (2, 3) and 0 <= pictures.min() and pictures.max() <= 1


def test_default_shapes_match_the_study():
    _, tok, images, model, counts = make([])
    assert model.encoder.num_tokens == 16 and model.encoder.feature_dim == 16 * 16 * 3  # 64 px, 16 px patches
    assert model.space.num_tokens == 16 and model.space.feature_dim == 8 * 8 * 3  # 32 px, 8 px patches
    batch = mixed_batch(tok, images, model)
    assert batch.und_mask.sum() == 2 * 16 and batch.gen_mask.sum() == 2 * 16 and batch.gen_pred_mask.sum() == 2 * 16
    # <boi> predicts the first image token: gen_pred_mask is gen_mask shifted left by one
    assert torch.equal(batch.gen_pred_mask[:, :-1], batch.gen_mask[:, 1:]) and not batch.gen_pred_mask[:, -1].any()
    assert batch.input_ids[batch.gen_pred_mask & ~batch.gen_mask].eq(tok.boi).all()


@pytest.mark.parametrize("space,loss", [("vq", "ce"), ("patch", "cosine")])
def test_image_tokens_enter_the_lm_at_the_scale_of_words(space, loss):
    """generation.input_scale unset: fit_stats scales the projected training tokens to the token embeddings' mean norm."""
    _, _, images, model, _ = make([f"generation.space={space}", f"generation.loss={loss}"])
    fed, _ = model.target_tokens(to_float_images(images))
    words = model.lm.get_input_embeddings().weight.norm(dim=-1).mean().item()
    with torch.no_grad():
        assert model.generation_inputs(fed).norm(dim=-1).mean().item() == pytest.approx(words, rel=1e-4)
        assert model.gen_projector(fed).norm(dim=-1).mean().item() > 2 * words  # what the LM read before
    _, _, _, fixed, _ = make([f"generation.space={space}", f"generation.loss={loss}", "generation.input_scale=1.0"])
    with torch.no_grad():
        assert torch.equal(fixed.generation_inputs(fed), fixed.gen_projector(fed))  # 1.0: unscaled, as before
    scales = []
    for strength in (0.0, 0.9):  # the misalignment is the only difference between strengths: not rescaled away
        torch.manual_seed(3)
        _, _, _, misaligned, _ = make([f"generation.space={space}", f"generation.loss={loss}",
                                       f"alignment.affine_strength={strength}"])
        scales.append(misaligned.gen_input_scale.item())
    assert scales[0] == scales[1] != 1.0


@pytest.mark.parametrize("space,loss", [("vq", "ce"), ("patch", "cosine")])
@pytest.mark.parametrize("positions", [True, False])
def test_free_running_image_equals_teacher_forcing_on_its_own_tokens(space, loss, positions):
    """Free-running generation (left-padded prompts, KV cache, fed-back tokens) sees what teacher forcing
    (right padding, one pass) sees: fed its own tokens as targets, the teacher-forced head predicts them."""
    _, tok, images, model, _ = make([f"generation.space={space}", f"generation.loss={loss}",
                                     f"generation.image_positions={str(positions).lower()}"])
    torch.manual_seed(1)
    for p in model.parameters():  # away from the near-uniform init, where ties could hide a mismatch
        p.data.add_(0.5 * torch.randn_like(p))
    model.eval()
    ng = model.space.num_tokens
    prompts = ["Draw a smart watch.", "Draw a smart watch. The battery is at 42%."]
    prompt_batch = collate([generation_example(tok, q, "Here is the image.", i, 0) for i, q in enumerate(prompts)],
                           images, tok, left_pad=True)
    generated = model.generate_image(prompt_batch.input_ids, prompt_batch.attention_mask)
    forced = collate([generation_example(tok, q, "Here is the image.", i, ng) for i, q in enumerate(prompts)], images, tok)
    assert all(teacher_forced(tok, generation_example(tok, q, "Here is the image.", i, 0), ng)
               == generation_example(tok, q, "Here is the image.", i, ng) for i, q in enumerate(prompts))  # the evaluator's way
    fed = model.affine_g(generated.features)  # (B, Ng, Dg): what generation fed back
    predicted = model.forced_head(forced, fed)
    if model.space.discrete:
        assert torch.equal(predicted.argmax(-1), generated.codes)
    else:
        assert torch.allclose(model.to_space(predicted), fed, atol=1e-4)
    assert (model.gen_positions is not None) == positions


def test_sampled_codes_are_reproducible_and_a_cold_temperature_is_argmax():
    _, tok, images, model, _ = make(["generation.space=vq", "generation.loss=ce"])
    model.eval()
    prompts = collate([generation_example(tok, "Draw a smart watch.", "Here is the image.", i, 0) for i in range(4)],
                      images, tok, left_pad=True)
    argmax = model.generate_image(prompts.input_ids, prompts.attention_mask).codes
    model.temperature = 1e-4
    assert torch.equal(model.generate_image(prompts.input_ids, prompts.attention_mask).codes, argmax)
    model.temperature = 50.0  # near-uniform draws over the 16 codes: not the argmax, but the same each call
    hot = model.generate_image(prompts.input_ids, prompts.attention_mask).codes
    assert torch.equal(model.generate_image(prompts.input_ids, prompts.attention_mask).codes, hot)
    assert not torch.equal(hot, argmax)


def test_image_positions_tell_apart_what_is_predicted_at_each_cell():
    _, tok, images, model, counts = make(["generation.space=vq", "generation.loss=ce"])
    assert counts["generation_positions"] == (model.space.num_tokens * model.lm.config.hidden_size,) * 2
    batch = mixed_batch(tok, images, model)
    with torch.no_grad():
        plain = model.embed(batch.input_ids, batch.und_mask, batch.und_images, batch.gen_mask,
                            model.target_tokens(batch.gen_images)[0])
        cells = model.embed(batch.input_ids, batch.und_mask, batch.und_images, batch.gen_mask,
                            model.target_tokens(batch.gen_images)[0], batch.gen_pred_mask)
    added = (cells - plain)[batch.gen_pred_mask].reshape(2, model.space.num_tokens, -1)
    assert torch.allclose(added[0], model.gen_positions.weight) and torch.allclose(added[1], model.gen_positions.weight)
    assert torch.equal(cells[~batch.gen_pred_mask], plain[~batch.gen_pred_mask])  # text and understanding untouched
    _, _, _, frozen, counts = make(["generation.space=vq", "generation.loss=ce", "trainability.generation_projector=frozen"])
    assert counts["generation_positions"][0] == 0 and not frozen.gen_positions.weight.requires_grad


def test_image_token_count_mismatch_is_an_explicit_error():
    _, tok, images, model, _ = make([])
    batch = mixed_batch(tok, images, model)
    batch.und_images = batch.und_images[:1]
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(batch)


def test_greedy_text_with_kv_cache_equals_full_recompute():
    _, tok, images, model, _ = make([])
    model.eval()
    nu = model.encoder.num_tokens
    examples = [understanding_example(tok, [("What time is shown?", None)], 0, nu),
                understanding_example(tok, [("What time?", "03:07:59"), ("What time is shown?", None)], 1, nu)]
    batch = collate(examples, images, tok, left_pad=True)
    cached = model.generate_text(batch.input_ids, batch.attention_mask, batch.und_images, 6)
    for row, example in enumerate(examples):  # unpadded, no cache, one row at a time
        ids = torch.tensor([example.ids])
        produced = []
        for _ in range(6):
            und_mask = (ids == tok.image) & (torch.arange(ids.shape[1]) < len(example.ids))  # generated ids are text
            embeds = model.embed(ids, und_mask, batch.und_images[row : row + 1])
            hidden = model.backbone(inputs_embeds=embeds, use_cache=False).last_hidden_state
            next_id = int(model.lm.get_output_embeddings()(hidden[:, -1]).argmax(-1))
            if next_id == tok.eos:
                break
            produced.append(next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]])], 1)
        assert cached[row] == produced


def test_losses():
    head = torch.nn.Linear(4, 5, bias=False)
    torch.nn.init.zeros_(head.weight)
    labels = torch.tensor([[IGNORE, 2, IGNORE]])
    total, count = text_loss(head, torch.randn(1, 3, 4), labels)
    assert count == 1 and torch.isclose(total, torch.log(torch.tensor(5.0)))
    hidden, labels = torch.randn(2, 6, 4, requires_grad=True), torch.randint(5, (2, 6))
    labels[0, 1:4] = IGNORE
    logits = head(hidden)[:, :-1]  # every position's logits, then the labelled ones: the same loss and gradient
    every = torch.nn.functional.cross_entropy(logits[labels[:, 1:] != IGNORE], labels[:, 1:][labels[:, 1:] != IGNORE], reduction="sum")
    assert torch.allclose(text_loss(head, hidden, labels)[0], every)
    total, count = text_loss(head, hidden, torch.full((2, 6), IGNORE))
    total.backward()  # no labelled position: 0, still a graph through the head (DDP needs every parameter's gradient)
    assert count == 0 and total == 0 and head.weight.grad is not None
    pred, target = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    total, count = image_loss(ImageLoss.COSINE, pred, target)
    assert count == 2 and torch.isclose(total, torch.tensor(1.0))  # cos 1 and cos 0
    total, _ = image_loss(ImageLoss.COSINE, pred, target, centre=torch.tensor([1.0, 0.0]))
    assert torch.isclose(total, torch.tensor(2.0), atol=1e-5)  # centred: (0,0) has no direction; (-1,2) vs (0,0)
    total, _ = image_loss(ImageLoss.MSE, pred, target)
    assert torch.isclose(total, torch.tensor(0.5 + 2.5))
    total, _ = image_loss(ImageLoss.CE, torch.zeros(3, 4), torch.tensor([0, 1, 2]))
    assert torch.isclose(total, 3 * torch.log(torch.tensor(4.0)))


@pytest.mark.parametrize("policy", ["full", "lora", "frozen"])
def test_freezing_policy_per_component(policy):
    _, tok, images, model, counts = make([f"lm.trainability={policy}", "trainability.generation_projector=frozen"])
    trainable, total = counts["lm"]
    assert {"full": trainable == total, "lora": 0 < trainable < total, "frozen": trainable == 0}[policy]
    assert counts["generation_projector"][0] == 0 and counts["head"][0] == counts["head"][1] > 0
    assert counts["encoder"][0] == 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(mixed_batch(tok, images, model))
    (out["text_sum"] / out["text_count"] + out["image_sum"] / out["image_count"]).backward()
    optimiser.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        if not p.requires_grad:
            assert not changed, name
        if name.startswith("gen_projector") or (policy == "frozen" and name.startswith("lm.")):
            assert not changed, name
        if policy == "lora" and name.startswith("lm.") and "lora_B" in name:
            assert changed, name


def test_affine_map():
    identity = AffineMap(8, 0.0, seed=1)
    x = torch.randn(5, 8)
    assert torch.equal(identity(x), x)
    m = AffineMap(8, 0.5, seed=1)
    assert torch.equal(m.A, AffineMap(8, 0.5, seed=1).A) and not torch.equal(m.A, AffineMap(8, 0.5, seed=2).A)
    singular = torch.linalg.svdvals(m.A.double())  # A = Q S: singular values are |S| in [1-s, 1+s]
    assert singular.min() >= 0.5 - 1e-6 and singular.max() <= 1.5 + 1e-6
    assert m.b.abs().max() <= 0.5
    assert torch.allclose(m.inverse(m(x)), x, atol=1e-5)
    y = torch.randn(2, 3, 8)
    assert torch.allclose(m.inverse(m(y)), y, atol=1e-5)


def test_affine_misaligns_only_its_target():
    _, _, images, model, _ = make(["alignment.affine_strength=0.5", "alignment.affine_target=generation"])
    assert model.affine_u.identity and not model.affine_g.identity
    _, _, _, model, _ = make(["alignment.affine_strength=0.5", "alignment.affine_target=understanding"])
    assert not model.affine_u.identity and model.affine_g.identity


def test_same_seed_same_model():
    a = make([])[3].state_dict()
    b = make([])[3].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_names_list_the_valid_ones():
    with pytest.raises(UserError, match="siglip"):
        load_config(None, ["understanding.encoder=sigclip"])
    with pytest.raises(UserError, match="same"):
        load_config(None, ["generation.space=pixels"])
    with pytest.raises(UserError, match="does not fit"):
        load_config(None, ["generation.space=vq", "generation.loss=cosine"])
    with pytest.raises(UserError, match="does not fit"):
        load_config(None, ["generation.space=patch", "generation.loss=ce"])
    with pytest.raises(UserError, match="does not fit"):
        load_config(None, ["generation.space=same", "understanding.encoder=vq", "generation.loss=mse"])


@pytest.mark.parametrize("overrides,loss", [
    ([], "ce"), (["generation.space=patch"], "cosine"), (["generation.space=siglip"], "cosine"),
    (["generation.space=same"], "cosine"), (["generation.space=same", "understanding.encoder=vq"], "ce"),
    (["generation.space=patch", "generation.loss=mse"], "mse"),
])
def test_an_unset_image_loss_follows_the_space(overrides, loss):
    config = load_config(None, overrides)
    assert config.generation.loss.value == loss and config.flatten()["generation.loss"] == loss


def test_pretrained_lm_and_tokenizer_from_a_local_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + sorted({w for t in TEXTS for w in split_words(t)})
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    hf_tok.save_pretrained(tmp_path)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, tie_word_embeddings=False))
    lm.save_pretrained(tmp_path)
    config, _, images, _, _ = make(["generation.space=patch"])  # no VQ tokenizer to fit here
    config = load_config(config.model_dump(mode="json"), [f"lm.pretrained_path={tmp_path}", "lm.trainability=lora"])
    from trainables.tokenizer import PretrainedTokenizer

    tok = PretrainedTokenizer(tmp_path)
    assert len({tok.image, tok.boi, tok.pad}) == 3 and tok.added_ids == list(range(len(words), tok.vocab_size))
    model = build_model(config, tok, 64)
    assert model.lm.get_input_embeddings().num_embeddings >= tok.vocab_size
    counts = apply_trainability(model, config.lm, config.trainability, tok.added_ids)
    assert 0 < counts["lm"][0] < counts["lm"][1]
    model.fit_stats(to_float_images(images))
    out = model(mixed_batch(tok, images, model))
    assert torch.isfinite(out["text_sum"]) and out["text_count"] > 0


def test_pretrained_paths_without_the_needed_files(tmp_path):
    config = load_config(None, TINY + ["generation.space=patch", f"lm.pretrained_path={tmp_path}"])
    tok = WordTokenizer.build(TEXTS)
    with pytest.raises(UserError, match="config.json"):
        build_model(config, tok, 64)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no weights"):
        build_model(config, tok, 64)
    config = load_config(None, TINY + ["generation.space=patch", "understanding.encoder=siglip",
                                       f"understanding.pretrained_path={tmp_path / 'nope'}"])
    with pytest.raises(UserError, match="siglip pretrained path"):
        build_model(config, tok, 64)
    from trainables.tokenizer import PretrainedTokenizer

    with pytest.raises(UserError, match="tokenizer"):
        PretrainedTokenizer(tmp_path / "nope")


def test_a_codebook_larger_than_the_distinct_patches_shrinks_to_them():
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    images[1] = images[0]  # 16 distinct patches of 8 x 8 at 32 px
    vq = fit_kmeans_vq(to_float_images(images), 32, 8, 512, 0, None, "t")
    assert vq.codebook_size == 16 and torch.equal(vq.encode(to_float_images(images[:1]))[0].sort().values, torch.arange(16))
    config = load_config(None, TINY)
    model = build_model(config, WordTokenizer.build(TEXTS), 64, vq)
    assert model.head.out_features == 16


@pytest.mark.parametrize("policy", ["full", "frozen"])
def test_with_the_lm_frozen_generation_records_train_nothing_the_understanding_path_reads(policy):
    """Finding 3's frozen-LM condition: with the LM frozen, the parameters a generation record's loss reaches and
    those an understanding record's loss reaches are disjoint, so (hidden - control) can carry no transfer but
    through the optimiser's shared state (gradient clipping, the run's length). With the LM trained they share it."""
    _, tok, images, model, _ = make([f"lm.trainability={policy}", "generation.space=vq", "generation.loss=ce"])
    nu, ng = model.encoder.num_tokens, model.space.num_tokens

    def reached(examples) -> set[str]:
        model.zero_grad(set_to_none=True)
        out = model(collate(examples, images, tok))
        loss = out["text_sum"] / out["text_count"].clamp(min=1) + out["image_sum"] / out["image_count"].clamp(min=1)
        loss.backward()
        return {name for name, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}

    understanding = reached([understanding_example(tok, [("What time is shown?", "03:07:59")], 0, nu)])
    generation = reached([generation_example(tok, "Draw a smart watch. The battery is at 42%.", "Here is the image.", 1, ng)])
    assert understanding and generation
    shared = understanding & generation
    if policy == "frozen":
        assert not shared, sorted(shared)
        assert any(name.startswith("head") for name in generation), sorted(generation)
    else:
        assert shared and all(name.startswith("lm.") for name in shared), sorted(shared)
