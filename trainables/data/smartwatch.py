"""The synthetic smart-watch dataset: sample faces, render them, write records, in parallel and deterministically.

Each image is a pure function of (seed, split, index): its RNG is seeded from
that triple, so the images and records do not depend on how many worker
processes run or in which order shards finish. Shards cover fixed index
ranges and are written by index. The image order within a split is the index
order, itself random (every image is an independent draw), so the first N
images of `image_ids(split)` are a uniform sample: the data-size axis.

Hide rules (finding 3) only drop records; the images and the records of the
other images are the same as without them.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from io import BytesIO
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np

from trainables import limits
from trainables.data import layout
from trainables.data.records import (
    ATTRIBUTES, CORNERS, SPLITS, WEATHERS, HideRule, Record, Task, Turn, WatchFace, is_hidden, parse_hide_rules,
)
from trainables.data.render import render_watch
from trainables.errors import UserError

GENERATOR = "smartwatch"
SPLIT_CODES = {"train": 0, "test": 1}

QUESTIONS = {
    "time": (
        "What time is it?", "What time does the watch show?", "What is the time on the watch?",
        "What time is shown?", "Tell me the time.", "What time does the clock show?", "What is the time?",
        "Read the time on the watch.", "Which time is shown on the watch?", "What time is on the watch face?",
    ),
    "weather": (
        "What is the weather?", "What weather does the icon show?", "What weather is shown?",
        "How is the weather?", "What is the weather like?", "Which weather is shown on the watch?",
        "What does the weather icon show?", "Tell me the weather.", "What weather does the watch show?",
        "What is the weather on the watch?",
    ),
    "battery": (
        "What is the battery level?", "How much battery is left?", "What is the battery percentage?",
        "How full is the battery?", "What battery level is shown?", "Tell me the battery level.",
        "What does the battery show?", "How much charge is left?", "What is the charge level?",
        "What percentage does the battery show?",
    ),
    "weather_corner": (
        "Where is the weather icon?", "In which corner is the weather icon?", "Which corner shows the weather?",
        "Where is the weather shown?", "In which corner is the weather shown?", "Where can I see the weather?",
        "Which corner has the weather icon?", "Where is the weather on the image?",
        "Where does the watch show the weather?", "In which corner of the image is the weather?",
    ),
    "battery_corner": (
        "Where is the battery?", "In which corner is the battery?", "Which corner shows the battery?",
        "Where is the battery level shown?", "In which corner is the battery shown?",
        "Where can I see the battery?", "Which corner has the battery?", "Where is the battery on the image?",
        "Where does the watch show the battery?", "In which corner of the image is the battery?",
    ),
}
WHAT = ("time", "weather", "battery")
WHERE = ("weather_corner", "battery_corner")
CAPTION_QUESTIONS = (
    "Describe this image.", "Describe the watch.", "Describe the smart watch.", "What do you see in this image?",
    "Write a caption for this image.", "Give a short description of the image.", "Tell me about this image.",
    "Describe what the watch shows.", "Caption this image.", "What does this image show?",
)
GENERATION_PROMPTS = (
    "Draw a smart watch.", "Generate an image of a smart watch.", "Create a picture of a smart watch.",
    "Draw a watch face.", "Make an image of a smart watch.", "Show me a smart watch.", "Please draw a smart watch.",
    "Generate a smart watch.", "Paint a smart watch.", "Create an image of a watch.",
)
GENERATION_REPLIES = ("Here is the smart watch.", "Here is the image.", "Sure, here it is.", "Here you go.", "Here is the watch.")
TIME_CLAUSES = ("The time is {}.", "The watch shows {}.", "It is {} on the watch.")


@dataclass(frozen=True)
class SmartwatchOptions:
    """Everything that decides the bytes of a smart-watch dataset (all of it goes into the manifest)."""

    train_images: int = 2000
    test_images: int = 300
    image_size: int = 64
    """Side in pixels: 64 for the CPU default, 224 at paper scale."""
    seed: int = 0
    hide_from_understanding: tuple[str, ...] = ()
    """ATTR=VALUE rules: matching training images get a generation record only (finding 3)."""
    hide_control: bool = False
    """Finding 3's control: matching training images get no records at all."""
    shard_images: int = 500
    """Images per shard; shards are fixed index ranges, so this is part of the layout."""
    rules: tuple[HideRule, ...] = field(init=False, repr=False, compare=False)
    """The parsed hide rules (derived, not an option)."""

    def __post_init__(self) -> None:
        for name, bounds in (("train_images", limits.IMAGES), ("test_images", limits.IMAGES),
                             ("image_size", limits.IMAGE_SIZE), ("seed", limits.SEED), ("shard_images", limits.SHARD_IMAGES)):
            limits.check(f"--{name.replace('_', '-')}", getattr(self, name), bounds)
        rules = parse_hide_rules(self.hide_from_understanding)
        if self.hide_control and not rules:
            raise UserError("--hide-control needs at least one --hide-from-understanding ATTR=VALUE rule")
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "hide_from_understanding", tuple(str(rule) for rule in rules))

    def generator(self) -> dict[str, Any]:
        """The manifest's `generator` entry; two datasets are the same when these are equal."""
        options = asdict(self)
        options.pop("rules")
        return {"name": GENERATOR, **options, "hide_from_understanding": list(self.hide_from_understanding)}

    def count(self, split: str) -> int:
        return self.train_images if split == "train" else self.test_images


