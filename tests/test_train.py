"""The training recipe and `uvlm train` on a tiny generated dataset: files, metric names, arms, budget, NaN, determinism."""

from __future__ import annotations

import json

import pytest
import torch

from search.cli import main
from trainables.budget import total_steps
from trainables.config import load_config
from trainables.data.prepare import ensure_dataset, planned_records
from trainables.data.records import ATTRIBUTES, Task
from trainables.launch import loop_config
from trainables.mlflow_names import TRAIN_TAGS
from trainables.rundata import Order, RunData, length_groups
from trainables.tokenizer import WordTokenizer
from trainables.train import NonFiniteLoss, run_local

torch.set_num_threads(1)

SMALL = {"data.generate_train_images": 48, "data.generate_test_images": 12, "data.test_images": 12,
         "optim.batch_size": 16, "eval.every_steps": 15, "eval.max_eval_records": 8, "eval.grid_images": 4}


def small(data_path, **overrides):
    return load_config(None, {**SMALL, "data.path": str(data_path), "runtime.cache_dir": str(data_path.parent / "cache"), **overrides})


def test_uvlm_train_writes_metrics_grid_and_mlflow_run(data_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UVLM_WORKDIR", str(tmp_path / "work"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    sets = [f"{k}={v}" for k, v in {**SMALL, "data.path": data_path, "budget.value": 30}.items()]
    code = main(["train", "--no-ray", "--out", str(out), "--name", "e2e", *[a for s in sets for a in ("--set", s)]])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for attribute in (*ATTRIBUTES, "overall"):
        assert f"test/vqa/{attribute}" in metrics and f"baseline/vqa/{attribute}" in metrics
    for name in ("test/caption/score", "baseline/caption/score", "test/gen/cosine", "test/gen/probe/overall",
                 "probe/true/overall", "train/loss", "train/samples", "time/train_seconds", "time/step_seconds",
                 "test/gen/frechet", "baseline/gen/probe/overall", *(f"baseline/gen/probe/{a}" for a in ATTRIBUTES),
                 "test/gen/icon/overall", "baseline/gen/icon/overall", "test/gen/icon_forced/overall"):
        assert name in metrics, name
    assert metrics["test/gen/frechet"] >= 0 and 0 <= metrics["baseline/gen/probe/overall"] <= 1
    assert metrics["step"] == 30 and metrics["train/samples"] == 30 * 16
    assert (out / "generated.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    assert "baseline" in capsys.readouterr().out

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("uvlm-train").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "e2e"
    assert {key for key in run.data.tags if key.startswith("uvlm.")} == TRAIN_TAGS
    assert run.data.params["generation.space"] == "vq" and run.data.params["budget.value"] == "30.0"
    assert run.data.metrics["test/vqa/overall"] == pytest.approx(metrics["test/vqa/overall"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "test/vqa/overall")]
    assert steps == [15, 30]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/gen/icon/overall")] == [15, 30]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/gen/icon_forced/overall")] == [30]  # final only
    curve = client.get_metric_history(run.info.run_id, "train/loss")  # a point every eval.log_every_steps (10)
    assert [m.step for m in curve] == [10, 20, 30] and all(m.value > 0 for m in curve)
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "generated.png", "config.yaml"} <= artifacts


def untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def test_arms_meet_their_shared_records_in_the_same_order():
    """Common random numbers: understanding-only (12 records) and mixed (the same 12 + 6 generation ones),
    and generation-only and mixed, see the records they share in the same order, epoch after epoch."""
    understanding_only, generation_only = Order([False] * 12, seed=5), Order([True] * 6, seed=5)
    mixed = Order([False] * 12 + [True] * 6, seed=5)
    stream = mixed.batch(0, 18 * 3)
    assert [i for i in stream if i < 12] == understanding_only.batch(0, 12 * 3)
    assert [i - 12 for i in stream if i >= 12] == generation_only.batch(0, 6 * 3)
    first_batch = mixed.batch(0, 6)
    assert sum(i >= 12 for i in first_batch) == 2, "generation records are spread evenly over the epoch"
    assert Order([False] * 12, seed=6).batch(0, 12) != understanding_only.batch(0, 12)


