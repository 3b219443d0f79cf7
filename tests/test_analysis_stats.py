"""Statistics and findings on constructed data with known effects, and on degenerate input.

Findings are computed on in-memory frames built by the synthetic sweep through the loader's own
assembly step (analysis.synthetic.runs_frame), so these tests need no MLflow store and run fast.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from analysis import stats
from analysis.findings import alignment, mutual_benefit, transfer
from analysis.pairing import paired, prepare
from analysis.results import InsufficientData
from analysis.sweep import all_findings
from analysis.importance import best_configs, param_importance, searched_params
from analysis.synthetic import Effects, SyntheticSweep, runs_frame


def clustered(effect: float, seeds: int = 8, per_seed: int = 4, seed: int = 0):
    """Paired differences: effect + a per-seed shift + noise, `per_seed` observations per seed."""
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(seeds), per_seed)
    values = effect + rng.normal(0, 0.01, seeds)[clusters] + rng.normal(0, 0.01, len(clusters))
    return values, clusters


# ----------------------------------------------------------------------------- stats

@pytest.mark.parametrize("effect, expected", [(0.05, stats.SUPPORTED), (0.0, stats.INCONCLUSIVE),
                                              (-0.05, stats.CONTRADICTED)])
def test_bootstrap_mean_finds_known_effect(effect, expected):
    values, clusters = clustered(effect)
    estimate = stats.bootstrap_mean(values, clusters)
    assert estimate.ci_low <= effect <= estimate.ci_high
    assert abs(estimate.estimate - effect) < 0.01
    assert stats.verdict(estimate.ci_low, estimate.ci_high, +1) == expected
    assert (estimate.n, estimate.n_seeds) == (32, 8)


def test_interval_covers_truth_at_nominal_rate():
    """Over 200 simulated studies of 6 seeds the 95% interval covers the true effect at least ~88% of the time."""
    covered = 0
    for replicate in range(200):
        values, clusters = clustered(0.05, seeds=6, per_seed=3, seed=replicate)
        estimate = stats.bootstrap_mean(values, clusters, resamples=500, seed=replicate)
        covered += estimate.ci_low <= 0.05 <= estimate.ci_high
    assert covered >= 176


def test_expanded_interval_is_wider_with_few_seeds():
    values, clusters = clustered(0.05, seeds=4)
    few = stats.bootstrap_mean(values, clusters)
    weights = stats.seed_weights(clusters)
    plain = np.percentile((weights @ values) / weights.sum(axis=1), [2.5, 97.5])
    assert few.ci_high - few.ci_low > plain[1] - plain[0]
    assert "4 seeds" in few.note


def test_slope_and_spearman_find_known_trends():
    rng = np.random.default_rng(11)
    clusters = np.repeat(np.arange(8), 4)
    x = np.tile(np.log([250, 500, 1000, 2000]), 8)
    y = 0.02 + 0.01 * x + rng.normal(0, 0.003, len(x))
    slope = stats.bootstrap_slope(x, y, clusters)
    assert slope.ci_low <= 0.01 <= slope.ci_high and stats.verdict(slope.ci_low, slope.ci_high) == stats.SUPPORTED
    strength = np.tile([0.0, 0.2, 0.4, 0.6], 8)
    rho = stats.bootstrap_spearman(strength, 0.05 - 0.1 * strength + rng.normal(0, 0.005, len(x)), clusters)
    assert rho.estimate < -0.8 and stats.verdict(rho.ci_low, rho.ci_high, -1) == stats.SUPPORTED
    flat = stats.bootstrap_spearman(strength, rng.normal(0, 0.01, len(x)), clusters)
    assert stats.verdict(flat.ci_low, flat.ci_high, -1) == stats.INCONCLUSIVE


def test_a_weak_rank_correlation_over_two_levels_and_three_seeds_is_not_supported():
    """uvlm demo's alignment study once printed 'supported' for rho = -0.29 (scipy p = 0.57): with two strengths
    every seed's own rho is -1 and the 27 bootstrap resamples all stay below -0.29."""
    strength = np.array([0.0, 0.9, 0.0, 0.9, 0.0, 0.9])
    benefit = np.array([-0.005, -0.017, -0.026, -0.075, 0.031, -0.002])  # mixed - understanding-only, seeds 0, 1, 2
    rho = stats.bootstrap_spearman(strength, benefit, np.repeat([0, 1, 2], 2))
    assert rho.estimate == pytest.approx(-0.2928, abs=1e-3) and rho.p_value > 0.5
    assert rho.ci_low < rho.estimate < 0 < rho.ci_high
    assert stats.verdict(rho.ci_low, rho.ci_high, -1) == stats.INCONCLUSIVE


