"""A run's data: which records it trains on, in which order, and the test prompts it is scored on.

Task mixing is data, not code paths. The first `data.train_images` images of
the dataset's seeded order give the understanding records (VQA + caption) of
every arm; the first round(generation_ratio * train_images) images give the
generation records of the generation and mixed arms. So for a given seed and
size every arm that reads images reads the same understanding records.

The budget is explicit: `epochs` passes over the run's own records, or
`steps` / `samples` equal across arms. The record stream is a sequence of
seeded permutations, one per epoch; global batch k is stream[kB:(k+1)B] and
worker r of W takes every W-th record of it, so the order is a function of
(seed, step) alone and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainables.config import Arm, TrainConfig
from trainables.data import layout
from trainables.data.dataset import Dataset
from trainables.data.prepare import record_images
from trainables.data.records import Record, Task, parse_hide_rules
from trainables.errors import UserError
from trainables.losses import IGNORE
from trainables.sequences import Example, generation_example, understanding_example
from trainables.tokenizer import TextTokenizer, WordTokenizer


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, H, W, 3)
    image_ids: list[str]
    records: dict[Task, list[Record]] = field(default_factory=dict)

    def row(self) -> dict[str, int]:
        return {image_id: i for i, image_id in enumerate(self.image_ids)}


CACHE_BYTES = 1 << 30
_decoded: dict[tuple[str, str, str], tuple[dict[str, int], np.ndarray]] = {}
_records: dict[tuple[str, str, str], tuple[Record, ...]] = {}
_tokenizers: dict[str, WordTokenizer] = {}  # content hash -> the word tokenizer of the dataset's texts


def _key(ds: Dataset, split: str) -> tuple[str, str, str]:
    return str(Path(ds.path).resolve()), str(ds.manifest.get("content_hash", "")), split


def split_records(ds: Dataset, split: str) -> tuple[Record, ...]:
    """A split's records, read once per process (sweep trials reuse their process), keyed by content hash."""
    key = _key(ds, split)
    records = _records.get(key) or tuple(ds.records(split))
    if key[1]:
        _records[key] = records
    return records


def load_images(ds: Dataset, split: str, wanted: list[str]) -> Split:
    """The images of `wanted` ids (in that order) as one uint8 tensor (a copy: runs never share it).

    A split small enough is decoded whole once per process and kept for the next run on the same
    dataset (~0.4 s of PNGs at 2,000 images), keyed by the content hash so that a regenerated dataset
    is read anew, while all kept splits fit in CACHE_BYTES; a larger one decodes only the wanted images."""
    key = _key(ds, split)
    if key not in _decoded:
        count = int(ds.manifest["splits"].get(layout.split_name(split), {}).get("images", 0))
        keep, keep_all = set(wanted), None
        rows, arrays = {}, []
        for image_id, array in ds.images(split):
            if keep_all is None:  # decided at the first image, from the split's size in memory
                keep_all = bool(key[1]) and count * array.nbytes <= CACHE_BYTES
            if keep_all or image_id in keep:
                rows[image_id] = len(arrays)
                arrays.append(array)
        images = np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)
        if not keep_all:
            return _select(rows, images, wanted, ds.path, split)
        while _decoded and sum(kept.nbytes for _, kept in _decoded.values()) + images.nbytes > CACHE_BYTES:
            _decoded.pop(next(iter(_decoded)))  # the oldest
        _decoded[key] = rows, images
    return _select(*_decoded[key], wanted, ds.path, split)


def _select(rows: dict[str, int], images: np.ndarray, wanted: list[str], where: Path, split: str) -> Split:
    missing = [image_id for image_id in wanted if image_id not in rows]
    if missing:
        raise UserError(f"dataset {where}: {split} images {missing[:3]} listed but missing from the image shards")
    return Split(torch.from_numpy(images[[rows[image_id] for image_id in wanted]]), list(wanted))


