"""A tiny pretrained LM made by the platform: the lm.* Llama pretrained on the study's language alone.

Every model of the paper starts from a pretrained LM; a random one cannot say
a word that no training answer contains ("raining" in finding 3) and, frozen,
cannot answer at all. `ensure_text_lm` pretrains the tiny LM once per recipe
on conversations about smart watches with no image, and saves it the way a
real checkpoint ships (`save_pretrained`, a byte-level BPE tokenizer beside
it), so a run loads it through `lm.pretrained_path` like any other.

What it must learn is to answer from what precedes the question, as it will
have to from an image's tokens. So each face is told before questions about
it in sentences and, in two other conversations, as a grid of words
(`lm.pretraining.grid` a side) in the places where a run puts the image's
tokens, the word of each thing in the cell where the image draws it
("raining" in its corner's cell, "battery" along its edge, "dial" elsewhere). The loss is on the answers only, as in a
run: on every token, the faces' random values (which nothing before them
predicts) drowned the answers, and 400 steps gave an LM that answered the
weather of a described face at chance (docs/MEASUREMENTS.md).

The corpus cannot leak an image's attributes: its watch faces are drawn from
a random stream of their own, (seed, PRETRAIN_STREAM, i), which no dataset
split uses (train is 0, test 1), and it is built without reading any dataset.
Each attribute value is uniform, as in the data, so the LM learns which words
answer which question, and to read them from what precedes the question, not
which answer goes with which image.

    corpus (faces in words and in cells + questions, captions, prompts) -> BPE tokenizer -> causal LM loss on answers
    -> <cache>/text-lm-<key>/ {config.json, model.safetensors, tokenizer files, pretraining.json}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from trainables.config import LMConfig, TextPretraining, TrainConfig
from trainables.data.records import WatchFace
from trainables.data.render import BATTERY_BAR_MARGIN, BATTERY_BAR_SIZE
from trainables.data.smartwatch import (CAPTION_QUESTIONS, GENERATION_PROMPTS, GENERATION_REPLIES, QUESTIONS, WHERE,
                                        describe, pick, sample_face, vqa_turns)
from trainables.errors import UserError
from trainables.losses import IGNORE

PRETRAIN_STREAM = 2
"""The split code of the corpus's random stream; datasets use 0 (train) and 1 (test)."""
RECIPE_VERSION = 5
"""Bumped when the corpus or the training changes, so that older cached LMs are not reused (3: the initialisation is
seeded by the recipe; before, it followed the calling process's random state. 4: the faces as grids of words, and
the loss on answers only. 5: one thread, PRETRAINING_THREADS)."""
PRETRAINING_THREADS = 1
"""Threads the pretraining's matrix products split over, whatever the machine has. The LM's bytes depend on it: the
same recipe on the same 2-core machine ended at loss 0.443 on one thread and 0.468 on two, which made different LMs
(and different findings) under one cache key on machines whose PyTorch picks another thread count."""
MANIFEST = "pretraining.json"
VOCAB_SIZE = 512
"""The BPE vocabulary's ceiling: bytes, the corpus's few hundred words and their pieces, three specials."""
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
DIAL, BATTERY = "dial", "battery"
"""The words of a grid's cells that show no weather: the dial (or the white around it) and the battery bar."""
CELL_QUESTIONS = ("weather", *WHERE)
"""What a grid of words tells: the weather and the two corners (the battery level and the time are not in it)."""
GRIDS_PER_FACE = 2
"""Grid conversations a face. After 800 steps, an LM pretrained with one read the corners of images at 0.42 and 0.75
frozen, with two at 0.93 and 1.00 (docs/MEASUREMENTS.md)."""
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}" + USER + "{{ m['content'] }}"
                 "{% else %}" + ASSISTANT + "{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
"""The LM's conversation format, one special token per role as in the tiny random LM's vocabulary."""


@dataclass(frozen=True)
class Conversation:
    """One pretraining sequence: words in the places of an image's tokens (none in most), then (question, answer) turns."""

    turns: tuple[tuple[str, str], ...]
    cells: tuple[str, ...] = ()


