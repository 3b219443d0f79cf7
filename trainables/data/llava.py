"""Import LLaVA-format conversations and their images into the uvlm Parquet layout.

Input: a JSON list of {id?, image, conversations: [{from: human|gpt, value}, ...]}
whose first human turn carries an `<image>` marker, and a folder that the
`image` paths are relative to. Each entry becomes one record with `face=None`:
a VQA record whose turns have `attribute=None`, or, with caption detection, a
caption record for a single-turn "describe the image" conversation. With
`captions_to_generation`, caption records become text-to-image generation
records (prompt "Generate an image: <caption>", the image as target), as the
paper did with ShareGPT4V. Entries without an image (text-only chat) are
skipped and counted in the manifest.

Images are stored once per split, as PNG, in order of first use; records
keep the JSON order. Every image is checked to exist, inside the image folder, before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from trainables import limits
from trainables.data import layout
from trainables.data.records import Record, Task, Turn
from trainables.errors import UserError

GENERATOR = "llava"
IMAGE_MARKER = "<image>"
CAPTION_QUESTION = re.compile(r"describ|caption|summar|what do you see|what is in the (image|picture|photo)", re.IGNORECASE)
GENERATION_PROMPT = "Generate an image: {}"
GENERATION_REPLY = "Here is the image."


@dataclass(frozen=True)
class LlavaOptions:
    """What decides the contents of an imported dataset (all of it goes into the manifest)."""

    json: str
    """LLaVA-format JSON file of the train split."""
    images: str
    """Folder that the entries' `image` paths are relative to."""
    test_json: str | None = None
    """Optional JSON file of the test split."""
    detect_captions: bool = False
    """Single-turn conversations asking to describe the image become caption records."""
    captions_to_generation: bool = False
    """Caption records become text-to-image generation records (implies caption detection)."""
    shard_records: int = 5000
    """Conversations per shard."""

    def __post_init__(self) -> None:
        limits.check("--shard-records", self.shard_records, limits.SHARD_RECORDS)
        if not Path(self.images).is_dir():
            what = "is a file, not a folder" if Path(self.images).exists() else "does not exist"
            raise UserError(f"image folder {self.images!r} {what}")

    def sources(self) -> dict[str, Path]:
        return {split: Path(path) for split, path in (("train", self.json), ("test", self.test_json)) if path}


@dataclass(frozen=True)
class Conversation:
    """One parsed JSON entry."""

    record_id: str
    image: str
    task: Task
    turns: tuple[Turn, ...]


def import_llava(options: LlavaOptions, out: str | Path) -> bool:
    """Import into `out`; False (a no-op) when it already holds exactly this import."""
    conversations, skipped = {}, {}
    for split, path in options.sources().items():
        conversations[split], skipped[split] = read_conversations(path, split, options)
        check_images(path, Path(options.images), conversations[split])
    generator = {"name": GENERATOR, **asdict(options),
                 "json_sha256": layout.file_digest(Path(options.json)),
                 "test_json_sha256": layout.file_digest(Path(options.test_json)) if options.test_json else None}

    def build(folder: Path) -> dict[str, Any]:
        splits = {}
        for split in ("train", "test"):
            splits[split] = write_split(folder, split, conversations.get(split, []), Path(options.images), options)
            splits[split]["skipped_text_only"] = skipped.get(split, 0)
        return {"seed": None, "splits": splits}

    return layout.publish(Path(out), GENERATOR, generator, build)


def read_conversations(path: Path, split: str, options: LlavaOptions) -> tuple[list[Conversation], int]:
    """Parse and check every entry; UserError naming the file and entry for anything malformed."""
    if not path.is_file():
        raise UserError(f"LLaVA JSON file {str(path)!r} " + ("is a folder" if path.is_dir() else "does not exist"))
    entries = layout.read_json(path)
    if not isinstance(entries, list):
        raise UserError(f"{str(path)!r}: expected a JSON list of conversations, got {type(entries).__name__}")
    conversations, seen, skipped = [], set(), 0
    for index, entry in enumerate(entries):
        where = f"{str(path)!r} entry {index}"
        if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
            raise UserError(f"{where}: expected an object with a 'conversations' list")
        if "image" not in entry:
            skipped += 1
            continue
        if not isinstance(entry["image"], str):
            raise UserError(f"{where}: 'image' must be one path (multi-image entries are not supported)")
        record_id = str(entry.get("id", f"{split}-{index:07d}"))
        if record_id in seen:
            record_id = f"{record_id}-{index}"
        seen.add(record_id)
        turns = parse_turns(entry["conversations"], where)
        task = Task.VQA
        if options.detect_captions and len(turns) == 1 and CAPTION_QUESTION.search(turns[0].question):
            task = Task.CAPTION
            if options.captions_to_generation:
                task = Task.GENERATION
                turns = (Turn(GENERATION_PROMPT.format(turns[0].answer), GENERATION_REPLY, None),)
        conversations.append(Conversation(record_id, entry["image"], task, turns))
    return conversations, skipped


