"""The smart-watch dataset: records, rendering, layout, determinism, hide options, bad input, the CLI."""

from __future__ import annotations

import collections
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from search.cli import main
from trainables.config import DataConfig
from trainables.data.dataset import Dataset
from trainables.data.prepare import ensure_dataset
from trainables.data.records import ATTRIBUTES, WEATHERS, HideRule, Task, WatchFace
from trainables.data.render import BATTERY_FILL, render_watch
from trainables.data.smartwatch import QUESTIONS, SmartwatchOptions, describe, generate_smartwatch, sample_image, vqa_turns
from trainables.errors import UserError

TINY = dict(train_images=24, test_images=8, shard_images=10)


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "sw"
    assert generate_smartwatch(SmartwatchOptions(**TINY), out, workers=1, show_progress=False)
    return out


# --- records and answers -------------------------------------------------------------------------

def test_canonical_answers():
    face = WatchFace(3, 7, 59, 7, "raining", "top-left", "bottom-right")
    assert [face.answer(a) for a in ATTRIBUTES] == ["03:07:59", "raining", "7%", "top-left", "bottom-right"]
    assert WatchFace(11, 0, 0, 100, "sunny", "top-right", "top-left").answer("battery") == "100%"


def test_about_ten_paraphrases_per_attribute():
    assert set(QUESTIONS) == set(ATTRIBUTES)
    assert all(len(set(templates)) == 10 for templates in QUESTIONS.values())


def test_sampling_follows_the_study():
    """what p=3/5, where p=2/5; 1 + up to 3 extra turns each p=0.4; caption clauses p=0.5 each."""
    asked, lengths, mentions = collections.Counter(), collections.Counter(), collections.Counter()
    n = 3000
    for index in range(n):
        face, _, rng = sample_image(0, "train", index)
        turns = vqa_turns(face, rng)
        lengths[len(turns)] += 1
        asked.update(turn.attribute for turn in turns)
        assert all(turn.answer == face.answer(turn.attribute) for turn in turns)
        caption, mentioned = describe(face, rng)
        mentions.update(mentioned)
        assert all(face.answer(attribute) in caption for attribute in mentioned)
        assert face.weather_corner != face.battery_corner and 0 <= face.hour <= 11
    total = sum(asked.values())
    assert abs((asked["time"] + asked["weather"] + asked["battery"]) / total - 0.6) < 0.03
    assert set(lengths) == {1, 2, 3, 4} and abs(lengths[1] / n - 0.6) < 0.03
    assert mentions["time"] == n and all(abs(mentions[a] / n - 0.5) < 0.04 for a in ATTRIBUTES[1:])


def test_the_scorers_give_true_answers_and_captions_full_marks():
    from trainables.scoring import score_caption, score_vqa_answer

    for index in range(300):
        face, _, rng = sample_image(0, "test", index)
        assert all(score_vqa_answer(t.attribute, t.answer, face) == 1.0 for t in vqa_turns(face, rng))
        caption, mentioned = describe(face, rng)
        assert score_caption(caption, face, mentioned) == 1.0


def test_hide_rule_parsing():
    assert HideRule.parse("weather=raining").matches(WatchFace(1, 2, 3, 4, "raining", "top-left", "top-right"))
    assert str(HideRule.parse("battery=42")) == "battery=42%"
    for bad, named in (("wether=raining", "did you mean 'weather'"), ("weather=rainy", "did you mean 'raining'"),
                       ("weather_corner=top", "valid: bottom-left"), ("battery=101", "0-100"),
                       ("time=12:00:00", "hh:mm:ss"), ("weather", "ATTR=VALUE")):
        with pytest.raises(UserError, match=named):
            HideRule.parse(bad)


# --- rendering -----------------------------------------------------------------------------------

def test_render_sizes_and_battery_bar_at_64px():
    """The fill bar grows with the level and is wide enough to read at 64 px; icons differ by weather."""
    greens = []
    for battery in (0, 50, 100):
        image = np.asarray(render_watch(WatchFace(3, 7, 59, battery, "sunny", "top-left", "bottom-right"), (30, 30, 120), 64))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        greens.append(int((np.abs(image.astype(int) - BATTERY_FILL).sum(axis=2) < 60).sum()))
    assert greens[0] == 0 and greens[2] > 1.8 * greens[1] > 40
    corners = [np.asarray(render_watch(WatchFace(0, 0, 0, 50, w, "top-left", "bottom-right"), (30, 30, 120), 64))[:13, :13]
               for w in WEATHERS]
    assert all(not np.array_equal(a, b) for i, a in enumerate(corners) for b in corners[i + 1:])
    assert np.asarray(render_watch(WatchFace(0, 0, 0, 50, "sunny", "top-left", "bottom-right"), (0, 0, 0), 224)).shape == (224, 224, 3)


