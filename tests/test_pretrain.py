"""The tiny LM pretrained on text by the platform (trainables/pretrain.py): its corpus, its tokenizer, its cache,
and a run that loads it through lm.pretrained_path as it would a real checkpoint."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from trainables.config import load_config
from trainables.data.records import CORNERS, WEATHERS, WatchFace
from trainables.data.render import render_watch
from trainables.data.smartwatch import sample_image
from trainables.errors import UserError
from trainables.launch import loop_config, resolved
from trainables.losses import IGNORE
from trainables.pretrain import MANIFEST, cells, conversations, described, ensure_text_lm, text_lm_folder
from trainables.sequences import turn_tokens
from trainables.tokenizer import PretrainedTokenizer
from trainables.train import LocalSession, Recipe

RECIPE = {"lm.pretraining.steps": 60, "lm.pretraining.conversations": 400, "lm.pretraining.batch_size": 32}


def test_the_corpus_says_every_answer_word_and_shares_no_image_with_a_dataset():
    conversation = conversations(600, seed=0, grid=4)
    assert conversation == conversations(600, seed=0, grid=4)  # a function of the recipe alone: it reads no dataset
    corpus = [turn for c in conversation for turn in c.turns]
    weather = Counter(answer for question, answer in corpus if answer in WEATHERS)
    assert set(weather) == set(WEATHERS)  # "raining" included, which no understanding record of finding 3 says
    assert min(weather.values()) > 0.25 * sum(weather.values())  # uniform, as in the data: no value is favoured
    assert {answer for _, answer in corpus if answer in CORNERS} == set(CORNERS)
    # Reading conversations: the face in words, then questions answered from those words.
    first, *_ = conversation[0].turns
    assert first[1] in first[0] and first[0].startswith("The watch shows ")
    # The corpus's faces come from a stream of their own: the dataset's images at the same indices are other faces.
    times = {answer for _, answer in corpus if answer.count(":") == 2}
    dataset_times = {sample_image(0, split, index)[0].answer("time") for split in ("train", "test") for index in range(600)}
    assert len(times & dataset_times) < 0.02 * len(times)  # chance coincidences of 43,200 possible times


def test_a_grid_of_words_draws_each_thing_in_the_cell_the_image_draws_it_and_is_asked_only_what_it_shows():
    face = WatchFace(3, 7, 59, 42, "raining", "top-right", "bottom-left")
    assert cells(face, 4) == ("dial", "dial", "dial", "raining",
                              "dial", "dial", "dial", "dial",
                              "dial", "dial", "dial", "dial",
                              "battery", "battery", "dial", "dial")  # the bar crosses two cells of four along its edge
    image = np.asarray(render_watch(face, (0, 0, 0), 64), dtype=float)
    patches = image.reshape(4, 16, 4, 16, 3).swapaxes(1, 2).reshape(16, -1, 3)
    assert patches[3, :, 2].mean() > patches[3, :, 0].mean() + 10  # the cell "raining" holds the rain's blue ...
    assert (patches[12, :, 1] > patches[12, :, 0] + 60).mean() > 0.05  # ... and "battery" the bar's green
    grids = [c for c in conversations(300, seed=0, grid=4) if c.cells]
    assert len(grids) == 600 and all(len(c.cells) == 16 for c in grids)  # two a face
    asked = {answer for c in grids for _, answer in c.turns}
    assert asked <= set(WEATHERS) | set(CORNERS)  # the time and the battery level are not in the cells
    assert not any(c.cells for c in conversations(50, seed=0, grid=0))


def test_a_grid_sits_where_a_run_puts_the_image_tokens_and_only_answers_carry_a_loss(tmp_path):
    from trainables.pretrain import _sequences, _train_tokenizer
    from trainables.sequences import understanding_example

    corpus = conversations(200, seed=0, grid=4)
    _train_tokenizer(corpus, tmp_path)
    tok = PretrainedTokenizer(tmp_path)
    grid = next(c for c in corpus if c.cells)
    ids, labels = _sequences([grid], tmp_path)[0]
    run = understanding_example(tok, list(grid.turns), 0, 16)  # a VQA record's sequence, 16 image placeholders
    assert len(ids) == len(run.ids) and labels == run.labels
    assert [tok.decode([i]) for i in ids[1:17]] == list(grid.cells)  # one token a cell
    assert [i for i, r in zip(ids, run.ids) if r != tok.image] == [r for r in run.ids if r != tok.image]
    ids, labels = _sequences([corpus[0]], tmp_path)[0]  # a described face: the description carries no loss
    answers = [turn_tokens(tok, *turn)[1] for turn in corpus[0].turns]
    assert labels == [IGNORE] + [label for turn in answers for label in turn]


def test_a_grid_that_does_not_fit_the_images_is_refused_at_the_boundary():
    with pytest.raises(UserError, match="lm.pretraining.grid 4 does not fit the images.*a grid of 8"):
        load_config(None, {**RECIPE, "understanding.patch_size": 8})
    assert load_config(None, {**RECIPE, "understanding.patch_size": 8, "lm.pretraining.grid": 8}).lm.pretraining.grid == 8
    assert load_config(None, {"understanding.patch_size": 8}).understanding.patch_size == 8  # a random LM: no grid to fit


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


def test_the_same_recipe_makes_the_same_lm_whatever_the_caller_drew_before_and_its_threads(tmp_path, monkeypatch):
    """A sweep's driver and `uvlm train` reach the pretraining in different random states and thread counts; the LM
    is a function of its recipe (the cache is keyed by it): it trains on PRETRAINING_THREADS whatever the machine
    has, and the caller's random stream and threads go on as if nothing had happened."""
    from safetensors.torch import load_file

    import trainables.pretrain
    from trainables.pretrain import PRETRAINING_THREADS, pretrain

    train, threads_seen = trainables.pretrain._train, []
    monkeypatch.setattr(trainables.pretrain, "_train", lambda *args, **kwargs: threads_seen.append(torch.get_num_threads())
                        or train(*args, **kwargs))
    lm = load_config(None, {"lm.pretraining.steps": 3, "lm.pretraining.conversations": 20,
                            "lm.pretraining.batch_size": 4}).lm
    weights, threads = [], torch.get_num_threads()
    try:
        for index, (caller_seed, caller_threads) in enumerate(((1, 1), (2, 2))):
            torch.manual_seed(caller_seed)
            torch.rand(7)
            torch.set_num_threads(caller_threads)
            before = torch.random.get_rng_state()
            pretrain(lm, tmp_path / f"lm{index}")
            assert torch.equal(torch.random.get_rng_state(), before) and torch.get_num_threads() == caller_threads
            weights.append(load_file(str(tmp_path / f"lm{index}" / "model.safetensors")))
    finally:
        torch.set_num_threads(threads)
    assert threads_seen == [PRETRAINING_THREADS, PRETRAINING_THREADS]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