def test_same_config_same_metrics_whatever_ran_before_in_the_process(data_path, tmp_path):
    """Sweep trials reuse their process (Tune actor reuse): a run must not depend on what ran there before."""
    config = small(data_path, **{"budget.value": 8, "eval.every_steps": 100, "generation.space": "vq", "generation.loss": "ce"})
    other = small(data_path, **{"budget.value": 5, "eval.every_steps": 100, "seed": 3, "data.arm": "understanding"})
    first = run_local(loop_config(config, tmp_path / "a", None))
    run_local(loop_config(other, tmp_path / "other", None))
    second = run_local(loop_config(config, tmp_path / "b", None))
    assert untimed(first) == untimed(second)
    assert "test/gen/token_accuracy" in first


def test_every_seed_shares_one_codebook_probe_and_generation_baseline(data_path, tmp_path):
    runs = [run_local(loop_config(small(data_path, **{"budget.value": 1, "eval.every_steps": 100, "seed": seed}),
                                  tmp_path / str(seed), None)) for seed in (0, 1)]
    shared = [k for k in runs[0] if k.startswith(("probe/true/", "baseline/gen/probe/"))]
    assert "probe/true/overall" in shared and "baseline/gen/probe/overall" in shared
    assert all(runs[0][k] == runs[1][k] for k in shared)
    assert runs[0]["train/loss"] != runs[1]["train/loss"]  # the seed still moves the model


def test_length_groups_take_the_step_of_one_padded_batch(data_path, tmp_path):
    runs = {k: run_local(loop_config(small(data_path, **{"budget.value": 6, "eval.every_steps": 100, "runtime.length_groups": k}),
                                     tmp_path / str(k), None)) for k in (1, 3)}
    for key in ("train/loss", "train/text_loss", "train/image_loss", "test/gen/cosine"):
        assert runs[3][key] == pytest.approx(runs[1][key], rel=1e-4, abs=1e-6), key
    data = RunData(small(data_path), data_path)
    examples = data.examples(WordTokenizer.build(data.texts), 4, 4, 256)[:7]
    groups = length_groups(examples, 3)
    assert [len(g) for g in groups] == [2, 3, 2] and sorted(map(id, sum(groups, []))) == sorted(map(id, examples))
    assert max(len(e.ids) for e in groups[0]) <= min(len(e.ids) for e in groups[1])
    assert [len(g) for g in length_groups(examples[:2], 4)] == [1, 1]  # never an empty group


def test_nan_loss_stops_the_run_and_names_the_step(data_path, tmp_path):
    config = small(data_path, **{"budget.value": 20, "optim.warmup_ratio": 0})
    config = config.model_copy(update={"optim": config.optim.model_copy(update={"lr": 1e30})})  # past the lr bound: a diverging run
    with pytest.raises(NonFiniteLoss, match="at step"):
        run_local(loop_config(config, tmp_path, None))


def test_arms_share_understanding_records_and_budgets_are_explicit(data_path):
    und = RunData(small(data_path, **{"data.arm": "understanding", "data.train_images": 20}), data_path)
    mixed = RunData(small(data_path, **{"data.arm": "mixed", "data.train_images": 20, "data.generation_ratio": 2.0}), data_path)
    gen = RunData(small(data_path, **{"data.arm": "generation", "data.train_images": 20}), data_path)
    for task in (Task.VQA, Task.CAPTION):
        assert [r.record_id for r in und.train.records[task]] == [r.record_id for r in mixed.train.records[task]]
        assert len(und.train.records[task]) == 20 and not gen.train.records[task]
    assert not und.train.records[Task.GENERATION]
    assert len(mixed.train.records[Task.GENERATION]) == 40 and len(gen.train.records[Task.GENERATION]) == 20
    assert und.vqa_reference == gen.vqa_reference  # the constant baseline is the same in every arm
    config = small(data_path, **{"budget.unit": "epochs", "budget.value": 2})
    assert total_steps(config, 100) == 13  # ceil(2 * 100 / 16)
    assert total_steps(small(data_path, **{"budget.unit": "samples", "budget.value": 160}), 999) == 10
    order = Order([False] * 6 + [True] * 4, seed=3)
    assert sorted(order.batch(0, 10)) == list(range(10)) and order.batch(1, 4) == Order([False] * 6 + [True] * 4, seed=3).batch(1, 4)


