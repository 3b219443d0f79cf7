"""The on-disk dataset layout: Parquet schemas, record <-> row conversion, manifest, atomic publishing.

A dataset folder holds `manifest.json` and, per split, shards in pairs:

    manifest.json
    train/images-00000.parquet    image_id, index, png (PNG bytes), width, height, face
    train/records-00000.parquet   record_id, image_id, split, task, turns, mentioned, face
    test/...

Images are stored once; records reference them by `image_id`. The manifest
lists every file with its size, row count and SHA-256, and a content hash
over all of them. It has no timestamp, so equal options give equal bytes.
A dataset is built in a temporary folder beside its target and renamed into
place only when complete, so a failed or interrupted run leaves nothing
half-written, and an existing folder is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainables.data.records import SPLITS, Record, Task, Turn, WatchFace
from trainables.errors import UserError, unknown_choice

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

FACE_TYPE = pa.struct([
    ("hour", pa.int8()), ("minute", pa.int8()), ("second", pa.int8()), ("battery", pa.int8()),
    ("weather", pa.string()), ("weather_corner", pa.string()), ("battery_corner", pa.string()),
])
TURN_TYPE = pa.struct([("question", pa.string()), ("answer", pa.string()), ("attribute", pa.string())])

IMAGE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("index", pa.int64()), ("png", pa.binary()),
    ("width", pa.int32()), ("height", pa.int32()), ("face", FACE_TYPE),
])
RECORD_SCHEMA = pa.schema([
    ("record_id", pa.string()), ("image_id", pa.string()), ("split", pa.string()), ("task", pa.string()),
    ("turns", pa.list_(TURN_TYPE)), ("mentioned", pa.list_(pa.string())), ("face", FACE_TYPE),
])
SCHEMAS = {"images": IMAGE_SCHEMA, "records": RECORD_SCHEMA}


def face_row(face: WatchFace | None) -> dict[str, Any] | None:
    return None if face is None else face.__dict__.copy()


def record_row(record: Record) -> dict[str, Any]:
    return {
        "record_id": record.record_id, "image_id": record.image_id, "split": record.split,
        "task": record.task.value, "turns": [turn.__dict__.copy() for turn in record.turns],
        "mentioned": list(record.mentioned), "face": face_row(record.face),
    }


def row_record(row: dict[str, Any]) -> Record:
    face = row["face"]
    return Record(
        record_id=row["record_id"], image_id=row["image_id"], split=row["split"], task=Task(row["task"]),
        turns=tuple(Turn(**turn) for turn in row["turns"]), mentioned=tuple(row["mentioned"]),
        face=None if face is None else WatchFace(**face),
    )


def shard_paths(split: str, shard: int) -> dict[str, str]:
    """Paths, relative to the dataset folder, of the images and records files of one shard."""
    return {kind: f"{split}/{kind}-{shard:05d}.parquet" for kind in SCHEMAS}


def write_shard(folder: Path, split: str, shard: int, images: list[dict], records: list[dict]) -> None:
    """Write one shard pair; the bytes depend only on the rows (no timestamps in Parquet)."""
    paths = shard_paths(split, shard)
    (folder / split).mkdir(parents=True, exist_ok=True)
    for kind, rows in (("images", images), ("records", records)):
        table = pa.Table.from_pylist(rows, schema=SCHEMAS[kind])
        # PNG bytes do not compress further; the records compress well.
        pq.write_table(table, folder / paths[kind], compression="none" if kind == "images" else "zstd")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(folder: Path, relative_paths: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Size, row count and SHA-256 of each file, for the manifest."""
    files = {}
    for relative in relative_paths:
        with pq.ParquetFile(folder / relative) as parquet:
            rows = parquet.metadata.num_rows
        files[relative] = {"bytes": (folder / relative).stat().st_size, "rows": rows, "sha256": file_digest(folder / relative)}
    return files


