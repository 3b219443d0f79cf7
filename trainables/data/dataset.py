"""Read a dataset folder: typed records and decoded images, streamed from Parquet batches.

Nothing is loaded whole: `records` and `images` walk the shards in stored
order, one pyarrow batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from trainables.data import layout
from trainables.data.records import Record, Task
from trainables.errors import unknown_choice

BATCH_ROWS = 1024


class Dataset:
    """A validated dataset folder (manifest.json + Parquet shards)."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        """The manifest.json contents: kind, generator options, seed, counts per split and task, files, content hash."""

    @classmethod
    def open(cls, path: str | Path) -> Dataset:
        """Check the manifest and every shard's size, schema and row count; UserError if missing, damaged or foreign."""
        path = Path(path)
        manifest = layout.read_manifest(path)
        layout.check_files(path, manifest)
        return cls(path, manifest)

    def verify(self) -> None:
        """Also compare every shard's SHA-256 with the manifest (reads all bytes)."""
        layout.verify_hashes(self.path, self.manifest)

    def records(self, split: str, tasks: Iterable[Task | str] | None = None) -> Iterator[Record]:
        """Records of a split in stored order (per image: vqa, caption, generation), optionally only some tasks."""
        wanted = None if tasks is None else pa.array(sorted({_task(task).value for task in tasks}), pa.string())
        for batch in self._batches(split, "records"):
            if wanted is not None:
                batch = batch.filter(pc.is_in(batch.column("task"), value_set=wanted))
            yield from map(layout.row_record, batch.to_pylist())

    def images(self, split: str) -> Iterator[tuple[str, np.ndarray]]:
        """(image_id, uint8 array (H, W, 3)) in stored order."""
        for batch in self._batches(split, "images", columns=["image_id", "png"]):
            for image_id, png in zip(batch.column("image_id").to_pylist(), batch.column("png").to_pylist()):
                with Image.open(BytesIO(png)) as image:
                    yield image_id, np.asarray(image.convert("RGB"))

    def image_ids(self, split: str) -> list[str]:
        """Image ids in stored order, a seeded order: the first N are the "N images" of the data-size axis."""
        return [image_id for batch in self._batches(split, "images", columns=["image_id"])
                for image_id in batch.column("image_id").to_pylist()]

    def _batches(self, split: str, kind: str, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        for shard in self.manifest["splits"].get(layout.split_name(split), {}).get("shards", []):
            with pq.ParquetFile(self.path / shard[kind]) as parquet:
                yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _task(task: Task | str) -> Task:
    try:
        return Task(task)
    except ValueError:
        raise unknown_choice("task", str(task), [t.value for t in Task]) from None