# --- the dataset folder --------------------------------------------------------------------------

def test_three_records_per_image_and_manifest(tiny):
    dataset = Dataset.open(tiny)
    manifest = dataset.manifest
    assert manifest["seed"] == 0 and manifest["generator"]["image_size"] == 64
    assert manifest["splits"]["train"]["records"] == {"vqa": 24, "caption": 24, "generation": 24}
    assert len(manifest["splits"]["train"]["shards"]) == 3 and len(manifest["content_hash"]) == 64
    records = list(dataset.records("train"))
    assert [r.task for r in records[:3]] == [Task.VQA, Task.CAPTION, Task.GENERATION]
    for record in records:
        assert record.face is not None and record.split == "train"
        if record.task == Task.VQA:
            assert 1 <= len(record.turns) <= 4 and not record.mentioned
            assert all(t.attribute in ATTRIBUTES and t.answer == record.face.answer(t.attribute) for t in record.turns)
        else:
            assert len(record.turns) == 1 and record.turns[0].attribute is None and record.mentioned[0] == "time"
            stated = record.turns[0].answer if record.task == Task.CAPTION else record.turns[0].question
            assert all(record.face.answer(a) in stated for a in record.mentioned)
    assert [r.task for r in dataset.records("test", tasks=["generation"])] == [Task.GENERATION] * 8


def test_images_streamed_in_stored_order_and_splits_disjoint(tiny):
    dataset = Dataset.open(tiny)
    ids = dataset.image_ids("train")
    assert ids == [f"train-{i:06d}" for i in range(24)]
    images = list(dataset.images("train"))
    assert [i for i, _ in images] == ids and images[0][1].shape == (64, 64, 3) and images[0][1].dtype == np.uint8
    pngs = {split: {row["png"] for row in pq.read_table(tiny / split / "images-00000.parquet").to_pylist()}
            for split in ("train", "test")}
    assert not pngs["train"] & pngs["test"] and not set(ids) & set(dataset.image_ids("test"))
    with pytest.raises(UserError, match="split"):
        dataset.image_ids("validation")


def test_byte_identical_whatever_the_workers(tiny, tmp_path):
    generate_smartwatch(SmartwatchOptions(**TINY), tmp_path / "two", workers=2, show_progress=False)
    assert tree_digest(tmp_path / "two") == tree_digest(tiny)
    generate_smartwatch(SmartwatchOptions(**TINY, seed=1), tmp_path / "seed1", workers=1, show_progress=False)
    assert Dataset.open(tmp_path / "seed1").manifest["content_hash"] != Dataset.open(tiny).manifest["content_hash"]


def test_byte_identical_with_spawned_workers(tiny, tmp_path, monkeypatch):
    """Inside a trainer (torch loaded) workers are spawned, not forked: same bytes."""
    from multiprocessing import get_context

    from trainables.data import smartwatch

    monkeypatch.setattr(smartwatch, "pool_context", lambda: get_context("spawn"))
    generate_smartwatch(SmartwatchOptions(**TINY), tmp_path / "spawned", workers=2, show_progress=False)
    assert tree_digest(tmp_path / "spawned") == tree_digest(tiny)


def test_hide_from_understanding_and_control(tiny, tmp_path):
    rule = "weather=raining"
    for control in (False, True):
        out = tmp_path / f"hide-{control}"
        generate_smartwatch(SmartwatchOptions(**TINY, hide_from_understanding=(rule,), hide_control=control), out,
                            workers=1, show_progress=False)
        dataset = Dataset.open(out)
        assert dataset.manifest["generator"]["hide_from_understanding"] == [rule]
        assert dataset.manifest["generator"]["hide_control"] is control
        assert tree_digest(out / "train").keys() == tree_digest(tiny / "train").keys()
        full = {r.record_id: r for r in Dataset.open(tiny).records("train")}
        kept = list(dataset.records("train"))
        hidden = [r for r in full.values() if r.face.weather == "raining"]
        assert hidden, "the tiny set must contain raining images"
        for record in hidden:
            present = record.record_id in {r.record_id for r in kept}
            assert present == (record.task == Task.GENERATION and not control)
        assert all(full[r.record_id] == r for r in kept)  # the other records are unchanged
        assert dataset.image_ids("train") == Dataset.open(tiny).image_ids("train")
        assert list(dataset.records("test")) == list(Dataset.open(tiny).records("test"))