class RunData:
    """Training examples and test records of one run (the same on every worker)."""

    def __init__(self, config: TrainConfig, path: str | Path):
        self.config = config
        self.ds = Dataset.open(path)
        self.fingerprint = str(self.ds.manifest.get("content_hash", ""))
        self.hide_rules = parse_hide_rules(config.data.hide_from_understanding)
        train_ids = self.ds.image_ids("train")
        n, n_gen = record_images(config.data, len(train_ids))
        if n > len(train_ids):
            raise UserError(f"data.train_images {n} exceeds the {len(train_ids)} training images of {path}")
        self.und_ids = train_ids[:n]  # understanding records of every arm come from these
        self.gen_ids = train_ids[:n_gen] if config.data.arm != Arm.UNDERSTANDING else []
        if config.data.arm == Arm.GENERATION:
            used = self.gen_ids
        else:
            used = sorted(set(self.und_ids) | set(self.gen_ids), key=train_ids.index)
        self.train = load_images(self.ds, "train", used)
        und_set, gen_set = set(self.und_ids), set(self.gen_ids)
        all_train = list(split_records(self.ds, "train"))
        self.vqa_reference = [r for r in all_train if r.task == Task.VQA and r.image_id in und_set]  # baselines
        keep_und = config.data.arm != Arm.GENERATION
        self.train.records = {
            Task.VQA: [r for r in self.vqa_reference if keep_und],
            Task.CAPTION: [r for r in all_train if keep_und and r.task == Task.CAPTION and r.image_id in und_set],
            Task.GENERATION: [r for r in all_train if r.task == Task.GENERATION and r.image_id in gen_set],
        }
        test_ids = self.ds.image_ids("test")[: config.data.test_images]
        self.test = load_images(self.ds, "test", test_ids)
        test_set = set(test_ids)
        all_test = [r for r in split_records(self.ds, "test") if r.image_id in test_set]
        self.test.records = {task: [r for r in all_test if r.task == task] for task in Task}
        self.texts = [t for r in all_train + all_test for turn in r.turns for t in (turn.question, turn.answer)]
        self.image_size = int(self.train.images.shape[1]) if len(self.train.images) else int(self.test.images.shape[1])

    def word_tokenizer(self) -> WordTokenizer:
        """The tokenizer of every text of the dataset (train and test: the same for every arm), built once
        per process for each dataset content; it keeps the encodings it made."""
        if not self.fingerprint:
            return WordTokenizer.build(self.texts)
        if self.fingerprint not in _tokenizers:
            _tokenizers[self.fingerprint] = WordTokenizer.build(self.texts)
        return _tokenizers[self.fingerprint]

    # -- examples --------------------------------------------------------------------------
    def examples(self, tok: TextTokenizer, n_und: int, n_gen: int, max_positions: int) -> list[Example]:
        """Every training record of the run as a token sequence, in stored order."""
        rows = self.train.row()
        out = []
        for task in Task:
            for r in self.train.records[task]:
                if task == Task.GENERATION:
                    turn = r.turns[0]
                    out.append(generation_example(tok, turn.question, turn.answer, rows[r.image_id], n_gen))
                else:
                    out.append(understanding_example(tok, [(t.question, t.answer) for t in r.turns], rows[r.image_id], n_und))
        if not out:
            raise UserError(f"the run has no training records (data.arm={self.config.data.arm.value}, {self.config.data.path})")
        longest = max(len(e.ids) for e in out)
        if longest > max_positions:
            raise UserError(f"a training sequence has {longest} tokens, more than lm.max_positions={max_positions}")
        return out

    def max_answer_tokens(self, tok: TextTokenizer, task: Task) -> int:
        """The longest true answer of `task` (train and test) + 2: room for every answer the data holds.
        Per task, so that one-word VQA answers are not decoded to a caption's length."""
        answers = [t.answer for r in self.test.records[task] + self.train.records[task] for t in r.turns]
        return max((len(tok.encode(a)) for a in answers), default=8) + 2


class Order:
    """Seeded epoch orders: the global batch of any step, without state.

    Common random numbers across arms: understanding and generation records are shuffled apart, each
    by its own permutation of (seed, epoch), and merged evenly. Two runs of one seed that share
    records (understanding-only and mixed share the understanding ones, generation-only and mixed the
    generation ones) therefore meet the shared records in the same order, and a paired comparison
    between them is not also a comparison between two data orders.
    """

    def __init__(self, generation: list[bool], seed: int):
        flags = np.asarray(generation, dtype=bool)
        self.n, self.seed = len(flags), seed
        self.und, self.gen = np.flatnonzero(~flags), np.flatnonzero(flags)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            und = self.und[np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.und))]
            gen = self.gen[np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.gen))]
            # evenly merged: the k-th of n records of a kind sits at (k + 0.5) / n of the epoch
            place = np.concatenate([(np.arange(len(und)) + 0.5) / max(len(und), 1), (np.arange(len(gen)) + 0.5) / max(len(gen), 1)])
            self._perms = {epoch: np.concatenate([und, gen])[np.argsort(place, kind="stable")]}
        return self._perms[epoch]

    def batch(self, step: int, batch_size: int) -> list[int]:
        start = step * batch_size
        return [int(self._perm(i // self.n)[i % self.n]) for i in range(start, start + batch_size)]


def global_counts(examples: list[Example], n_gen: int) -> tuple[int, int]:
    """Answer tokens and image tokens of a global batch: the loss denominators on every worker."""
    text = sum(sum(1 for label in e.labels[1:] if label != IGNORE) for e in examples)
    return text, n_gen * sum(e.generation for e in examples)


def length_groups(examples: list[Example], groups: int) -> list[list[Example]]:
    """Records sorted by length, cut into `groups` runs of near-equal size (no empty ones): each is
    padded only to its own longest record, and together they give the batch's gradient."""
    ordered = sorted(examples, key=lambda e: len(e.ids))
    n = len(ordered)
    cuts = [round(i * n / groups) for i in range(groups + 1)]
    return [ordered[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