def content_hash(files: dict[str, dict[str, Any]]) -> str:
    lines = "".join(f"{path} {files[path]['sha256']}\n" for path in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def finish_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the file table and content hash to a manifest whose splits list their shards, and write it."""
    relative = [path for split in manifest["splits"].values() for shard in split["shards"] for path in shard.values()]
    files = describe_files(folder, relative)
    manifest = {"schema_version": SCHEMA_VERSION, **manifest, "files": files, "content_hash": content_hash(files)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_json(path: Path) -> Any:
    """Parsed JSON; UserError (not a traceback) when the file is not JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{str(path)!r} is not valid JSON: {error}") from None


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a dataset folder, checked for shape; UserError when missing or foreign."""
    path = folder / MANIFEST
    if not folder.is_dir():
        what = "is a file, not a dataset folder" if folder.exists() else "does not exist"
        raise UserError(f"dataset folder {str(folder)!r} {what}")
    if not path.is_file():
        raise UserError(f"{str(folder)!r} is not a uvlm dataset: it has no {MANIFEST}")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise UserError(f"{str(path)!r}: unsupported dataset schema version {version!r} (expected {SCHEMA_VERSION})")
    for key in ("kind", "generator", "splits", "files", "content_hash"):
        if key not in manifest:
            raise UserError(f"{str(path)!r} lacks the key {key!r}; the dataset is damaged, generate it again")
    return manifest


def check_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Cheap checks of every shard: present, the recorded size, a readable footer, our schema, the row count."""
    for relative, expected in manifest["files"].items():
        path = folder / relative
        kind = Path(relative).name.split("-")[0]
        if not path.is_file():
            raise UserError(f"dataset {str(folder)!r}: shard {relative} is missing")
        if path.stat().st_size != expected["bytes"]:
            raise UserError(f"dataset {str(folder)!r}: shard {relative} has {path.stat().st_size} bytes, "
                            f"the manifest says {expected['bytes']} (truncated or replaced)")
        try:
            with pq.ParquetFile(path) as parquet:
                schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"dataset {str(folder)!r}: shard {relative} is not readable Parquet ({error})") from None
        if kind not in SCHEMAS or not schema.equals(SCHEMAS[kind]):
            raise UserError(f"dataset {str(folder)!r}: shard {relative} is a foreign Parquet file (unexpected columns)")
        if rows != expected["rows"]:
            raise UserError(f"dataset {str(folder)!r}: shard {relative} has {rows} rows, the manifest says {expected['rows']}")


def verify_hashes(folder: Path, manifest: dict[str, Any]) -> None:
    """Full check: every shard's SHA-256 matches the manifest (reads all bytes)."""
    for relative, expected in manifest["files"].items():
        if file_digest(folder / relative) != expected["sha256"]:
            raise UserError(f"dataset {str(folder)!r}: shard {relative} does not match its SHA-256 in the manifest")


def differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Each differing option as 'image_size: 224 there, 64 wanted'; empty when equal."""
    return [f"{key}: {have.get(key)!r} there, {want.get(key)!r} wanted"
            for key in sorted(set(have) | set(want)) if have.get(key) != want.get(key)]


def publish(out: Path, kind: str, generator: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> bool:
    """Build a dataset with `build(temp_folder) -> manifest` and rename it to `out`.

    Returns False, writing nothing, when `out` already holds a dataset made with
    the same generator options (verified by hash). Raises UserError when `out`
    holds anything else. The temporary folder is ours and is removed on failure.
    """
    if out.exists():
        check_reusable(out, generator)
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its folders are private (0700), and this one becomes the dataset.
    temp = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.partial"
    temp.mkdir()
    try:
        manifest = build(temp)
        finish_manifest(temp, {"kind": kind, "generator": generator, **manifest})
        try:
            os.rename(temp, out)
        except OSError:
            if not out.exists():
                raise
            # Another process (a parallel trial) published the same folder first: use theirs if it matches.
            check_reusable(out, generator)
            shutil.rmtree(temp)
            return False
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return True


def check_reusable(out: Path, generator: dict[str, Any]) -> None:
    """UserError unless `out` is an intact dataset made with exactly these generator options."""
    try:
        manifest = read_manifest(out)
    except UserError:
        raise UserError(f"output folder {str(out)!r} already exists and is not a uvlm dataset; "
                        "choose another output folder") from None
    differing = differences(manifest["generator"], generator)
    if differing:
        raise UserError(f"output folder {str(out)!r} already holds a different dataset ({'; '.join(differing)}); "
                        "choose another output folder")
    check_files(out, manifest)
    verify_hashes(out, manifest)


def split_name(split: str) -> str:
    if split not in SPLITS:
        raise unknown_choice("split", split, SPLITS)
    return split


def progress(total: int, description: str, enabled: bool = True, unit: str = "img"):
    """A tqdm bar on stderr (a silent one when not `enabled`)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=not enabled)
