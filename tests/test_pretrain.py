"""The tiny LM pretrained on text by the platform (trainables/pretrain.py): its corpus, its tokenizer, its cache,
and a run that loads it through lm.pretrained_path as it would a real checkpoint."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from trainables.config import load_config
from trainables.data.records import CORNERS, WEATHERS
from trainables.data.smartwatch import sample_image
from trainables.errors import UserError
from trainables.launch import loop_config, resolved
from trainables.pretrain import MANIFEST, conversations, described, ensure_text_lm, text_lm_folder
from trainables.sequences import turn_tokens
from trainables.tokenizer import PretrainedTokenizer
from trainables.train import LocalSession, Recipe

RECIPE = {"lm.pretraining.steps": 60, "lm.pretraining.conversations": 400, "lm.pretraining.batch_size": 32}


def test_the_corpus_says_every_answer_word_and_shares_no_image_with_a_dataset():
    conversation = conversations(600, seed=0)
    assert conversation == conversations(600, seed=0)  # a function of the recipe alone: it reads no dataset
    corpus = [turn for turns in conversation for turn in turns]
    weather = Counter(answer for question, answer in corpus if answer in WEATHERS)
    assert set(weather) == set(WEATHERS)  # "raining" included, which no understanding record of finding 3 says
    assert min(weather.values()) > 0.25 * sum(weather.values())  # uniform, as in the data: no value is favoured
    assert {answer for _, answer in corpus if answer in CORNERS} == set(CORNERS)
    # Reading conversations: the face in words, then questions answered from those words.
    first, *_ = conversation[0]
    assert first[1] in first[0] and first[0].startswith("The watch shows ")
    # The corpus's faces come from a stream of their own: the dataset's images at the same indices are other faces.
    times = {answer for _, answer in corpus if answer.count(":") == 2}
    dataset_times = {sample_image(0, split, index)[0].answer("time") for split in ("train", "test") for index in range(600)}
    assert len(times & dataset_times) < 0.02 * len(times)  # chance coincidences of 43,200 possible times


def test_pretraining_makes_a_checkpoint_with_its_tokenizer_once_per_recipe(tmp_path):
    config = load_config(None, {**RECIPE, "runtime.cache_dir": str(tmp_path / "cache")})
    folder = ensure_text_lm(config)
    assert folder == text_lm_folder(config).resolve() and folder.parent == (tmp_path / "cache").resolve()
    made = json.loads((folder / MANIFEST).read_text())
    assert made["final_loss"] < made["first_loss"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_text_lm(config) == folder and (folder / "model.safetensors").stat().st_mtime_ns == before  # reused
    other = load_config(None, {**RECIPE, "lm.pretraining.seed": 1, "runtime.cache_dir": str(tmp_path / "cache")})
    assert text_lm_folder(other) != text_lm_folder(config)  # another recipe, another LM

    tok = PretrainedTokenizer(folder)
    for text in ("03:07:59", "42%", "raining", "It is raining, shown in the top-left corner."):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("03:07:59")) == 8  # a digit a token, as the random LM's vocabulary splits them
    assert len(tok.user_prefix) == len(tok.assistant_prefix) == 1 and tok.added_ids == [tok.vocab_size - 2, tok.vocab_size - 1]

    # Pretrained, the LM answers a weather question about a described face with a weather word far more often than
    # a random one does.
    import transformers

    lm = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    words = [tok.encode(word)[0] for word in WEATHERS]
    face = sample_image(0, "test", 0)[0]
    prompt = torch.tensor([[tok.bos, *turn_tokens(tok, f"{described(face)} What is the weather?", None)[0]]])
    with torch.no_grad():
        first = lm(prompt).logits[0, -1].softmax(-1)
    assert first[words].sum() > 5 * len(words) / tok.vocab_size, first[words]  # uniform: 3 in ~480; 60 steps give ~7x


def test_a_recipe_mismatch_or_a_foreign_folder_is_refused(tmp_path):
    config = load_config(None, {**RECIPE, "lm.pretrained_path": str(tmp_path / "lm")})
    ensure_text_lm(config)
    with pytest.raises(UserError, match="lm.pretrained_path .* another recipe"):
        ensure_text_lm(load_config(None, {**RECIPE, "lm.pretraining.lr": 1e-3, "lm.pretrained_path": str(tmp_path / "lm")}))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="not a text-pretrained LM"):
        ensure_text_lm(load_config(None, {**RECIPE, "lm.pretrained_path": str(tmp_path / "foreign")}))


def test_a_run_loads_the_pretrained_lm_through_lm_pretrained_path_and_keeps_it_frozen(data_path, tmp_path):
    import transformers

    config = load_config(None, {**RECIPE, "data.path": str(data_path), "runtime.cache_dir": str(tmp_path / "cache"),
                                "lm.trainability": "frozen", "budget.unit": "steps", "budget.value": 3,
                                "eval.every_steps": 100, "eval.max_eval_records": 8, "data.test_images": 4})
    assert resolved(config).lm.pretrained_path == str(text_lm_folder(config).resolve())
    recipe = Recipe(loop_config(config, tmp_path / "run", None), LocalSession(tmp_path / "run"))
    metrics = recipe.run()  # no driver made the LM first: the run makes it
    assert (text_lm_folder(config) / MANIFEST).is_file() and metrics["step"] == 3
    assert isinstance(recipe.tok, PretrainedTokenizer)
    saved = transformers.AutoModelForCausalLM.from_pretrained(str(text_lm_folder(config)), local_files_only=True)
    trained = dict(recipe.model.lm.named_parameters())
    for name, weight in saved.named_parameters():
        if "layers." in name:  # the decoder, frozen: as pretrained after three steps
            (match,) = [value for key, value in trained.items() if key.endswith(name)]
            assert torch.equal(match.float(), weight.float()), name


def test_the_same_recipe_makes_the_same_lm_whatever_the_caller_drew_before(tmp_path):
    """A sweep's driver and `uvlm train` reach the pretraining in different random states; the LM is a function of
    its recipe (the cache is keyed by it), and the caller's random stream goes on as if nothing had been drawn."""
    from safetensors.torch import load_file

    from trainables.pretrain import pretrain

    lm = load_config(None, {"lm.pretraining.steps": 3, "lm.pretraining.conversations": 20,
                            "lm.pretraining.batch_size": 4}).lm
    weights = []
    for index, caller_seed in enumerate((1, 2)):
        torch.manual_seed(caller_seed)
        torch.rand(7)
        before = torch.random.get_rng_state()
        pretrain(lm, tmp_path / f"lm{index}")
        assert torch.equal(torch.random.get_rng_state(), before)
        weights.append(load_file(str(tmp_path / f"lm{index}" / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