def conversations(count: int, seed: int, grid: int) -> list[Conversation]:
    """Conversations about `count` random watch faces, five a face (three when `grid` is 0): the face described in
    words, then the dataset's questions about it, answered from that description; twice, the face as a grid of words,
    then questions about what the cells show; a caption request; a generation prompt with its reply. Sampled as the
    dataset samples them, from the corpus's own stream."""
    corpus: list[Conversation] = []
    for index in range(count):
        face, _, rng = sample_face(np.random.default_rng((seed, PRETRAIN_STREAM, index)))
        turns = [(turn.question, turn.answer) for turn in vqa_turns(face, rng)]
        turns[0] = (f"{described(face)} {turns[0][0]}", turns[0][1])
        corpus.append(Conversation(tuple(turns)))
        for _ in range(GRIDS_PER_FACE if grid else 0):
            asked = [CELL_QUESTIONS[int(i)] for i in rng.integers(len(CELL_QUESTIONS), size=1 + int(rng.integers(3)))]
            corpus.append(Conversation(tuple((pick(rng, QUESTIONS[a]), face.answer(a)) for a in asked), cells(face, grid)))
        caption, _ = describe(face, rng)
        corpus.append(Conversation(((pick(rng, CAPTION_QUESTIONS), caption),)))
        prompt, _ = describe(face, rng)
        corpus.append(Conversation(((f"{pick(rng, GENERATION_PROMPTS)} {prompt}", pick(rng, GENERATION_REPLIES)),)))
    return corpus


def described(face: WatchFace) -> str:
    """Every attribute of a face in words, in the captions' phrases."""
    return (f"The watch shows {face.answer('time')}. It is {face.weather}, shown in the {face.weather_corner} corner. "
            f"The battery is at {face.battery}%, shown in the {face.battery_corner} corner.")


def cells(face: WatchFace, grid: int) -> tuple[str, ...]:
    """The face as grid x grid words, row by row as the image's patches are read: the weather word in its corner's
    cell, "battery" in the cells the battery bar crosses along its edge, "dial" elsewhere."""
    words = [DIAL] * grid * grid
    bar = math.ceil((BATTERY_BAR_MARGIN + BATTERY_BAR_SIZE[0]) * grid)
    for corner, word, width in ((face.battery_corner, BATTERY, bar), (face.weather_corner, face.weather, 1)):
        row = 0 if corner.startswith("top") else grid - 1
        columns = range(width) if corner.endswith("left") else range(grid - 1, grid - 1 - width, -1)
        for column in columns:
            words[row * grid + column] = word
    return tuple(words)