def test_one_seed_gives_no_interval_and_says_why():
    estimate = stats.bootstrap_mean([0.04, 0.06], [7, 7])
    assert estimate.estimate == pytest.approx(0.05)
    assert math.isnan(estimate.ci_low) and "only 1 seed" in estimate.note
    assert stats.verdict(estimate.ci_low, estimate.ci_high) == stats.INCONCLUSIVE
    empty = stats.bootstrap_mean([], [])
    assert empty.n == 0 and "no paired observations" in empty.note


def test_verdict_rule():
    assert stats.verdict(0.01, 0.02, +1) == stats.SUPPORTED
    assert stats.verdict(0.01, 0.02, -1) == stats.CONTRADICTED
    assert stats.verdict(-0.02, -0.01, -1) == stats.SUPPORTED
    assert stats.verdict(-0.01, 0.02, +1) == stats.INCONCLUSIVE
    assert stats.verdict(math.nan, math.nan, +1) == stats.INCONCLUSIVE


@pytest.mark.parametrize("low, high, p, expected", [
    (-0.01, 0.015, 0.4, stats.EQUIVALENT),     # the whole interval inside ±0.02: no effect that matters
    (-0.01, 0.025, 0.4, stats.INCONCLUSIVE),   # straddles +δ: an effect that matters is not ruled out
    (-0.03, 0.01, 0.4, stats.INCONCLUSIVE),    # straddles −δ
    (0.03, 0.05, 0.001, stats.SUPPORTED),      # excludes zero, significant after correction
    (0.005, 0.015, 0.001, stats.SUPPORTED),    # excludes zero: supported, however small
    (0.005, 0.015, 0.2, stats.EQUIVALENT),     # excludes zero but not after correction: inside ±δ
    (0.03, 0.05, 0.2, stats.INCONCLUSIVE),     # excludes zero but not after correction
    (0.03, 0.05, math.nan, stats.INCONCLUSIVE),  # no test: no supported verdict
    (-0.05, -0.03, 0.001, stats.CONTRADICTED),
])
def test_verdict_with_the_smallest_effect_and_the_adjusted_p(low, high, p, expected):
    assert stats.verdict(low, high, +1, smallest_effect=0.02, p=p) == expected


# ----------------------------------------------------------------------------- findings on known effects

def mixing(**effects) -> pl.DataFrame:
    return runs_frame(SyntheticSweep(name="mixing", train_images=(250, 1000), seeds=tuple(range(6)),
                                     eval_steps=(500,), effects=Effects(**effects)))


# A null effect over 6 seeds has an interval far inside ±0.02: the data rule out an effect that matters.
@pytest.mark.parametrize("effect, expected", [(0.05, "supported"), (0.0, "equivalent"), (-0.05, "contradicted")])
def test_finding1_verdicts(effect, expected):
    report = mutual_benefit(mixing(understanding_benefit=effect, generation_benefit=effect))
    for metric in ("test/vqa/overall", "test/gen/probe/overall"):
        result = next(r for r in report.headlines if r.metric == metric and "trend" not in r.name)
        assert result.verdict == expected, result
        assert result.ci_low <= effect <= result.ci_high
        assert result.n == 12 and result.n_seeds == 6
    attributes = {r.group["attribute"] for r in report.results if r.name == "understanding benefit"}
    assert {"time", "weather", "battery", "weather_corner", "battery_corner", "overall", "score"} <= attributes


def test_finding1_trend_with_data_size():
    report = mutual_benefit(mixing(benefit_slope=0.02))
    trend = next(r for r in report.headlines if r.name == "understanding benefit trend with data size")
    assert trend.ci_low <= 0.02 <= trend.ci_high and trend.verdict == "supported"
    sizes = [r.group["size"] for r in report.results if r.name == "understanding benefit by data size"]
    assert sizes == [250.0, 1000.0]


