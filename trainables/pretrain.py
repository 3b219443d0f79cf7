"""A tiny pretrained LM made by the platform: the lm.* Llama pretrained on the study's language alone.

Every model of the paper starts from a pretrained LM; a random one cannot say
a word that no training answer contains ("raining" in finding 3) and, frozen,
cannot answer at all. `ensure_text_lm` pretrains the tiny LM once per recipe
on conversations about smart watches with no image, and saves it the way a
real checkpoint ships (`save_pretrained`, a byte-level BPE tokenizer beside
it), so a run loads it through `lm.pretrained_path` like any other.

The corpus cannot leak an image's attributes: its watch faces are drawn from
a random stream of their own, (seed, PRETRAIN_STREAM, i), which no dataset
split uses (train is 0, test 1), and it is built without reading any dataset.
Each attribute value is uniform, as in the data, so the LM learns which words
answer which question, and to read them from what precedes the question, not
which answer goes with which image.

    corpus (faces in words + questions, captions, prompts) -> BPE tokenizer -> causal LM loss on every token
    -> <cache>/text-lm-<key>/ {config.json, model.safetensors, tokenizer files, pretraining.json}
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trainables.config import LMConfig, TextPretraining, TrainConfig
from trainables.data.records import WatchFace
from trainables.data.smartwatch import CAPTION_QUESTIONS, GENERATION_PROMPTS, GENERATION_REPLIES, describe, pick, sample_face, vqa_turns
from trainables.errors import UserError

PRETRAIN_STREAM = 2
"""The split code of the corpus's random stream; datasets use 0 (train) and 1 (test)."""
RECIPE_VERSION = 3
"""Bumped when the corpus or the training changes, so that older cached LMs are not reused (3: the initialisation is
seeded by the recipe; before, it followed the calling process's random state)."""
MANIFEST = "pretraining.json"
VOCAB_SIZE = 512
"""The BPE vocabulary's ceiling: bytes, the corpus's few hundred words and their pieces, three specials."""
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}" + USER + "{{ m['content'] }}"
                 "{% else %}" + ASSISTANT + "{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
"""The LM's conversation format, one special token per role as in the tiny random LM's vocabulary."""


def conversations(count: int, seed: int) -> list[list[tuple[str, str]]]:
    """Conversations, each a list of (question, answer) turns, about `count` random watch faces, three a face:
    the face described in words, then the dataset's questions about it, answered from that description (a frozen LM
    must answer from what precedes the question, as it will from the image tokens); a caption request; a
    generation prompt with its reply. Sampled as the dataset samples them, from the corpus's own stream."""
    corpus: list[list[tuple[str, str]]] = []
    for index in range(count):
        face, _, rng = sample_face(np.random.default_rng((seed, PRETRAIN_STREAM, index)))
        turns = [(turn.question, turn.answer) for turn in vqa_turns(face, rng)]
        turns[0] = (f"{described(face)} {turns[0][0]}", turns[0][1])
        corpus.append(turns)
        caption, _ = describe(face, rng)
        corpus.append([(pick(rng, CAPTION_QUESTIONS), caption)])
        prompt, _ = describe(face, rng)
        corpus.append([(f"{pick(rng, GENERATION_PROMPTS)} {prompt}", pick(rng, GENERATION_REPLIES))])
    return corpus


def described(face: WatchFace) -> str:
    """Every attribute of a face in words, in the captions' phrases."""
    return (f"The watch shows {face.answer('time')}. It is {face.weather}, shown in the {face.weather_corner} corner. "
            f"The battery is at {face.battery}%, shown in the {face.battery_corner} corner.")


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
    corpus = conversations(recipe.conversations, recipe.seed)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    hf = _train_tokenizer(corpus, staging)
    sequences = _sequences(corpus, staging)
    with torch.random.fork_rng(devices=[]):  # the same recipe, the same LM, whatever the caller drew before
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


def _train_tokenizer(corpus: list[list[tuple[str, str]]], folder: Path):
    """A byte-level BPE on the corpus, digits one token each as Llama's tokenizer splits them (every answer of an
    attribute then has the same token structure), with a chat template, saved into `folder` as transformers loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[PAD, BOS, EOS, USER, ASSISTANT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator((text for turns in corpus for turn in turns for text in turn), trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                 additional_special_tokens=[USER, ASSISTANT])
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(folder))
    return hf


def _sequences(corpus: list[list[tuple[str, str]]], folder: Path) -> list[list[int]]:
    """Each conversation as a fine-tuning run will see it (trainables.sequences.turn_tokens, the tokenizer's own
    conversation format), after <s>."""
    from trainables.sequences import turn_tokens
    from trainables.tokenizer import PretrainedTokenizer

    tok = PretrainedTokenizer(folder)
    return [[tok.bos, *(token for question, answer in turns for token in turn_tokens(tok, question, answer)[0])]
            for turns in corpus]


def _causal_lm(lm: LMConfig, hf) -> torch.nn.Module:
    import transformers

    llama = transformers.LlamaConfig(
        vocab_size=len(hf), hidden_size=lm.hidden_size, intermediate_size=lm.intermediate_size,
        num_hidden_layers=lm.num_layers, num_attention_heads=lm.num_heads, num_key_value_heads=lm.num_heads,
        max_position_embeddings=lm.max_positions, tie_word_embeddings=False,
        pad_token_id=hf.pad_token_id, bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id,
    )
    return transformers.LlamaForCausalLM(llama)


def _train(model: torch.nn.Module, sequences: list[list[int]], recipe: TextPretraining, pad: int) -> list[float]:
    """AdamW with a linear warm-up and cosine decay; the loss on every token. Returns the loss of each tenth."""
    generator = torch.Generator().manual_seed(recipe.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    warmup = max(1, recipe.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(1.0, (step + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * min(step, recipe.steps) / recipe.steps)))
    lengths = np.array([len(s) for s in sequences])
    losses, window = [], []
    model.train()
    for step in range(recipe.steps):
        rows = torch.randint(len(sequences), (recipe.batch_size,), generator=generator).tolist()
        width = int(lengths[rows].max())
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :lengths[row]] = torch.tensor(sequences[row])
        mask = (ids != pad).long()
        labels = ids.masked_fill(mask == 0, -100)
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
