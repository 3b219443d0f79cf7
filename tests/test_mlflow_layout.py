"""trainables.mlflow_names owns the MLflow layout's names (mlflow_io writes with them); the synthetic sweep writer
follows it.

A real sweep's runs are checked against the same declarations in
tests/test_sweep_run.py (test_sweep_logs_parent_and_nested_runs_in_the_contract_layout).
"""

from __future__ import annotations

import re
from pathlib import Path

from mlflow.tracking import MlflowClient

from analysis.synthetic import SyntheticSweep, write_sweep
from search.space_checks import known_metrics
from trainables.data.records import ATTRIBUTES
from trainables.mlflow_names import (
    ENDING_TAGS, SWEEP_TAGS, TRIAL_TAGS, Metric, Tag, factor_tag, metric_names, role_filter, trial_run_name,
)

ROOT = Path(__file__).resolve().parents[1]


def uvlm_tags(run) -> set[str]:
    return {key for key in run.data.tags if key.startswith("uvlm.") or key == Tag.PARENT}


def test_synthetic_sweeps_carry_the_tags_and_run_names_of_a_real_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    design = SyntheticSweep(name="synth", study="mixing", train_images=(250, 500), seeds=(0, 1), eval_steps=(10, 20),
                            fail_fraction=0.3)
    write_sweep(uri, design)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("synth").experiment_id
    (parent,) = client.search_runs([experiment], role_filter("sweep"))
    assert uvlm_tags(parent) == SWEEP_TAGS and parent.info.status == "FINISHED"
    trials = client.search_runs([experiment], role_filter("trial"), max_results=1000)
    assert len(trials) == 3 * 2 * 2
    assert {run.info.status for run in trials} == {"FINISHED", "FAILED"}
    factors = {factor_tag("data.arm"), factor_tag("data.train_images")}
    for run in trials:
        assert uvlm_tags(run) - ENDING_TAGS == TRIAL_TAGS | factors, run.info.run_name
        assert run.data.tags[Tag.PARENT] == parent.info.run_id
        tags = run.data.tags
        assert run.info.run_name == (f"mixing/arm={tags[Tag.ARM]}/train_images={tags[factor_tag('data.train_images')]}"
                                     f"/seed={tags[Tag.SEED]}")
        assert (Tag.ERROR in tags) == (run.info.status == "FAILED")
    assert len({run.info.run_name for run in trials}) == len(trials)


def test_trial_run_names_say_what_the_trial_is():
    assert trial_run_name("mixing", [("data.arm", "mixed")], 2) == "mixing/arm=mixed/seed=2"
    assert trial_run_name("alignment", [("alignment.affine_strength", "0.5"), ("pair", "patch-same")], 0, sample=3) \
        == "alignment/affine_strength=0.5/pair=patch-same/seed=0/sample=3"
    # two factors ending alike keep their dotted keys; a slot's second run gets its own name
    assert trial_run_name("s", [("lm.trainability", "full"), ("vision.trainability", "frozen")], 1, rerun=1) \
        == "s/lm.trainability=full/vision.trainability=frozen/seed=1/rerun=1"
    assert trial_run_name("plain", [], 4) == "plain/seed=4"


def test_every_metric_name_comes_from_the_layout():
    names = metric_names()
    assert known_metrics() == names and len(names) == len(set(names))
    for name in (Metric.STEP_SECONDS_MEDIAN, Metric.SETUP_SECONDS, Metric.EVAL_SECONDS, Metric.FIT_SECONDS,
                 Metric.PEAK_MEMORY, Metric.GEN_FRECHET, "baseline/gen/probe/overall", "test/vqa/weather_corner"):
        assert name in names, name


def test_attributes_are_defined_once():
    definitions = [str(path.relative_to(ROOT)) for folder in ("trainables", "search", "analysis", "tests", "benchmarks")
                   for path in (ROOT / folder).rglob("*.py")
                   if re.search(r"^ATTRIBUTES\s*=", path.read_text(), re.MULTILINE)]
    assert definitions == ["trainables/data/records.py"]
    assert ATTRIBUTES == ("time", "weather", "battery", "weather_corner", "battery_corner")


def test_commands_started_side_by_side_on_one_new_store_take_turns_creating_it(tmp_path):
    """Two `uvlm train` at once on a fresh sqlite store: MLflow's migrations race ("table ... already exists")
    unless search.tracking.connect serialises them through a lock file (in the temporary folder)."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = f"from search.tracking import connect; connect({uri!r}).search_experiments(max_results=1)"
    root = Path(__file__).resolve().parents[1]
    processes = [subprocess.Popen([sys.executable, "-c", code], cwd=root, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    errors = [p.communicate(timeout=240)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, errors