def sample_image(seed: int, split: str, index: int) -> tuple[WatchFace, tuple[int, int, int], np.random.Generator]:
    """The face and dial colour of one image, and its RNG (left positioned to sample the records)."""
    return sample_face(np.random.default_rng((seed, SPLIT_CODES[split], index)))


def sample_face(rng: np.random.Generator) -> tuple[WatchFace, tuple[int, int, int], np.random.Generator]:
    """A face and dial colour drawn from `rng`, and `rng` itself (left positioned to sample the records)."""
    hour, minute, second, battery, weather = (int(v) for v in rng.integers((12, 60, 60, 101, 3)))
    weather_corner, battery_corner = (CORNERS[int(i)] for i in rng.permutation(4)[:2])
    # Channels below 200 keep the white hands visible on every dial.
    colour = tuple(int(v) for v in rng.integers(0, 200, size=3))
    face = WatchFace(hour, minute, second, battery, WEATHERS[weather], weather_corner, battery_corner)
    return face, colour, rng


def pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def vqa_turns(face: WatchFace, rng: np.random.Generator) -> tuple[Turn, ...]:
    """One question, then up to three more, each with p=0.4; "what" questions p=3/5, "where" p=2/5."""
    turns = []
    while not turns or (len(turns) < 4 and rng.random() < 0.4):
        attribute = pick(rng, WHAT) if rng.random() < 0.6 else pick(rng, WHERE)
        turns.append(Turn(pick(rng, QUESTIONS[attribute]), face.answer(attribute), attribute))
    return tuple(turns)