def test_bad_inputs_are_user_errors(data_path, tmp_path, capsys):
    assert main(["train", "--no-ray", "--set", "understanding.encoder=sigclip"]) == 2
    assert "siglip" in capsys.readouterr().err
    assert main(["train", "--no-ray", "--set", f"data.path={data_path}", "--set", "data.train_images=100000",
                 "--set", "data.generate_train_images=48", "--set", "data.generate_test_images=12", "--out", str(tmp_path)]) == 2
    assert "training images" in capsys.readouterr().err


def test_resume_from_a_checkpoint_continues_exactly(data_path, tmp_path):
    from trainables.train import CHECKPOINT_FILE, LocalSession, Recipe

    class Keeping(LocalSession):
        """Keeps every reported checkpoint; resumes from `start` when given."""

        def __init__(self, out_dir, start=None):
            super().__init__(out_dir)
            self.kept_steps, self.start = {}, start

        def report(self, metrics, checkpoint_dir):
            if checkpoint_dir is not None:
                keep = tmp_path / f"ckpt-{id(self)}-{metrics['step']}"
                keep.mkdir()
                (keep / CHECKPOINT_FILE).write_bytes((checkpoint_dir / CHECKPOINT_FILE).read_bytes())
                self.kept_steps[metrics["step"]] = keep

        def checkpoint(self):
            return self.start

    config = loop_config(small(data_path, **{"budget.value": 16, "eval.every_steps": 8}), tmp_path / "a", None)
    first = Keeping(tmp_path / "a")
    whole = Recipe(config, first).run()
    resumed = Recipe({**config, "out_dir": str(tmp_path / "b")}, Keeping(tmp_path / "b", first.kept_steps[8])).run()
    assert resumed.pop("train/resumed_from_step") == 8 and "train/resumed_from_step" not in whole
    assert untimed(resumed) == untimed(whole)


# Recorded in-process on one thread (re-recorded when the default generation became 512 k-means codes with
# cross-entropy at alpha 1.0 and cell embeddings, when image tokens entered the LM at the scale of words,
# generation.input_scale, when projectors took half the LM's learning rate, and when the default alpha became
# 2.0; at alpha 1.0: loss 1.8594, VQA 0.408, cosine 0.7162, Fréchet 3.7309); a silent change in the data, the
# model, the loss or the scorers moves these.
PINNED_300 = {"train/loss": 3.1551, "test/vqa/overall": 0.3513, "test/gen/cosine": 0.7344, "test/gen/frechet": 4.303}
"""Recorded with the VQ default and the common-random-numbers record order (trainables.rundata.Order)."""


@pytest.mark.slow
def test_300_step_run_keeps_its_recorded_metrics(data_path, tmp_path):
    metrics = run_local(loop_config(small(data_path, **{"budget.value": 300, "eval.every_steps": 1000}), tmp_path, None))
    assert metrics["train/loss"] == pytest.approx(PINNED_300["train/loss"], rel=0.02)
    assert metrics["test/vqa/overall"] == pytest.approx(PINNED_300["test/vqa/overall"], abs=0.03)
    assert metrics["test/gen/cosine"] == pytest.approx(PINNED_300["test/gen/cosine"], abs=0.02)
    assert metrics["test/gen/frechet"] == pytest.approx(PINNED_300["test/gen/frechet"], rel=0.05)


def test_hidden_attribute_runs_report_vqa_on_hidden_test_images(tmp_path):
    from trainables.data.records import is_hidden

    hide = {"data.hide_from_understanding": ["weather=raining"]}
    config = load_config(None, {**SMALL, "data.path": str(tmp_path / "hidden"), "budget.value": 4, **hide})
    ensure_dataset(config.data)
    data = RunData(config, config.data.path)
    assert data.hide_rules and not any(is_hidden(r.face, data.hide_rules) for r in data.train.records[Task.VQA])
    assert any(is_hidden(r.face, data.hide_rules) for r in data.train.records[Task.GENERATION])
    metrics = run_local(loop_config(config, tmp_path / "run", None))
    assert "test/vqa_hidden/overall" in metrics and "test/vqa_hidden/weather" in metrics


