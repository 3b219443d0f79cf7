"""`uvlm data llava`: a tiny LLaVA-format file and images written here, imported into the Parquet layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.cli import main
from trainables.data.dataset import Dataset
from trainables.data.records import Task

CONVERSATIONS = [
    {"id": "qa-1", "image": "coco/a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the bus?"}, {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "How many wheels?"}, {"from": "gpt", "value": "Four."}]},
    {"id": "cap-1", "image": "coco/b.png", "conversations": [
        {"from": "human", "value": "Describe the image in detail.\n<image>"},
        {"from": "gpt", "value": "A red bus on a wet street."}]},
    {"id": "text-only", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    {"id": "qa-2", "image": "coco/a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nIs it raining?"}, {"from": "gpt", "value": "Yes."}]},
]


def write_llava(folder: Path, conversations=CONVERSATIONS) -> tuple[str, str]:
    """The JSON file and image folder (a JPEG and a PNG) of a tiny LLaVA-format set."""
    (folder / "images" / "coco").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 20, 20)).save(folder / "images" / "coco" / "a.jpg")
    Image.new("RGBA", (16, 16), (0, 0, 255, 255)).save(folder / "images" / "coco" / "b.png")
    (folder / "conv.json").write_text(json.dumps(conversations))
    return str(folder / "conv.json"), str(folder / "images")


def test_import_multi_turn_vqa_and_captions(tmp_path):
    conv, images = write_llava(tmp_path)
    out = tmp_path / "ds"
    assert main(["data", "llava", "--json", conv, "--test-json", conv, "--images", images, "--out", str(out),
                 "--detect-captions"]) == 0
    dataset = Dataset.open(out)
    assert dataset.manifest["kind"] == "llava" and dataset.manifest["splits"]["train"]["skipped_text_only"] == 1
    records = list(dataset.records("train"))
    assert [(r.record_id, r.task) for r in records] == [("qa-1", Task.VQA), ("cap-1", Task.CAPTION), ("qa-2", Task.VQA)]
    assert records[0].turns[0].question == "What colour is the bus?" and records[0].turns[1].answer == "Four."
    assert all(r.face is None and all(t.attribute is None for t in r.turns) for r in records)
    assert dataset.image_ids("train") == ["coco/a.jpg", "coco/b.png"]  # each image stored once
    shapes = {image_id: array.shape for image_id, array in dataset.images("test")}
    assert shapes == {"coco/a.jpg": (30, 40, 3), "coco/b.png": (16, 16, 3)}
    blue = dict(dataset.images("train"))["coco/b.png"]
    assert blue.dtype == np.uint8 and tuple(blue[0, 0]) == (0, 0, 255)


def test_captions_become_generation_records(tmp_path):
    conv, images = write_llava(tmp_path)
    out = tmp_path / "t2i"
    assert main(["data", "llava", "--json", conv, "--images", images, "--out", str(out), "--captions-to-generation"]) == 0
    generation = list(Dataset.open(out).records("train", tasks=[Task.GENERATION]))
    assert len(generation) == 1 and generation[0].image_id == "coco/b.png"
    assert generation[0].turns[0].question == "Generate an image: A red bus on a wet street."
    assert list(Dataset.open(out).records("test")) == []


def test_without_detection_everything_is_vqa(tmp_path):
    conv, images = write_llava(tmp_path)
    assert main(["data", "llava", "--json", conv, "--images", images, "--out", str(tmp_path / "ds")]) == 0
    assert {r.task for r in Dataset.open(tmp_path / "ds").records("train")} == {Task.VQA}


def test_missing_images_and_malformed_entries_are_named(tmp_path, capsys):
    conv, images = write_llava(tmp_path, CONVERSATIONS + [{"image": "coco/gone.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Nothing."}]}])
    assert main(["data", "llava", "--json", conv, "--images", images, "--out", str(tmp_path / "ds")]) == 2
    error = capsys.readouterr().err
    assert "1 image(s) missing" in error and "coco/gone.jpg" in error
    assert not (tmp_path / "ds").exists()
    conv, images = write_llava(tmp_path, [{"image": "coco/a.jpg", "conversations": [{"from": "gpt", "value": "Hi"}]}])
    assert main(["data", "llava", "--json", conv, "--images", images, "--out", str(tmp_path / "ds")]) == 2
    assert "entry 0" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.json", "images"]


def test_rerun_is_a_no_op(tmp_path, capsys):
    conv, images = write_llava(tmp_path)
    args = ["data", "llava", "--json", conv, "--images", images, "--out", str(tmp_path / "ds")]
    assert main(args) == 0 and main(args) == 0
    assert "already there, nothing to do" in capsys.readouterr().err
    assert main(args + ["--detect-captions"]) == 2
    assert "detect_captions: False there, True wanted" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["{not json", "{}"])
def test_not_a_list_of_conversations(tmp_path, capsys, bad):
    conv, images = write_llava(tmp_path)
    Path(conv).write_text(bad)
    assert main(["data", "llava", "--json", conv, "--images", images, "--out", str(tmp_path / "ds")]) == 2
    assert "conv.json" in capsys.readouterr().err


@pytest.mark.parametrize("escape", ["dotdot", "absolute", "symlink", "etc-passwd"])
def test_an_image_path_outside_the_image_folder_is_refused(tmp_path, capsys, escape):
    """A conversation file from the internet must not pull a file of this machine into a dataset that is then shared."""
    secret = tmp_path / "private" / "secret.png"  # an image, so only the folder check can stop it
    secret.parent.mkdir()
    Image.new("RGB", (8, 8)).save(secret)
    images = tmp_path / "images"
    images.mkdir()
    (images / "link.png").symlink_to(secret)
    image = {"dotdot": "../private/secret.png", "absolute": str(secret), "symlink": "link.png",
             "etc-passwd": "../../../../../../../../etc/passwd"}[escape]
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps([{"id": "x", "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A secret."}]}]))
    assert main(["data", "llava", "--json", str(conv), "--images", str(images), "--out", str(tmp_path / "ds")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "image path(s) lead outside the image folder" in lines[0] and repr(image) in lines[0]
    assert not (tmp_path / "ds").exists()
