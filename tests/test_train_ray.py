"""The trainable under Ray Train: DDP with 2 gloo workers equals 1 worker on the same global batch; failures are clear."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

from trainables.config import load_config
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
    bad = config(data_path, **{"budget.value": 20, "optim.warmup_ratio": 0})
    bad = bad.model_copy(update={"optim": bad.optim.model_copy(update={"lr": 1e30})})  # past the lr bound: a diverging run
    with pytest.raises(RunFailed, match="NonFiniteLoss.*at step"):
        fit(bad, tmp_path / "nan", run_name="nan", storage_path=tmp_path / "ray")


@pytest.mark.slow
def test_uvlm_train_through_ray_in_a_subprocess(data_path, tmp_path):
    import json
    import subprocess

    sets = {**SMALL, "data.path": data_path, "budget.value": 20, "eval.every_steps": 10}
    command = ["uvlm", "train", "--out", str(tmp_path / "run"), "--name", "ray-e2e"]
    command += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = os.environ | {"UVLM_WORKDIR": str(tmp_path / "work"), "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train:" in done.stderr and "Failed to query" not in done.stdout + done.stderr  # the bar, not Ray's chatter
    assert "Reporting training result" not in done.stdout + done.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["step"] == 20 and "test/vqa/overall" in metrics and (tmp_path / "run" / "generated.png").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("uvlm-train").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/vqa/overall")] == [10, 20]


@pytest.mark.slow
def test_fsdp_two_gloo_workers_match_ddp_through_a_failure_and_a_resume(local_ray, data_path, tmp_path):
    """A sharded full fine-tune takes DDP's steps: the same losses and scores, though it fails at step 9 on purpose
    and resumes from step 6's checkpoint (gathered from both shards, then read back into them), and evaluates with
    the workers decoding different prompts."""
    sets = {"budget.value": 12, "runtime.num_workers": 2, "eval.every_steps": 6}
    ddp = fit(config(data_path, **sets), tmp_path / "ddp", run_name="ddp", storage_path=tmp_path / "ray")
    fsdp = fit(config(data_path, **sets, **{"runtime.strategy": "fsdp"}), tmp_path / "fsdp", run_name="fsdp",
               storage_path=tmp_path / "ray", fail_at_step=9)
    assert fsdp["train/resumed_from_step"] == 6 and fsdp["step"] == ddp["step"] == 12
    for key in ("train/loss", "train/text_loss", "train/image_loss"):
        assert fsdp[key] == pytest.approx(ddp[key], rel=1e-4), (key, ddp, fsdp)
    assert fsdp["test/gen/cosine"] == pytest.approx(ddp["test/gen/cosine"], abs=1e-3)
    assert fsdp["test/vqa/overall"] == pytest.approx(ddp["test/vqa/overall"], abs=0.02)