def test_paired_difference_matches_manual_pairing():
    runs = mixing()
    pairs = paired(prepare(runs), "test/vqa/overall", {"arm": "mixed"}, {"arm": "understanding"}, ["size"])
    manual = (runs.filter(pl.col("arm") == "mixed").select("seed", "params.data.train_images", pl.col("metrics.test/vqa/overall").alias("m"))
              .join(runs.filter(pl.col("arm") == "understanding")
                    .select("seed", "params.data.train_images", pl.col("metrics.test/vqa/overall").alias("u")),
                    on=["seed", "params.data.train_images"]))
    assert pairs["difference"].mean() == pytest.approx((manual["m"] - manual["u"]).mean())


def test_finding2_alignment_per_seed_slope_is_the_headline_and_spearman_exploratory():
    runs = runs_frame(SyntheticSweep(name="alignment", arms=("understanding", "mixed"), train_images=(500,),
                                     seeds=tuple(range(5)), affine_strengths=(0.0, 0.3, 0.6), eval_steps=(500,),
                                     pairs=(("patch", "patch"), ("patch", "vq")),
                                     effects=Effects(alignment_slope=-0.1, unmatched_pair_penalty=-0.06)))
    report = alignment(runs)
    strength = next(r for r in report.headlines if r.group == {"factor": "strength"})
    assert strength.expected == "< 0" and strength.verdict == "supported" and strength.statistic == "slope"
    assert strength.ci_low <= -0.1 <= strength.ci_high and strength.n_seeds == 5
    pair = next(r for r in report.headlines if r.group == {"factor": "pair"})
    assert pair.verdict == "supported" and abs(pair.estimate - 0.06) < 0.015  # matched minus unmatched
    rho = next(r for r in report.results if r.group == {"factor": "strength", "rank": "spearman"})
    assert rho.role == "exploratory" and rho.verdict == "exploratory" and rho.estimate < -0.5
    by_strength = [r.estimate for r in report.results if r.name == "understanding benefit by strength"]
    assert by_strength == sorted(by_strength, reverse=True)
    assert any("generation" in s for s in report.skipped)


def test_finding3_transfer_and_freezing():
    runs = runs_frame(SyntheticSweep(name="transfer", arms=("understanding", "mixed"), train_images=(500,),
                                     seeds=tuple(range(5)), hide=True, eval_steps=(500,),
                                     freezing=("none", "lm_frozen", "adapters_frozen"),
                                     effects=Effects(transfer=0.2, transfer_lm_frozen=0.0)))
    report = transfer(runs)
    by_name = {r.name: r for r in report.headlines}
    assert by_name["transfer over control"].ci_low <= 0.2 <= by_name["transfer over control"].ci_high
    assert by_name["transfer over understanding-only"].verdict == "supported"
    lm = by_name["transfer lives in the LM"]
    assert lm.verdict == "supported" and lm.ci_low <= 0.2 <= lm.ci_high and lm.group == {"contrast": "none − lm_frozen"}
    frozen = next(r for r in report.results if r.group.get("freezing") == "lm_frozen" and "freezing=" in r.name)
    assert frozen.verdict == "exploratory" and frozen.ci_low <= 0.0 <= frozen.ci_high and "near zero" in frozen.note
    own = {(r.group["arm"], r.group["condition"], r.group["freezing"]): r for r in report.results
           if r.name == "accuracy on the hidden value (weather)"}
    assert own[("mixed", "hidden", "none")].ci_low <= 0.5 <= own[("mixed", "hidden", "none")].ci_high  # 0.3 + transfer
    assert own[("mixed", "control", "none")].ci_low <= 0.3 <= own[("mixed", "control", "none")].ci_high
    others = next(r for r in report.results if r.metric == "test/vqa_hidden/other_attributes" and r.name == "transfer over control")
    assert others.ci_low <= 0.0 <= others.ci_high  # the hidden images' other attributes gain nothing


def test_contradicted_transfer_is_reported():
    runs = runs_frame(SyntheticSweep(name="transfer", arms=("understanding", "mixed"), train_images=(500,),
                                     seeds=tuple(range(5)), hide=True, eval_steps=(500,), effects=Effects(transfer=-0.1)))
    result = next(r for r in transfer(runs).headlines if r.name == "transfer over control")
    assert result.verdict == "contradicted"


# ----------------------------------------------------------------------------- degenerate input

