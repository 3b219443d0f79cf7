"""Sweeps of one design on other seeds read as one (`uvlm power --pool`): synthetic sweeps in real sqlite stores."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from analysis.pooling import SweepRef, parse_ref, pooled_findings
from analysis.sweep import sweep_findings
from analysis.synthetic import Effects, SyntheticSweep, write_sweep
from search.cli import main
from trainables.errors import UserError

HEADLINES = {"understanding benefit": {"finding": 1, "metric": "test/vqa/overall", "statistic": "end",
                                       "treatment": {"data.arm": "mixed"}, "control": {"data.arm": "understanding"}}}
DESIGN = SyntheticSweep(name="mixing", train_images=(1000,), eval_steps=(100, 200, 300), headlines=HEADLINES,
                        effects=Effects(understanding_benefit=0.03, noise=0.02))


def store(folder, design: SyntheticSweep) -> str:
    """A working folder whose embedded store holds `design`; -> its tracking URI."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    write_sweep(uri, design)
    return uri


def headline(findings) -> object:
    return findings[1].headlines[0]


@pytest.fixture(scope="module")
def two_seed_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    first = store(root / "seeds-0", dataclasses.replace(DESIGN, seeds=(0, 1, 2, 3), images=True))
    # the second seed set scores higher, so the best runs (whose images the report shows) are in the other store
    second = store(root / "seeds-100", dataclasses.replace(DESIGN, seeds=(100, 101, 102, 103), random_seed=1, images=True,
                                                           effects=Effects(understanding_benefit=0.06, generation_benefit=0.2, noise=0.02)))
    return root, first, second


def test_pooled_estimate_is_the_mean_over_every_seed_of_both_sweeps(two_seed_sets):
    _, first, second = two_seed_sets
    alone = [headline(sweep_findings("mixing", uri)[3]) for uri in (first, second)]
    runs, _, _, findings = pooled_findings([SweepRef("mixing", first), SweepRef("mixing", second)])
    pooled = headline(findings)
    assert [r.n_seeds for r in alone] == [4, 4] and pooled.n_seeds == 8
    # an end-point headline is the mean of per-seed differences: with 4 seeds each, the mean of the two means
    assert pooled.estimate == pytest.approx((alone[0].estimate + alone[1].estimate) / 2, abs=1e-12)
    assert pooled.half_width < max(r.half_width for r in alone)
    assert set(runs["seed"].to_list()) == {0, 1, 2, 3, 100, 101, 102, 103}


def test_power_pool_prints_both_seed_sets_and_the_pooled_verdict(two_seed_sets, capsys):
    root, first, _ = two_seed_sets
    assert main(["power", "mixing", "--tracking-uri", first, "--pool", str(root / "seeds-100")]) == 0
    out = capsys.readouterr().out
    assert "Pooled as one sweep" in out and "(seeds 0-3)" in out and "(seeds 100-103)" in out, out
    row = next(line for line in out.splitlines() if "understanding benefit" in line)
    assert "| 8 " in row and "95% CI" in out and ("supported" in row or "inconclusive" in row), out


def test_a_seed_in_two_sweeps_is_refused(tmp_path):
    first = store(tmp_path / "a", dataclasses.replace(DESIGN, seeds=(0, 1, 2)))
    second = store(tmp_path / "b", dataclasses.replace(DESIGN, seeds=(2, 3, 4)))
    with pytest.raises(UserError, match="both ran seed 2"):
        pooled_findings([SweepRef("mixing", first), SweepRef("mixing", second)])


def test_another_design_is_refused_naming_the_setting(tmp_path):
    first = store(tmp_path / "a", dataclasses.replace(DESIGN, seeds=(0, 1, 2)))
    second = store(tmp_path / "b", dataclasses.replace(DESIGN, seeds=(3, 4, 5), train_images=(500,)))
    with pytest.raises(UserError, match="data.train_images is 500 there and 1000 here"):
        pooled_findings([SweepRef("mixing", first), SweepRef("mixing", second)])


def test_other_cells_or_headlines_are_refused(tmp_path):
    first = store(tmp_path / "a", dataclasses.replace(DESIGN, seeds=(0, 1, 2)))
    cells = store(tmp_path / "b", dataclasses.replace(DESIGN, seeds=(3, 4, 5), arms=("understanding", "mixed")))
    with pytest.raises(UserError, match="their cells differ"):
        pooled_findings([SweepRef("mixing", first), SweepRef("mixing", cells)])
    other = dict(HEADLINES["understanding benefit"], statistic="auc")
    declared = store(tmp_path / "c", dataclasses.replace(DESIGN, seeds=(3, 4, 5), headlines={"understanding benefit": other}))
    with pytest.raises(UserError, match="different headline results"):
        pooled_findings([SweepRef("mixing", first), SweepRef("mixing", declared)])


def test_pool_references(tmp_path):
    store(tmp_path / "w", dataclasses.replace(DESIGN, seeds=(0,)))
    assert parse_ref(str(tmp_path / "w"), "mixing") == SweepRef("mixing", f"sqlite:///{tmp_path / 'w' / 'mlflow.db'}")
    assert parse_ref("other@sqlite:///x.db", "mixing") == SweepRef("other", "sqlite:///x.db")
    with pytest.raises(UserError, match="not a uvlm working folder"):
        parse_ref(str(tmp_path / "nowhere"), "mixing")


def test_bad_pool_is_one_line_and_exit_2(tmp_path, capsys):
    uri = store(tmp_path / "w", dataclasses.replace(DESIGN, seeds=(0, 1, 2)))
    assert main(["power", "mixing", "--tracking-uri", uri, "--pool", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a uvlm working folder" in err[0], err


def test_report_pool_writes_the_pooled_report_without_logging_it(two_seed_sets, tmp_path, capsys):
    from mlflow import MlflowClient

    from analysis.frames import sweep_parent

    root, first, _ = two_seed_sets
    out = tmp_path / "pooled"
    assert main(["report", "mixing", "--tracking-uri", first, "--pool", str(root / "seeds-100"), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "Pooled as one sweep" in markdown and "(seeds 0-3)" in markdown and "(seeds 100-103)" in markdown
    findings = json.loads((out / "findings.json").read_text())
    assert {r["n_seeds"] for f in findings["findings"].values() if isinstance(f, dict)
            for r in f.get("results", []) if r.get("role") == "headline"} == {8}
    assert [p["seeds"] for p in findings["pooled"]] == ["0-3", "100-103"]
    assert (out / "figures" / "generated_images.png").is_file()
    assert all(row["seed"] >= 100 for row in findings["best"] if row["arm"] != "understanding"), findings["best"]
    parent = sweep_parent("mixing", first)["run_id"]
    assert not [a for a in MlflowClient(first).list_artifacts(parent) if a.path == "report"]