def parse_turns(messages: list[Any], where: str) -> tuple[Turn, ...]:
    """Alternating human/gpt messages -> turns, with the `<image>` marker removed from questions."""
    if not messages or len(messages) % 2:
        raise UserError(f"{where}: expected alternating human/gpt messages, got {len(messages)} messages")
    turns = []
    for position in range(0, len(messages), 2):
        pair = messages[position:position + 2]
        speakers = [message.get("from") if isinstance(message, dict) else None for message in pair]
        if speakers != ["human", "gpt"] or not all(isinstance(message.get("value"), str) for message in pair):
            raise UserError(f"{where}: message {position} and {position + 1} must be human then gpt with text values "
                            f"(got {speakers})")
        question = pair[0]["value"].replace(IMAGE_MARKER, "").strip()
        turns.append(Turn(question, pair[1]["value"].strip(), None))
    return tuple(turns)


def check_images(path: Path, folder: Path, conversations: list[Conversation]) -> None:
    """Every image is a file inside `folder`: a conversation file from elsewhere must not pull in any other file
    of this machine (`..`, an absolute path, a symlink out) and ship it in a dataset."""
    inside = folder.resolve()
    outside = [c.image for c in conversations if _leaves(inside, c.image)]
    if outside:
        raise UserError(f"{str(path)!r}: {len(outside)} image path(s) lead outside the image folder {str(folder)!r}, "
                        f"e.g. {outside[0]!r}; copy the images into it and give paths relative to it")
    missing = [c.image for c in conversations if not (folder / c.image).is_file()]
    if missing:
        raise UserError(f"{str(path)!r}: {len(missing)} image(s) missing under {str(folder)!r}, "
                        f"e.g. {missing[0]!r}")


def _leaves(folder: Path, relative: str) -> bool:
    """Whether `relative` resolves outside `folder` (itself resolved)."""
    try:
        return not (folder / relative).resolve().is_relative_to(folder)
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop: not a file, reported as missing
        return False


def write_split(folder: Path, split: str, conversations: list[Conversation], images_folder: Path,
                options: LlavaOptions) -> dict[str, Any]:
    """Write the split's shards: each holds its conversations and the images they use first."""
    stored: set[str] = set()
    shards, counts = [], {task.value: 0 for task in Task}
    with layout.progress(len(conversations), f"llava {split}", unit="conv") as bar:
        for shard, start in enumerate(range(0, len(conversations), options.shard_records)):
            images, records = [], []
            for conversation in conversations[start:start + options.shard_records]:
                if conversation.image not in stored:
                    stored.add(conversation.image)
                    images.append(image_row(images_folder, conversation.image, len(stored) - 1))
                record = Record(conversation.record_id, conversation.image, split, conversation.task,
                                conversation.turns, (), None)
                records.append(layout.record_row(record))
                counts[record.task.value] += 1
                bar.update(1)
            layout.write_shard(folder, split, shard, images, records)
            shards.append(layout.shard_paths(split, shard))
    return {"images": len(stored), "records": counts, "shards": shards}


def image_row(folder: Path, relative: str, index: int) -> dict[str, Any]:
    try:
        with Image.open(folder / relative) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"image {str(folder / relative)!r} cannot be read: {error}") from None
    png = BytesIO()
    rgb.save(png, format="PNG", compress_level=1)
    return {"image_id": relative, "index": index, "png": png.getvalue(), "width": rgb.width, "height": rgb.height,
            "face": None}