def test_one_seed_is_inconclusive_with_a_message():
    runs = runs_frame(SyntheticSweep(seeds=(0,), train_images=(500,), eval_steps=(500,)))
    report = mutual_benefit(runs)
    result = report.headlines[0]
    assert result.verdict == "inconclusive" and "only 1 seed" in result.note
    assert any("1 seed" in limit for limit in report.limits)


def test_missing_arm_names_what_is_there():
    runs = runs_frame(SyntheticSweep(arms=("understanding", "generation"), seeds=(0, 1), train_images=(500,), eval_steps=(500,)))
    with pytest.raises(InsufficientData, match="mixed arm.*generation, understanding"):
        mutual_benefit(runs)
    out = all_findings(runs)
    assert all(isinstance(v, str) for v in out.values())
    only_mixed = runs_frame(SyntheticSweep(arms=("understanding", "mixed"), seeds=(0, 1, 2), train_images=(500,), eval_steps=(500,)))
    report = mutual_benefit(only_mixed)
    assert any("no finished generation-only runs" in s for s in report.skipped)


def test_failed_runs_are_left_out_and_counted():
    runs = runs_frame(SyntheticSweep(seeds=tuple(range(6)), train_images=(500,), fail_fraction=0.3, eval_steps=(250, 500)))
    failed = runs.filter(pl.col("status") == "FAILED").height
    assert failed > 0
    report = mutual_benefit(runs)
    assert any(f"{failed} failed" in limit for limit in report.limits)
    used = report.tables["finding1_understanding_pairs"]["run_id"].to_list()
    assert not set(used) & set(runs.filter(pl.col("status") == "FAILED")["run_id"].to_list())
    everything_failed = runs.with_columns(pl.lit("FAILED").alias("status"))
    with pytest.raises(InsufficientData, match="no finished runs"):
        mutual_benefit(everything_failed)


def test_missing_factor_and_metric_messages():
    runs = mixing()
    with pytest.raises(InsufficientData, match="alignment factor"):
        alignment(runs)
    with pytest.raises(InsufficientData, match="hide_from_understanding"):
        transfer(runs)


# ----------------------------------------------------------------------------- importance

def test_importance_and_best_config_per_arm():
    runs = runs_frame(SyntheticSweep(seeds=tuple(range(6)), train_images=(250, 1000), eval_steps=(500,),
                                     searched={"optim.lr": (1e-5, 1e-1, True), "optim.weight_decay": (0.0, 0.1, False)},
                                     effects=Effects(noise=0.002)))
    assert searched_params(runs) == ["optim.lr", "optim.weight_decay"]
    importance = {a.arm: a for a in param_importance(runs)}
    assert set(importance) == {"understanding", "generation", "mixed"}
    for arm in importance.values():
        assert max(arm.importances, key=arm.importances.get) == "optim.lr", arm  # the only parameter with an effect
    best = best_configs(runs)
    assert best["arm"].to_list() == ["generation", "mixed", "understanding"]
    top = runs.filter(pl.col("arm") == "mixed").sort("metrics.test/vqa/overall", descending=True).row(0, named=True)
    assert best.filter(pl.col("arm") == "mixed")["run_id"].item() == top["run_id"]


def test_single_task_arm_at_one_level_pairs_with_the_baseline_level():
    """As in a space of variants: understanding-only exists only at strength 0, mixed at 0, 0.3 and 0.6."""
    runs = runs_frame(SyntheticSweep(name="variants", arms=("understanding", "mixed"), train_images=(500,),
                                     seeds=tuple(range(5)), affine_strengths=(0.0, 0.3, 0.6), eval_steps=(500,),
                                     effects=Effects(understanding_benefit=0.05, alignment_slope=-0.1)))
    runs = runs.filter((pl.col("arm") == "mixed") | (pl.col("params.alignment.affine_strength") == 0.0))
    benefit = next(r for r in mutual_benefit(runs).headlines if r.metric == "test/vqa/overall")
    assert benefit.n == 5 and benefit.ci_low <= 0.05 <= benefit.ci_high  # only strength 0 of mixed is compared
    report = alignment(runs)
    slope = next(r for r in report.headlines if r.group == {"factor": "strength"})
    assert slope.n == 5 and slope.verdict == "supported" and slope.ci_low <= -0.1 <= slope.ci_high  # one slope a seed
    rho = next(r for r in report.results if r.group == {"factor": "strength", "rank": "spearman"})
    assert rho.n == 15
