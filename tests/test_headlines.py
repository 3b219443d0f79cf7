"""Declared headlines: the space-file schema, each statistic on synthetic sweeps of known effect, power and Holm.

Findings run on in-memory frames (analysis.synthetic.runs_frame / history_frame), so these tests need no MLflow store.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from analysis import stats
from analysis.headlines import parse
from analysis.results import TITLES, FindingReport, correct_as_family, family_sentence, make_result
from analysis.sweep import all_findings
from analysis.synthetic import Effects, SyntheticSweep, history_frame, runs_frame
from search.planner import load_space
from trainables.errors import UserError

SPACES = Path(__file__).resolve().parents[1] / "spaces"
MIXED_VS_UNDERSTANDING = {"treatment": {"data.arm": "mixed"}, "control": {"data.arm": "understanding"}}


# ----------------------------------------------------------------------------- power and multiplicity

def test_holm_matches_a_hand_computation():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06, kept monotone), 0.04 (x1 = 0.04 -> 0.06)
    adjusted = stats.holm([0.03, 0.01, math.nan, 0.04, 0.02])
    np.testing.assert_allclose(adjusted, [0.06, 0.04, math.nan, 0.06, 0.06])
    assert stats.holm([0.5, 0.6]).tolist() == [1.0, 1.0]


def headline_report(*estimates: stats.Estimate) -> FindingReport:
    report = FindingReport(1, *TITLES[1])
    report.results += [make_result(1, f"h{i}", "test/vqa/overall", "mixed − understanding-only", e, "t-test", +1,
                                   headline=True) for i, e in enumerate(estimates)]
    return report


def test_headlines_are_judged_as_one_family():
    """p = 0.03 alone supports its headline; as one of six (five of them null) Holm makes it 0.18: not supported."""
    effect = stats.Estimate(0.05, 0.01, 0.09, 8, 8, 0.03)
    alone = headline_report(effect)
    correct_as_family([alone])
    assert alone.results[0].verdict == "supported" and alone.results[0].p_adjusted == pytest.approx(0.03)
    nulls = [stats.Estimate(0.0, -0.1, 0.1, 8, 8, p) for p in (0.2, 0.4, 0.5, 0.7, 0.9)]
    family = [headline_report(effect), headline_report(*nulls[:2]), headline_report(*nulls[2:])]  # across reports
    correct_as_family(family)
    first = family[0].results[0]
    assert first.p_adjusted == pytest.approx(0.18) and first.verdict == "inconclusive"
    assert family_sentence([r for f in family for r in f.headlines]).startswith(
        "Verdicts corrected as one family: Holm over 6 headlines")


def test_the_declared_smallest_effect_decides_equivalent_or_inconclusive():
    """A null end benefit over 8 seeds: inside ±0.1 (equivalent), not inside ±0.001 (inconclusive)."""
    design = SyntheticSweep(name="mixing", arms=("understanding", "mixed"), train_images=(500,), seeds=tuple(range(8)),
                            eval_steps=(500,), effects=Effects(understanding_benefit=0.0))
    for delta, verdict in ((0.1, "equivalent"), (0.001, "inconclusive")):
        headlines = {"h": {"finding": 1, "metric": "test/vqa/overall", "smallest_effect": delta, **MIXED_VS_UNDERSTANDING}}
        result = findings(design, headlines)[1].headlines[0]
        assert result.smallest_effect == delta and result.verdict == verdict, result


def test_power_matches_simulated_t_tests():
    rng = np.random.default_rng(0)
    sd, seeds = 0.03, 8
    effect = stats.minimum_detectable_effect(sd, seeds)
    assert stats.power(effect, sd, seeds) == pytest.approx(0.8, abs=1e-6)
    samples = rng.normal(effect, sd, size=(20_000, seeds))
    rejected = scipy_stats.ttest_1samp(samples, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.012)
    # the t-based MDE exceeds the normal approximation (z_0.975 + z_0.8) * sd / sqrt(n), and meets it for many seeds
    normal = (scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) * sd / math.sqrt(seeds)
    assert effect > normal
    assert stats.minimum_detectable_effect(sd, 2000) == pytest.approx(
        (scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) * sd / math.sqrt(2000), rel=2e-3)
    assert math.isnan(stats.minimum_detectable_effect(math.nan, 8)) and math.isnan(stats.power(0.1, 0.0, 8))


@pytest.mark.parametrize("sd", [0.005, 0.03, 0.1])
def test_seeds_for_half_width_is_the_fewest_that_reach_it(sd):
    n = stats.seeds_for_half_width(sd, 0.02)

    def half(k: int) -> float:
        return scipy_stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)

    assert half(n) <= 0.02 and (n == 2 or half(n - 1) > 0.02)


def test_per_seed_slope_interval_covers_a_known_slope_at_nominal_rate():
    covered, widths = 0, {4: [], 16: []}
    for replicate in range(200):
        rng = np.random.default_rng(replicate)
        for seeds in (4, 16):
            clusters = np.repeat(np.arange(seeds), 3)
            x = np.tile([0.0, 0.3, 0.9], seeds)
            slope_per_seed = -0.05 + rng.normal(0, 0.02, seeds)  # seeds differ in their own slope
            y = rng.normal(0, 0.05, seeds)[clusters] + slope_per_seed[clusters] * x + rng.normal(0, 0.01, len(x))
            estimate = stats.bootstrap_seed_slope(x, y, clusters, resamples=300, seed=replicate)
            widths[seeds].append(estimate.ci_high - estimate.ci_low)
            if seeds == 16:
                covered += estimate.ci_low <= -0.05 <= estimate.ci_high
    assert covered >= 180  # 90% of 200 at a nominal 95%
    assert np.median(widths[16]) < 0.55 * np.median(widths[4])  # narrows with seeds (unlike a rank correlation)


# ----------------------------------------------------------------------------- the space-file schema

def write(tmp_path: Path, headlines: dict, factors: dict | None = None) -> Path:
    tree = {"study": "t", "factors": factors or {"data.arm": ["understanding", "generation", "mixed"]},
            "headlines": headlines}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_declared_headlines_are_parsed_typed_and_recorded(tmp_path):
    plan = load_space(write(tmp_path, {"understanding benefit": {"finding": 1, "metric": "test/vqa/overall",
                                                                  **MIXED_VS_UNDERSTANDING}}))
    headline = plan.space.headlines["understanding benefit"]
    assert (headline.statistic.value, headline.expected.value, headline.smallest_effect) == ("end", "positive", 0.02)
    record = plan.headlines_record()
    assert record["understanding benefit"]["treatment"] == {"data.arm": "mixed"}
    assert parse(record)["understanding benefit"] == headline


@pytest.mark.parametrize("headline, message", [
    ({"finding": 1, "metric": "test/vqa/overall", "expectd": "positive", **MIXED_VS_UNDERSTANDING},
     "unknown key 'headlines.h.expectd'.*did you mean 'expected'"),
    ({"finding": 1, "metric": "test/vqa/overal", **MIXED_VS_UNDERSTANDING}, "did you mean 'test/vqa/overall'"),
    ({"finding": 1, "metric": "test/vqa/overall", "statistic": "slop", **MIXED_VS_UNDERSTANDING}, "did you mean 'slope'"),
    ({"finding": 1, "metric": "test/vqa/overall", "statistic": "slope", **MIXED_VS_UNDERSTANDING}, "`against`"),
    ({"finding": 1, "metric": "test/vqa/overall", "treatment": {"data.arm": "mixed"}, "control": {"data.arm": "hidden"}},
     "headlines.h.control.*matches no cell"),
    ({"finding": 1, "metric": "test/vqa/overall", "treatment": {"data.armm": "mixed"}, "control": {"data.arm": "mixed"}},
     "headlines.h.*did you mean 'arm'"),
    ({"finding": 1, "metric": "test/vqa/overall", "treatment": {"data.path": "data/a"}, "control": {"data.arm": "mixed"}},
     "'data.path' is a path"),
    ({"finding": 2, "metric": "test/vqa/overall", "statistic": "slope", "against": "alignment.affine_strength",
      **MIXED_VS_UNDERSTANDING}, "one value of 'alignment.affine_strength'"),
    ({"finding": 3, "metric": "test/vqa/overall", "statistic": "did", "across": {"lm.trainability": ["full"]},
      **MIXED_VS_UNDERSTANDING}, "two values"),
    ({"finding": 1, "metric": "test/vqa/overall", "smallest_effect": 0, **MIXED_VS_UNDERSTANDING},
     "headlines.h.smallest_effect.*greater than 0"),
    ({"finding": 1, "metric": "test/vqa/overall", "smallest_effect": -0.02, **MIXED_VS_UNDERSTANDING},
     "headlines.h.smallest_effect.*greater than 0"),
])
def test_bad_declarations_are_errors_that_name_the_field(tmp_path, headline, message):
    with pytest.raises(UserError, match=message):
        load_space(write(tmp_path, {"h": headline}))


@pytest.mark.parametrize("study", ["mixing", "alignment", "transfer"])
def test_every_study_declares_its_headlines_and_evaluates_along_its_budget(study):
    plan = load_space(SPACES / f"{study}.yaml")
    assert plan.space.headlines, "only declared headlines get verdicts"
    for slot in plan.first_of_each_cell():
        config = plan.config(slot)
        # a VQA record has at most 4 turns, one prompt each: every evaluation scores the same (whole) test split
        assert config.eval.max_eval_records >= 4 * config.data.test_images
    if study == "alignment":
        strengths = {plan.config(s).alignment.affine_strength for s in plan.slots if plan.config(s).data.arm.value == "mixed"}
        assert len(strengths) >= 2 and min(strengths) == 0.0, "a slope from the aligned space to a misaligned one"
    if study == "transfer":
        assert {plan.config(s).data.hide_control for s in plan.first_of_each_cell()} == {True, False}


# ----------------------------------------------------------------------------- each statistic on known effects

def findings(design: SyntheticSweep, headlines: dict):
    return all_findings(runs_frame(design), history_frame(design), parse(headlines))


def test_end_and_trend_recover_known_effects_and_everything_else_is_exploratory():
    headlines = {"understanding benefit": {"finding": 1, "metric": "test/vqa/overall", **MIXED_VS_UNDERSTANDING},
                 "understanding benefit trend": {"finding": 1, "metric": "test/vqa/overall", "statistic": "trend",
                                                 **MIXED_VS_UNDERSTANDING}}
    design = SyntheticSweep(name="mixing", train_images=(500,), seeds=tuple(range(8)), eval_steps=(100, 200, 300, 400, 500),
                            effects=Effects(understanding_benefit=0.04, benefit_trend=0.03, eval_noise=0.005))
    report = findings(design, headlines)[1]
    by_name = {r.name: r for r in report.headlines}
    assert set(by_name) == set(headlines)
    end, trend = by_name["understanding benefit"], by_name["understanding benefit trend"]
    assert end.ci_low <= 0.04 <= end.ci_high and end.verdict == "supported" and end.statistic == "end"
    # benefit(f) = 0.04 * rise(f) + 0.03 ln f: the slope against ln f is positive, above 0.03
    assert trend.verdict == "supported" and trend.estimate > 0.03
    for r in report.results:
        if r not in report.headlines:
            assert r.role == "exploratory" and r.verdict == "exploratory" and r.p_adjusted >= r.p_value
    assert all(r.sd_paired > 0 and r.mde_80 > 0 and r.seeds_for_target >= 2 for r in report.headlines)
    curve = report.tables["headline_understanding_benefit_trend_curve"]
    assert sorted(curve["fraction"].unique().to_list()) == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert sorted(curve["records"].unique().to_list()) == [3200.0, 6400.0, 9600.0, 12800.0, 16000.0]  # train/samples

    from analysis import figures

    figure = figures.benefit_curves({1: report})
    axis = figure.axes[0]
    assert axis.get_xlabel().startswith("records seen") and len(axis.lines) == 2  # the benefit, and zero
    figures.plt.close(figure)


def test_trend_slope_is_the_known_slope_when_the_end_benefit_is_zero():
    headlines = {"trend": {"finding": 1, "metric": "test/vqa/overall", "statistic": "trend", **MIXED_VS_UNDERSTANDING}}
    design = SyntheticSweep(name="mixing", arms=("understanding", "mixed"), train_images=(500,), seeds=tuple(range(10)),
                            eval_steps=(100, 200, 300, 400, 500),
                            effects=Effects(understanding_benefit=0.0, benefit_trend=0.02, noise=0.002, eval_noise=0.005))
    trend = findings(design, headlines)[1].headlines[0]
    assert trend.ci_low <= 0.02 <= trend.ci_high and trend.verdict == "supported"
    flat = findings(SyntheticSweep(**{**design.__dict__, "effects": Effects(understanding_benefit=0.0, noise=0.002,
                                                                           eval_noise=0.005)}), headlines)[1].headlines[0]
    assert flat.verdict == "equivalent" and flat.ci_low <= 0.0 <= flat.ci_high  # no trend, measured within ±0.02


def test_auc_is_compared_with_the_end_point():
    headlines = {"generation benefit": {"finding": 1, "metric": "test/gen/probe/overall", "statistic": "auc",
                                        "treatment": {"data.arm": "mixed"}, "control": {"data.arm": "generation"}}}
    design = SyntheticSweep(name="mixing", train_images=(500,), seeds=tuple(range(6)), eval_steps=(100, 200, 300, 400, 500),
                            effects=Effects(generation_benefit=0.05))
    report = findings(design, headlines)[1]
    choice = report.tables["headline_statistic_choice"]
    assert choice["statistic"].to_list() == ["end", "auc"] and choice["chosen"].to_list() == [False, True]
    end, auc = choice.rows_by_key("statistic", named=True)["end"][0], choice.rows_by_key("statistic", named=True)["auc"][0]
    assert end["estimate"] == pytest.approx(0.05, abs=0.01)
    # the curve rises to its end (mean of rise(f) over f = 0.2..1 is 0.63 here): auc estimates a smaller benefit
    assert auc["estimate"] == pytest.approx(0.05 * 0.63, abs=0.01) and report.headlines[0].statistic == "auc"


def test_auc_reads_only_the_compared_runs_curves():
    """eval.along: understanding-only runs score generation only at their end; a generation comparison's area must not
    need their curves (spaces/mixing.yaml)."""
    import polars as pl

    headlines = {"generation benefit": {"finding": 1, "metric": "test/gen/probe/overall", "statistic": "auc",
                                        "treatment": {"data.arm": "mixed"}, "control": {"data.arm": "generation"}}}
    design = SyntheticSweep(name="mixing", train_images=(500,), seeds=tuple(range(6)), eval_steps=(100, 200, 300, 400, 500),
                            effects=Effects(generation_benefit=0.05))
    runs, history = runs_frame(design), history_frame(design)
    understanding = runs.filter(pl.col("arm") == "understanding")["run_id"].to_list()
    history = history.filter(~(pl.col("run_id").is_in(understanding) & (pl.col("metric") == "test/gen/probe/overall")
                               & (pl.col("step") < 500)))
    result = all_findings(runs, history, parse(headlines))[1].headlines[0]
    assert result.statistic == "auc" and result.n_seeds == 6 and math.isfinite(result.estimate)


def test_slope_against_strength_with_three_levels():
    headlines = {"alignment": {"finding": 2, "metric": "test/vqa/overall", "statistic": "slope",
                               "against": "alignment.affine_strength", "expected": "negative", **MIXED_VS_UNDERSTANDING}}
    design = SyntheticSweep(name="alignment", arms=("understanding", "mixed"), train_images=(500,), seeds=tuple(range(8)),
                            affine_strengths=(0.0, 0.3, 0.9), eval_steps=(500,), effects=Effects(alignment_slope=-0.05))
    design_runs = runs_frame(design)
    # as in spaces/alignment.yaml, understanding-only runs once per seed, at strength 0
    runs = design_runs.filter((design_runs["arm"] == "mixed") | (design_runs["params.alignment.affine_strength"] == 0.0))
    result = all_findings(runs, None, parse(headlines))[2].headlines[0]
    assert result.ci_low <= -0.05 <= result.ci_high and result.verdict == "supported" and result.n_seeds == 8


def test_slope_needs_no_control_and_can_read_each_runs_area_under_its_curve():
    """spaces/alignment.yaml: mixed runs only (a seed's control would shift its benefit, not its slope), per_run: auc."""
    headlines = {"alignment": {"finding": 2, "metric": "test/vqa/overall", "statistic": "slope", "per_run": "auc",
                               "against": "alignment.affine_strength", "expected": "negative",
                               "treatment": {"data.arm": "mixed"}}}
    design = SyntheticSweep(name="alignment", arms=("mixed",), train_images=(500,), seeds=tuple(range(8)),
                            affine_strengths=(0.0, 0.3, 0.9), eval_steps=(100, 200, 300, 400, 500),
                            effects=Effects(alignment_slope=-0.05))
    report = findings(design, headlines)[2]
    result = report.headlines[0]
    assert result.statistic == "slope (auc)" and result.n_seeds == 8 and "control" not in result.comparison
    choice = {row["statistic"]: row for row in report.tables["headline_statistic_choice"].iter_rows(named=True)}
    assert set(choice) == {"slope", "slope (auc)"} and choice["slope (auc)"]["chosen"] and not choice["slope"]["chosen"]
    end, auc = choice["slope"], choice["slope (auc)"]
    assert end["estimate"] == pytest.approx(-0.05, abs=0.015)
    # scores rise to their end along a run (the mean of rise(f) over f = 0.2..1 is 0.63): the area's slope is smaller
    assert auc["estimate"] == pytest.approx(-0.05 * 0.63, abs=0.015) and result.estimate == auc["estimate"]
    with_control = {"alignment": {**headlines["alignment"], **MIXED_VS_UNDERSTANDING}}
    both = SyntheticSweep(**{**design.__dict__, "arms": ("understanding", "mixed")})
    runs, history = runs_frame(both), history_frame(both)
    runs = runs.filter((runs["arm"] == "mixed") | (runs["params.alignment.affine_strength"] == 0.0))  # one control a seed
    slopes = [all_findings(runs, history, parse(h))[2].headlines[0].estimate for h in (headlines, with_control)]
    assert slopes[0] == pytest.approx(slopes[1], abs=1e-9)  # the control shifts each seed's benefit, not its slope


def test_a_control_is_left_out_only_by_a_slope(tmp_path):
    with pytest.raises(UserError, match="`control` is required"):
        load_space(write(tmp_path, {"h": {"finding": 1, "metric": "test/vqa/overall", "treatment": {"data.arm": "mixed"}}}))
    with pytest.raises(UserError, match="statistic: auc"):
        load_space(write(tmp_path, {"h": {"finding": 1, "metric": "test/vqa/overall", "per_run": "auc",
                                          **MIXED_VS_UNDERSTANDING}}))


def test_difference_in_differences_on_each_runs_area_under_its_curve():
    headlines = {"transfer in the LM": {"finding": 3, "metric": "test/vqa_hidden/overall", "statistic": "did",
                                        "per_run": "auc", "treatment": {"data.hide_control": False},
                                        "control": {"data.hide_control": True}, "across": {"lm.trainability": ["full", "frozen"]}}}
    design = SyntheticSweep(name="transfer", arms=("mixed",), train_images=(500,), seeds=tuple(range(8)), hide=True,
                            freezing=("none", "lm_frozen"), eval_steps=(100, 200, 300, 400, 500),
                            effects=Effects(transfer=0.1, transfer_lm_frozen=0.0))
    report = findings(design, headlines)[3]
    result = report.headlines[0]
    assert result.statistic == "did (auc)" and result.verdict == "supported"
    choice = {row["statistic"]: row["estimate"] for row in report.tables["headline_statistic_choice"].iter_rows(named=True)}
    assert choice["did"] == pytest.approx(0.1, abs=0.03) and choice["did (auc)"] == pytest.approx(result.estimate)


def test_difference_in_differences_lm_trained_minus_lm_frozen():
    headlines = {"transfer in the LM": {"finding": 3, "metric": "test/vqa_hidden/overall", "statistic": "did",
                                        "treatment": {"data.hide_control": False}, "control": {"data.hide_control": True},
                                        "across": {"lm.trainability": ["full", "frozen"]}}}
    for transfer, frozen, verdict in ((0.1, 0.0, "supported"), (0.1, 0.1, "inconclusive")):
        design = SyntheticSweep(name="transfer", arms=("mixed",), train_images=(500,), seeds=tuple(range(8)), hide=True,
                                freezing=("none", "lm_frozen"), eval_steps=(500,),
                                effects=Effects(transfer=transfer, transfer_lm_frozen=frozen))
        result = findings(design, headlines)[3].headlines[0]
        assert result.ci_low <= transfer - frozen <= result.ci_high and result.verdict == verdict, result


def test_a_headline_that_cannot_be_computed_says_why():
    headlines = {"trend": {"finding": 1, "metric": "test/vqa/overall", "statistic": "trend", **MIXED_VS_UNDERSTANDING}}
    design = SyntheticSweep(name="mixing", train_images=(500,), seeds=(0, 1, 2), eval_steps=(500,))
    result = findings(design, headlines)[1].headlines[0]
    assert math.isnan(result.estimate) and result.verdict == "inconclusive" and "at least 2" in result.note


def test_runs_with_different_evaluation_steps_meet_on_one_grid_of_budget_fractions():
    import polars as pl

    from analysis.headlines import run_curves

    # transfer.yaml: hidden evaluates every 145 of 723 steps, control every 123 of 615; a third run every 100 of 1000
    steps = {"hidden": [145, 290, 435, 580, 723], "control": [123, 246, 369, 492, 615], "long": list(range(100, 1001, 100))}
    rows = [(run, "m", step, step, step / max(points)) for run, points in steps.items() for step in points]
    history = pl.DataFrame(rows, schema=["run_id", "metric", "step", "timestamp", "value"], orient="row")
    runs = pl.DataFrame({"run_id": list(steps), "status": ["FINISHED"] * 3})
    curves = run_curves(runs, history, "m")
    assert sorted(curves["fraction"].unique().to_list()) == [0.2, 0.4, 0.6, 0.8, 1.0]  # the fewest evaluations: 5
    np.testing.assert_allclose(curves.sort("run_id", "fraction")["value"].to_numpy(), np.tile([0.2, 0.4, 0.6, 0.8, 1.0], 3),
                               atol=0.002)  # value = fraction, read back on the grid (0.2 for hidden: clamped 0.2006)


def test_declarations_for_one_finding_demote_the_default_headlines_of_every_finding():
    """An alignment sweep also supports finding 1; with finding 2 declared, finding 1 has no verdicts."""
    headlines = {"slope": {"finding": 2, "metric": "test/vqa/overall", "statistic": "slope", "expected": "negative",
                           "against": "alignment.affine_strength", **MIXED_VS_UNDERSTANDING}}
    design = SyntheticSweep(name="alignment", arms=("understanding", "mixed"), train_images=(500,), seeds=(0, 1, 2),
                            affine_strengths=(0.0, 0.3, 0.9), eval_steps=(500,))
    out = findings(design, headlines)
    assert not out[1].headlines and {r.verdict for r in out[1].results} == {"exploratory"}
    assert [r.name for r in out[2].headlines] == ["slope"]


def test_other_seed_values_give_the_same_intervals():
    """Seeds are labels: a study run with seeds 10..15 instead of 0..5 (same draws) reports the same intervals."""
    headlines = {"trend": {"finding": 1, "metric": "test/vqa/overall", "statistic": "trend", **MIXED_VS_UNDERSTANDING}}
    first = SyntheticSweep(name="mixing", train_images=(500,), seeds=tuple(range(6)), eval_steps=(100, 200, 300, 400, 500),
                           effects=Effects(benefit_trend=0.02, eval_noise=0.005))
    other = SyntheticSweep(**{**first.__dict__, "seeds": tuple(range(10, 16))})
    a, b = (findings(design, headlines)[1].headlines[0] for design in (first, other))
    assert (a.estimate, a.ci_low, a.ci_high, a.sd_paired) == pytest.approx((b.estimate, b.ci_low, b.ci_high, b.sd_paired))


def test_a_metric_read_along_the_runs_must_be_scored_along_them(tmp_path):
    trend = {"trend": {"finding": 1, "metric": "test/gen/probe/overall", "statistic": "trend",
                       "treatment": {"data.arm": "mixed"}, "control": {"data.arm": "generation"}}}
    factors = {"arm": {"generation": {"data.arm": "generation", "eval.along": ["generation"]},
                       "mixed": {"data.arm": "mixed", "eval.along": ["vqa"]},
                       "understanding": {"data.arm": "understanding", "eval.along": ["vqa"]}}}
    with pytest.raises(UserError, match=r"cell arm=mixed scores only \['vqa'\].*add 'generation' to eval.along"):
        load_space(write(tmp_path, trend, factors))
    factors["arm"]["mixed"]["eval.along"] = ["vqa", "generation"]
    assert load_space(write(tmp_path, trend, factors))  # understanding-only is in no comparison of the trend


# ----------------------------------------------------------------------------- gates: learned, not saturated

GENERATION_BENEFIT = {"generation benefit": {"finding": 1, "metric": "test/gen/probe/overall",
                                             "treatment": {"data.arm": "mixed"}, "control": {"data.arm": "generation"}}}
GATED_DESIGN = SyntheticSweep(name="mixing", arms=("generation", "mixed"), train_images=(500,), seeds=tuple(range(8)),
                              eval_steps=(500,), effects=Effects(generation_benefit=0.2))


def with_floor(runs, metric: str, floor: float):
    import polars as pl

    from trainables.mlflow_names import baseline_of

    return runs.with_columns(pl.lit(floor).alias(f"metrics.{baseline_of(metric)}"))


def arm_mean(runs, arm: str, metric: str) -> float:
    return float(runs.filter(runs["arm"] == arm)[f"metrics.{metric}"].mean())


def test_every_test_score_has_its_constant_answer_baseline_named_in_one_place():
    from trainables.mlflow_names import baseline_of

    assert baseline_of("test/vqa/overall") == "baseline/vqa/overall"
    assert baseline_of("test/vqa_hidden/weather") == "baseline/vqa/weather"
    assert baseline_of("test/gen/probe/overall") == "baseline/gen/probe/overall"
    assert baseline_of("test/gen/icon/top_left") == "baseline/gen/icon/top_left"
    assert baseline_of("test/caption/score") == "baseline/caption/score"
    assert baseline_of("test/gen/cosine") is None and baseline_of("train/loss") is None


def test_a_generation_benefit_over_an_arm_below_its_baseline_gets_no_verdict():
    """The generation-only arm reads its images' attributes below the constant generation: no verdict on the benefit."""
    runs = runs_frame(GATED_DESIGN)
    metric = "test/gen/probe/overall"
    control, treatment = arm_mean(runs, "generation", metric), arm_mean(runs, "mixed", metric)
    judged = all_findings(runs, None, parse(GENERATION_BENEFIT))[1].headlines[0]  # the synthetic floor, 0.35
    assert judged.verdict == "supported" and judged.floor == pytest.approx(0.35)
    assert judged.arm_means == pytest.approx({"arm=mixed": treatment, "arm=generation": control})
    floor = (control + treatment) / 2  # mixed above it, generation-only below
    result = all_findings(with_floor(runs, metric, floor), None, parse(GENERATION_BENEFIT))[1].headlines[0]
    assert result.verdict == stats.BELOW_BASELINE and result.gated and math.isnan(result.p_adjusted)
    assert f"arm=generation averages {control:.4f}" in result.note and f"{floor:.4f}" in result.note
    assert result.estimate == pytest.approx(judged.estimate)  # the estimate is still shown, without a verdict


def test_a_learned_margin_requires_each_arm_to_clear_the_baseline_by_it():
    runs = runs_frame(GATED_DESIGN)
    metric = "test/gen/probe/overall"
    runs = with_floor(runs, metric, arm_mean(runs, "generation", metric) - 0.05)  # generation-only 0.05 above it
    for margin, verdict in ((0.0, "supported"), (0.1, stats.BELOW_BASELINE)):
        headlines = {"h": {**GENERATION_BENEFIT["generation benefit"], "learned_margin": margin}}
        result = all_findings(runs, None, parse(headlines))[1].headlines[0]
        assert result.verdict == verdict and result.learned_margin == margin, result
    assert "margin 0.1" in result.note


def test_a_ceiling_gates_a_benefit_read_where_an_arm_is_saturated():
    import polars as pl

    headline = {"finding": 1, "metric": "test/vqa/overall", **MIXED_VS_UNDERSTANDING}
    design = SyntheticSweep(name="mixing", arms=("understanding", "mixed"), train_images=(500,), seeds=tuple(range(8)),
                            eval_steps=(500,), effects=Effects(understanding_benefit=0.05))
    runs = runs_frame(design)
    column = "metrics.test/vqa/overall"
    shift = 0.97 - arm_mean(runs, "mixed", "test/vqa/overall")  # the mixed arm averages 0.97
    runs = runs.with_columns(pl.col(column) + shift)
    for ceiling, verdict in ((None, "supported"), (0.98, "supported"), (0.95, stats.AT_CEILING)):
        result = all_findings(runs, None, parse({"h": {**headline, "ceiling": ceiling}}))[1].headlines[0]
        assert result.verdict == verdict and result.ceiling == ceiling, result
    assert result.arm_means["arm=mixed"] == pytest.approx(0.97) and "at or above the ceiling 0.95" in result.note


def test_gated_headlines_stay_out_of_the_holm_family():
    runs = runs_frame(GATED_DESIGN)
    metric = "test/gen/probe/overall"
    runs = with_floor(runs, metric, arm_mean(runs, "generation", metric) - 0.05)
    headlines = {"judged": GENERATION_BENEFIT["generation benefit"],
                 "gated": {**GENERATION_BENEFIT["generation benefit"], "learned_margin": 0.1}}
    results = {r.name: r for r in all_findings(runs, None, parse(headlines))[1].headlines}
    judged, gated = results["judged"], results["gated"]
    assert gated.verdict == stats.BELOW_BASELINE and math.isfinite(gated.p_value)
    assert judged.p_adjusted == pytest.approx(judged.p_value)  # a family of one: Holm leaves its p as it is
    assert family_sentence([judged, gated]) == ("Verdicts corrected as one family: Holm over 1 headline (family-wise "
                                                "error 5%); 1 headline below baseline or at ceiling, without a "
                                                "verdict, left out.")


def test_a_difference_in_differences_and_a_slope_gate_on_each_cell_they_compare():
    did = {"h": {"finding": 3, "metric": "test/vqa_hidden/overall", "statistic": "did",
                 "treatment": {"data.hide_control": False}, "control": {"data.hide_control": True},
                 "across": {"lm.trainability": ["full", "frozen"]}}}
    design = SyntheticSweep(name="transfer", arms=("mixed",), train_images=(500,), seeds=tuple(range(8)), hide=True,
                            freezing=("none", "lm_frozen"), eval_steps=(500,),
                            effects=Effects(transfer=0.2, transfer_lm_frozen=0.0))
    assert findings(design, did)[3].headlines[0].verdict == "supported"
    result = findings(design, {"h": {**did["h"], "learned_margin": 0.15}})[3].headlines[0]
    assert len(result.arm_means) == 4 and result.floor == pytest.approx(0.372)  # mean of the synthetic BASELINES
    # the controls (and the frozen-LM cells) answer about 0.5: 0.13 above the constant answers, not 0.15
    assert result.verdict == stats.BELOW_BASELINE and "hide_control=True, trainability=full averages" in result.note
    slope = {"h": {"finding": 2, "metric": "test/vqa/overall", "statistic": "slope", "against": "alignment.affine_strength",
                   "expected": "negative", "treatment": {"data.arm": "mixed"}}}
    design = SyntheticSweep(name="alignment", arms=("mixed",), train_images=(500,), seeds=tuple(range(4)),
                            affine_strengths=(0.0, 0.3, 0.9), eval_steps=(500,))
    result = findings(design, slope)[2].headlines[0]
    assert sorted(result.arm_means) == ["arm=mixed, affine_strength=0.0", "arm=mixed, affine_strength=0.3",
                                        "arm=mixed, affine_strength=0.9"]


def test_the_benefit_with_a_pretrained_lm_minus_with_a_random_lm_is_exploratory():
    design = SyntheticSweep(name="mixing", arms=("understanding", "mixed"), train_images=(500,), seeds=tuple(range(6)),
                            eval_steps=(500,), pretraining_steps=(0, 400),
                            effects=Effects(understanding_benefit=0.05, random_lm_benefit=-0.04))
    report = all_findings(runs_frame(design), None, None)[1]
    by_lm = {r.group["lm"]: r for r in report.results if "lm" in r.group and r.metric == "test/vqa/overall"}
    assert set(by_lm) == {"pretrained LM", "random LM", "pretrained LM − random LM"}
    assert by_lm["pretrained LM"].ci_low <= 0.05 <= by_lm["pretrained LM"].ci_high
    assert by_lm["random LM"].ci_low <= 0.01 <= by_lm["random LM"].ci_high
    contrast = by_lm["pretrained LM − random LM"]
    assert contrast.ci_low <= 0.04 <= contrast.ci_high and contrast.ci_low > 0 and contrast.statistic == "did"
    assert all(r.role == "exploratory" and r.verdict == "exploratory" for r in by_lm.values())
