"""`uvlm sweep spaces/smoke.yaml` with the real trainable, as CI runs it: every trial a Ray Train run, logged
nested in MLflow with the contract's tags, metrics, artifacts and checkpoint."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from test_sweep_run import ROOT, client, runs_of, uvlm

from trainables.data.records import ATTRIBUTES


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smoke")
    result = uvlm(folder, "sweep", str(ROOT / "spaces" / "smoke.yaml"), timeout=1500)
    return folder, result


def test_smoke_sweep_finishes_every_trial(smoke):
    folder, result = smoke
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 trials: 10 finished, 0 failed, 0 pruned (complete" in result.stderr
    assert "Traceback" not in result.stderr


def test_smoke_trials_carry_the_trainables_metrics_and_artifacts(smoke):
    folder, result = smoke
    (parent,) = runs_of(folder, "smoke", "sweep")
    trials = runs_of(folder, "smoke")
    assert len(trials) == 10
    arms = sorted({run.data.tags["uvlm.arm"] for run in trials})
    assert arms == ["generation", "mixed", "understanding"]
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        metrics = run.data.metrics
        for name in ("test/vqa/overall", "baseline/vqa/overall", "test/caption/score", "test/gen/cosine", "time/fit_seconds",
                     *(f"test/vqa/{attribute}" for attribute in ATTRIBUTES)):
            assert name in metrics, (run.info.run_name, name)
        assert run.data.params["data.arm"] == run.data.tags["uvlm.arm"]
        assert Path(run.data.params["data.path"]).is_absolute()
        steps = [metric.step for metric in client(folder).get_metric_history(run.info.run_id, "test/vqa/overall")]
        assert steps[:2] == [20, 40], "an evaluation every 20 steps, logged per step"
        artifacts = {artifact.path for artifact in client(folder).list_artifacts(run.info.run_id)}
        assert {"config.yaml", "metrics.json", "generated.png"} <= artifacts
        checkpoint = Path(run.data.tags["uvlm.checkpoint"])  # one-worker trials train in their Tune trial's process
        assert checkpoint.is_dir() and checkpoint.parent.parent == folder / "work" / "ray_results" / "smoke"
    assert not (folder / "work" / "ray_results" / "smoke.train").exists(), "no TorchTrainer ran"
    hidden = [run for run in trials if run.data.tags["uvlm.cell"] == "variant=mixed-hidden"]
    assert all("test/vqa_hidden/overall" in run.data.metrics for run in hidden)


def test_smoke_optuna_studies_one_per_cell(smoke):
    folder, _ = smoke
    summaries = optuna.study.get_all_study_summaries(f"sqlite:///{folder / 'work' / 'optuna.db'}")
    assert sorted(summary.study_name for summary in summaries) == sorted(
        f"smoke/variant={variant}" for variant in ("understanding", "generation", "mixed", "mixed-affine", "mixed-hidden"))
    # one configuration per cell (search.samples 1), trained on both seeds and told to Optuna once, as their mean
    assert all(summary.n_trials == 1 for summary in summaries)
