"""The trainable under Ray Train: DDP with 2 gloo workers equals 1 worker on the same global batch; failures are clear."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

from trainables.config import load_config
from trainables.data.prepare import ensure_dataset
from trainables.launch import RunFailed, fit

torch.set_num_threads(1)

SMALL = {"data.generate_train_images": 48, "data.generate_test_images": 12, "data.test_images": 12,
         "optim.batch_size": 16, "eval.every_steps": 100, "eval.max_eval_records": 8, "eval.grid_images": 4}


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import ray

    temp_dir = tempfile.mkdtemp(prefix="uvr", dir="/tmp")
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp_dir, configure_logging=False)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "smartwatch"
    ensure_dataset(load_config(None, {**SMALL, "data.path": str(path)}).data)
    return path


def config(data_path, **overrides):
    return load_config(None, {**SMALL, "data.path": str(data_path), "runtime.cache_dir": str(data_path.parent / "cache"), **overrides})


@pytest.mark.slow
def test_ddp_two_gloo_workers_match_one_worker(local_ray, data_path, tmp_path):
    one = fit(config(data_path, **{"budget.value": 12}), tmp_path / "one", run_name="ddp1", storage_path=tmp_path / "ray")
    two = fit(config(data_path, **{"budget.value": 12, "runtime.num_workers": 2}), tmp_path / "two",
              run_name="ddp2", storage_path=tmp_path / "ray")
    for key in ("train/loss", "train/text_loss", "train/image_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), (key, one, two)
    assert two["train/samples"] == one["train/samples"] == 12 * 16
    assert two["test/gen/cosine"] == pytest.approx(one["test/gen/cosine"], abs=1e-3)
    assert two["test/vqa/overall"] == pytest.approx(one["test/vqa/overall"], abs=0.02)


@pytest.mark.slow
def test_fit_raises_a_clear_error_on_nan(local_ray, data_path, tmp_path):
    bad = config(data_path, **{"budget.value": 20, "optim.lr": 1e30, "optim.warmup_ratio": 0})
    with pytest.raises(RunFailed, match="NonFiniteLoss.*at step"):
        fit(bad, tmp_path / "nan", run_name="nan", storage_path=tmp_path / "ray")