def text_lm_key(lm: LMConfig) -> str:
    """Everything the pretrained LM depends on: its shape, the recipe and the corpus's version."""
    shape = {name: getattr(lm, name) for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions")}
    what = [RECIPE_VERSION, VOCAB_SIZE, shape, lm.pretraining.model_dump(mode="json")]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def text_lm_folder(config: TrainConfig) -> Path:
    """Where the run's text-pretrained LM lives: lm.pretrained_path when given, else a folder in the cache keyed by
    the recipe (so every seed and arm of a study shares one, like a real checkpoint)."""
    if config.lm.pretrained_path:
        return Path(config.lm.pretrained_path)
    return config.cache_folder() / f"text-lm-{text_lm_key(config.lm)}"


def ensure_text_lm(config: TrainConfig) -> Path:
    """Pretrain the run's tiny LM on text when its folder is missing (once: concurrent runs wait on a lock), else
    check that the folder holds this recipe's LM. Returns the folder."""
    from filelock import FileLock

    folder = text_lm_folder(config).resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        if not (folder / MANIFEST).is_file():
            if folder.exists() and any(folder.iterdir()):
                raise UserError(f"lm.pretrained_path {str(folder)!r} holds files but no {MANIFEST}: it is not a "
                                f"text-pretrained LM of uvlm; set lm.pretraining.steps: 0 to load it as a checkpoint")
            pretrain(config.lm, folder)
        _check_recipe(folder, config.lm)
    return folder


def _check_recipe(folder: Path, lm: LMConfig) -> None:
    made = json.loads((folder / MANIFEST).read_text())
    if made.get("key") != text_lm_key(lm):
        raise UserError(f"lm.pretrained_path {str(folder)!r} holds an LM pretrained with another recipe ({made.get('recipe')}); "
                        f"set a different lm.pretrained_path (or none) to pretrain one for lm.pretraining {lm.pretraining.model_dump()}")


def pretrain(lm: LMConfig, folder: Path) -> dict:
    """Train the tokenizer and the LM on the corpus and save both into `folder` (written whole or not at all)."""
    recipe = lm.pretraining
    started = time.perf_counter()
    print(f"uvlm: pretraining the tiny LM on text ({recipe.conversations} watch faces' conversations, "
          f"{recipe.steps} steps) into {folder}", file=sys.stderr)
    corpus = conversations(recipe.conversations, recipe.seed, recipe.grid)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    hf = _train_tokenizer(corpus, staging)
    sequences = _sequences(corpus, staging)
    with torch.random.fork_rng(devices=[]), _threads(PRETRAINING_THREADS):  # the same recipe, the same LM
        torch.manual_seed(recipe.seed)
        model = _causal_lm(lm, hf)
        losses = _train(model, sequences, recipe, pad=hf.pad_token_id)
    model.save_pretrained(str(staging))
    seconds = time.perf_counter() - started
    manifest = {"key": text_lm_key(lm), "recipe": recipe.model_dump(mode="json"), "version": RECIPE_VERSION,
                "conversations": len(corpus), "vocab_size": len(hf), "first_loss": losses[0], "final_loss": losses[-1],
                "seconds": round(seconds, 1)}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    print(f"uvlm: pretrained the tiny LM in {seconds:.0f} s (loss {losses[0]:.2f} -> {losses[-1]:.2f})", file=sys.stderr)
    return manifest


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_tokenizer(corpus: list[Conversation], folder: Path):
    """A byte-level BPE on the corpus, digits one token each as Llama's tokenizer splits them (every answer of an
    attribute then has the same token structure), with a chat template, saved into `folder` as transformers loads it.
    Each cell word is also a text of its own, so that it is one token where it stands alone."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[PAD, BOS, EOS, USER, ASSISTANT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator((text for c in corpus for text in (*c.cells, *(t for turn in c.turns for t in turn))), trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                 additional_special_tokens=[USER, ASSISTANT])
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(folder))
    return hf


def _sequences(corpus: list[Conversation], folder: Path) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each conversation as a run sees an image's (trainables.sequences): <s>, the cell words where
    the image's tokens go, then the turns in the tokenizer's own conversation format, labels on the answers."""
    from trainables.sequences import understanding_example
    from trainables.tokenizer import PretrainedTokenizer

    tok = PretrainedTokenizer(folder)
    words = {word: tok.encode(word) for c in corpus for word in c.cells}
    if any(len(ids) != 1 for ids in words.values()):
        raise ValueError(f"cell words of more than one token: {[w for w, ids in words.items() if len(ids) != 1]}")
    sequences = []
    for c in corpus:  # a run's VQA sequence, its image placeholders (after <s>) replaced by the cell words
        example = understanding_example(tok, list(c.turns), 0, len(c.cells))
        ids = [example.ids[0], *(words[word][0] for word in c.cells), *example.ids[1 + len(c.cells):]]
        sequences.append((ids, example.labels))
    return sequences


def _causal_lm(lm: LMConfig, hf) -> torch.nn.Module:
    import transformers

    llama = transformers.LlamaConfig(
        vocab_size=len(hf), hidden_size=lm.hidden_size, intermediate_size=lm.intermediate_size,
        num_hidden_layers=lm.num_layers, num_attention_heads=lm.num_heads, num_key_value_heads=lm.num_heads,
        max_position_embeddings=lm.max_positions, tie_word_embeddings=False,
        pad_token_id=hf.pad_token_id, bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id,
    )
    return transformers.LlamaForCausalLM(llama)


def _train(model: torch.nn.Module, sequences: list[tuple[list[int], list[int]]], recipe: TextPretraining,
           pad: int) -> list[float]:
    """AdamW with a linear warm-up and cosine decay; the loss on the answers. Returns the loss of each tenth."""
    generator = torch.Generator().manual_seed(recipe.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    warmup = max(1, recipe.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(1.0, (step + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * min(step, recipe.steps) / recipe.steps)))
    lengths = np.array([len(ids) for ids, _ in sequences])
    losses, window = [], []
    model.train()
    for step in range(recipe.steps):
        rows = torch.randint(len(sequences), (recipe.batch_size,), generator=generator).tolist()
        width = int(lengths[rows].max())
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :lengths[row]] = torch.tensor(sequences[row][0])
            labels[i, :lengths[row]] = torch.tensor(sequences[row][1])
        mask = (ids != pad).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        window.append(loss.item())
        if (step + 1) % max(1, recipe.steps // 10) == 0 or step + 1 == recipe.steps:
            losses.append(round(float(np.mean(window)), 4))
            window = []
    return losses