def describe(face: WatchFace, rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    """Caption sentences: always the time; weather, battery and their corners each with p=0.5.

    The canonical answer strings appear verbatim, so scorers can look for them.
    """
    mentioned = ["time"] + [attribute for attribute in ATTRIBUTES[1:] if rng.random() < 0.5]
    sentences = [pick(rng, TIME_CLAUSES).format(face.answer("time"))]
    for thing, what, where in (("weather", "weather", "weather_corner"), ("battery", "battery", "battery_corner")):
        value = f"It is {face.weather}" if thing == "weather" else f"The battery is at {face.battery}%"
        corner = f"shown in the {face.answer(where)} corner"
        if what in mentioned and where in mentioned:
            sentences.append(f"{value}, {corner}.")
        elif what in mentioned:
            sentences.append(f"{value}.")
        elif where in mentioned:
            sentences.append(f"The {thing} is {corner}.")
    return " ".join(sentences), tuple(mentioned)


def image_records(face: WatchFace, rng: np.random.Generator, image_id: str, split: str) -> list[Record]:
    """The VQA, caption and generation records of one image, sampled in that order from its RNG."""
    turns = vqa_turns(face, rng)
    caption, caption_mentions = describe(face, rng)
    caption_turn = Turn(pick(rng, CAPTION_QUESTIONS), caption, None)
    prompt_text, prompt_mentions = describe(face, rng)
    prompt_turn = Turn(f"{pick(rng, GENERATION_PROMPTS)} {prompt_text}", pick(rng, GENERATION_REPLIES), None)
    made = ((Task.VQA, turns, ()), (Task.CAPTION, (caption_turn,), caption_mentions),
            (Task.GENERATION, (prompt_turn,), prompt_mentions))
    return [Record(f"{image_id}-{task.value}", image_id, split, task, turns, mentions, face) for task, turns, mentions in made]


def kept_records(records: list[Record], hidden: bool, options: SmartwatchOptions) -> list[Record]:
    """Hide rules act on the training split only; the test split keeps everything."""
    if not hidden or records[0].split != "train":
        return records
    if options.hide_control:
        return []
    return [record for record in records if record.task == Task.GENERATION]


def build_shard(options: SmartwatchOptions, split: str, shard: int, folder: str) -> dict[str, Any]:
    """Render and write the images [shard * shard_images, ...) of a split; return its counts."""
    start = shard * options.shard_images
    stop = min(start + options.shard_images, options.count(split))
    images, records = [], []
    counts = {task.value: 0 for task in Task}
    for index in range(start, stop):
        face, colour, rng = sample_image(options.seed, split, index)
        image_id = f"{split}-{index:06d}"
        png = BytesIO()
        render_watch(face, colour, options.image_size).save(png, format="PNG", compress_level=1)
        images.append({"image_id": image_id, "index": index, "png": png.getvalue(), "width": options.image_size,
                       "height": options.image_size, "face": layout.face_row(face)})
        for record in kept_records(image_records(face, rng, image_id, split), is_hidden(face, options.rules), options):
            records.append(layout.record_row(record))
            counts[record.task.value] += 1
    layout.write_shard(Path(folder), split, shard, images, records)
    return {"split": split, "shard": shard, "images": stop - start, "records": counts}


def generate_smartwatch(options: SmartwatchOptions, out: str | Path, workers: int | None = None,
                        show_progress: bool = True) -> bool:
    """Generate the dataset at `out`; False (a no-op) when it already holds exactly this dataset.

    `workers` processes render shards in parallel (default: all cores); the
    bytes written do not depend on it.
    """
    jobs = [(split, shard) for split in SPLITS for shard in range(-(-options.count(split) // options.shard_images))]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))

    def build(folder: Path) -> dict[str, Any]:
        results = []
        description = f"smartwatch {options.image_size}px"
        with layout.progress(options.train_images + options.test_images, description, show_progress) as bar:
            for result in run_shards(options, jobs, folder, workers):
                results.append(result)
                bar.update(result["images"])
        return {"seed": options.seed, "splits": {split: split_summary(split, results) for split in SPLITS}}

    return layout.publish(Path(out), GENERATOR, options.generator(), build)


def run_shards(options: SmartwatchOptions, jobs: list[tuple[str, int]], folder: Path,
               workers: int) -> Iterator[dict[str, Any]]:
    """Each shard's counts as it finishes, in any order; in this process when workers == 1."""
    if workers == 1:
        for split, shard in jobs:
            yield build_shard(options, split, shard, str(folder))
        return
    with ProcessPoolExecutor(workers, mp_context=pool_context(), initializer=_ignore_interrupts) as pool:
        futures = [pool.submit(build_shard, options, split, shard, str(folder)) for split, shard in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:  # on Ctrl-C or an error, do not start the remaining shards
            for future in futures:
                future.cancel()


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool and removes the partial folder."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def pool_context() -> BaseContext:
    """fork (fast start) unless torch or Ray is loaded: their thread pools do not survive a fork.

    spawn costs each worker a fresh interpreter and imports (about a second),
    and re-imports the caller's main module, which must be import-safe.
    """
    risky = any(name in sys.modules for name in ("torch", "ray"))
    return get_context("spawn" if risky else "fork")


def split_summary(split: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    mine = sorted((result for result in results if result["split"] == split), key=lambda result: result["shard"])
    return {
        "images": sum(result["images"] for result in mine),
        "records": {task.value: sum(result["records"][task.value] for result in mine) for task in Task},
        "shards": [layout.shard_paths(split, result["shard"]) for result in mine],
    }