def test_bad_sizes_and_options():
    for bad in (dict(train_images=0), dict(test_images=-1), dict(image_size=8), dict(hide_control=True)):
        with pytest.raises(UserError):
            SmartwatchOptions(**bad)


def test_damaged_shards_are_named(tiny, tmp_path):
    out = tmp_path / "copy"
    generate_smartwatch(SmartwatchOptions(**TINY), out, workers=1, show_progress=False)
    shard = out / "train" / "records-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(UserError, match="records-00001.parquet .*truncated"):
        Dataset.open(out)
    pq.write_table(pa.table({"x": [1, 2, 3]}), shard)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["train/records-00001.parquet"]["bytes"] = shard.stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="foreign Parquet"):
        Dataset.open(out)
    with pytest.raises(UserError, match="no manifest.json"):
        Dataset.open(out / "train")


# --- the command line ----------------------------------------------------------------------------

def test_cli_generates_reruns_and_refuses_other_datasets(tmp_path, capsys):
    out = str(tmp_path / "sw")
    args = ["data", "smartwatch", "--train-images", "12", "--test-images", "4", "--out", out, "--workers", "1"]
    assert main(args) == 0
    before = tree_digest(Path(out))
    assert main(args) == 0
    assert "already there, nothing to do" in capsys.readouterr().err
    assert main(args[:3] + ["13"] + args[4:]) == 2
    assert "already holds a different dataset (train_images: 12 there, 13 wanted)" in capsys.readouterr().err
    assert tree_digest(Path(out)) == before
    assert main(["data", "info", out, "--verify"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sw"]  # no temporary folder left behind


def test_cli_never_touches_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["data", "smartwatch", "--train-images", "5", "--out", str(tmp_path / "mine")]) == 2
    assert "is not a uvlm dataset" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    for extra, message in ((["--hide-from-understanding", "weather=rainy"], "did you mean 'raining'"),
                           (["--test-images", "0"], "--test-images must be between 1 and 1000000 (got 0)")):
        result = subprocess.run([sys.executable, "-m", "search.cli", "data", "smartwatch", "--out", str(tmp_path / "x"),
                                 *extra], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


# --- ensure_dataset ------------------------------------------------------------------------------

def test_ensure_dataset_generates_then_checks(tmp_path, capsys):
    config = DataConfig(path=str(tmp_path / "sw"), generate_train_images=6, generate_test_images=3)
    assert ensure_dataset(config) == tmp_path / "sw"
    assert "generating the smart-watch dataset" in capsys.readouterr().err
    before = tree_digest(tmp_path / "sw")
    assert ensure_dataset(config) == tmp_path / "sw" and tree_digest(tmp_path / "sw") == before
    with pytest.raises(UserError, match=r"data.generate_image_size: 64 there, 96 wanted.*different data.path"):
        ensure_dataset(config.model_copy(update={"generate_image_size": 96}))
    with pytest.raises(UserError, match="data.hide_from_understanding"):
        ensure_dataset(DataConfig(**{**config.model_dump(), "hide_from_understanding": ["weather=sunny"]}))
    with pytest.raises(UserError, match="only 6 training images"):
        ensure_dataset(config.model_copy(update={"train_images": 7}))


def test_losing_a_publish_race_reuses_the_winner(tmp_path, monkeypatch):
    """Two trials find the folder missing and both build; the one that renames second uses the first's."""
    from trainables.data import layout

    options, out = SmartwatchOptions(train_images=6, test_images=2), tmp_path / "sw"
    finish = layout.finish_manifest

    def other_trial_wins_meanwhile(folder, manifest):
        monkeypatch.setattr(layout, "finish_manifest", finish)
        assert generate_smartwatch(options, out, workers=1, show_progress=False)
        return finish(folder, manifest)

    monkeypatch.setattr(layout, "finish_manifest", other_trial_wins_meanwhile)
    assert not generate_smartwatch(options, out, workers=1, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sw"]
    Dataset.open(out).verify()


def test_benchmark_smoke():
    script = Path(__file__).parents[1] / "benchmarks" / "data_generation.py"
    result = subprocess.run([sys.executable, str(script), "--images", "20", "--sizes", "64", "--workers", "1",
                             "--repeats", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout and " 64px " in result.stdout