def test_planned_records_are_the_records_a_run_trains_on(tmp_path):
    """A sweep orders its trials by their planned steps, counted before the data exist."""
    hide = {"data.hide_from_understanding": ["weather=raining"]}
    for name, options in (("plain", {}), ("hidden", hide), ("control", {**hide, "data.hide_control": True})):
        config = load_config(None, {**SMALL, "data.path": str(tmp_path / name), **options})
        ensure_dataset(config.data)
        for arm, size, ratio in (("understanding", 30, 1.0), ("generation", 48, 0.5), ("mixed", 20, 2.0)):
            run = config.with_overrides({"data.arm": arm, "data.train_images": size, "data.generation_ratio": ratio})
            records = sum(len(records) for records in RunData(run, run.data.path).train.records.values())
            assert planned_records(run.data) == records, (name, arm)


def test_decoded_images_are_kept_per_content_so_a_regenerated_dataset_is_read_anew(tmp_path):
    """Sweep trials reuse their process and the decoded dataset with it: keyed by content, never by path alone."""
    import shutil

    path = tmp_path / "data"
    first = small(path, **{"data.generate_image_size": 32})
    ensure_dataset(first.data)
    before = RunData(first, path).test.images.clone()
    assert torch.equal(RunData(first, path).test.images, before), "the kept copy gives the same images"
    shutil.rmtree(path)
    second = small(path, **{"data.generate_image_size": 40})
    ensure_dataset(second.data)
    assert not torch.equal(RunData(second, path).test.images, before)


def test_the_word_tokenizer_is_kept_per_dataset_content(tmp_path):
    import shutil

    path = tmp_path / "data"
    first = small(path)
    ensure_dataset(first.data)
    kept = RunData(first, path).word_tokenizer()
    assert RunData(first.with_overrides({"data.arm": "generation", "seed": 4}), path).word_tokenizer() is kept
    text = "It is 03:07, 42%."
    ids = kept.encode(text)
    ids.append(-1)  # a caller's list is its own
    assert kept.encode(text) == WordTokenizer.build(RunData(first, path).texts).encode(text) == ids[:-1]
    shutil.rmtree(path)
    second = small(path, **{"data.generate_train_images": 60})
    ensure_dataset(second.data)
    fresh = RunData(second, path)
    assert fresh.word_tokenizer() is not kept and fresh.word_tokenizer().itos == WordTokenizer.build(fresh.texts).itos


def test_evaluations_along_the_run_score_only_eval_along_and_the_last_scores_every_task(data_path, tmp_path):
    from trainables.train import LocalSession, Recipe

    class Recording(LocalSession):
        def __init__(self, out_dir):
            super().__init__(out_dir)
            self.reports = []

        def report(self, metrics, checkpoint_dir):
            self.reports.append(dict(metrics))
            super().report(metrics, checkpoint_dir)

    config = small(data_path, **{"budget.value": 4, "eval.every_steps": 2, "eval.along": ["vqa"]})
    session = Recording(tmp_path)
    Recipe(loop_config(config, tmp_path, None), session).run()
    along, last = session.reports[0], session.reports[-1]
    assert len(session.reports) == 2 and along["step"] == 2 and last["step"] == 4
    assert "test/vqa/overall" in along and not any(k.startswith(("test/gen/", "test/caption/")) for k in along)
    assert {"test/vqa/overall", "test/gen/probe/overall", "test/caption/score"} <= set(last)


def test_vqa_answers_are_decoded_to_the_longest_vqa_answer_not_a_captions_length(data_path):
    data = RunData(small(data_path), data_path)
    tok = WordTokenizer.build(data.texts)
    assert data.max_answer_tokens(tok, Task.VQA) < data.max_answer_tokens(tok, Task.CAPTION)


@pytest.mark.parametrize(("overrides", "rates"), [({}, (2e-3, 1e-3)), ({"optim.lr": 1e-3}, (1e-3, 5e-4)),
                                                  ({"optim.projector_lr": 3e-3}, (2e-3, 3e-3))])
def test_projectors_learn_at_half_the_lms_rate_unless_set(data_path, tmp_path, overrides, rates):
    from trainables.train import LocalSession, Recipe

    recipe = Recipe(loop_config(small(data_path, **overrides), tmp_path, None), LocalSession(tmp_path))
    recipe.setup()
    lm = {id(p) for p in recipe.model.lm.parameters()}
    groups = recipe.optimiser.param_groups
    assert all(id(p) in lm for p in groups[0]["params"]) and not any(id(p) in lm for p in groups[1]["params"])
    head = recipe.model.head.weight
    assert any(p is head for p in groups[1]["params"])
    assert tuple(g["initial_lr"] for g in groups) == pytest.approx(rates)
