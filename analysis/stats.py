"""Effects with uncertainty: cluster bootstrap over seeds, vectorised in numpy, and the verdict rule.

Every statistic here is computed on observations that belong to clusters
(the seed of the trials that produced them: runs of one seed share data
order and initialisation, so they are not independent). A bootstrap resample
draws seeds with replacement; resample b gives observation i the weight
W[b, i] = how often its seed was drawn. Mean, slope and rank correlation are
then weighted statistics over the whole (B, n) weight matrix at once.

The interval is the *expanded* percentile interval (Hesterberg 2015, "What
teachers should know about the bootstrap"): with k seeds the percentiles are
taken at Phi(sqrt(k / (k - 1)) * t_{alpha/2, k-1}) instead of alpha/2, which
undoes the plain percentile interval's narrowness for small k (with 3 seeds
it spans nearly the whole bootstrap distribution).

Even expanded, a bootstrap over k seeds cannot reach beyond the most extreme
single-seed estimates: with 3 or 4 seeds, a null effect has every seed on one
side 25% or 12.5% of the time. So the reported interval is the union of the
bootstrap interval and the t-interval over the per-seed estimates (mean,
slope or rank correlation within each seed; k - 1 degrees of freedom), which
keeps its coverage for few seeds; with many seeds the two agree.

Power (`power`, `minimum_detectable_effect`, `seeds_for_half_width`) treats the per-seed paired
effects as the sample of a one-sample t-test: two-sided at 5%, exact noncentral t. Multiplicity of
exploratory results and of the headline results as a family: `holm` (Holm 1979, step-down, controls the
family-wise error rate).

`verdict(low, high, direction, smallest_effect, p)`: "supported" when the 95%
interval excludes zero in the paper's direction and the (Holm-adjusted) p value
is at most ALPHA, "contradicted" the same in the opposite direction,
"equivalent" when the interval lies inside (-smallest_effect, +smallest_effect)
(no effect that matters), "inconclusive" otherwise (including no interval).

`gate(arm_means, floors, margin, ceiling)`: before any verdict, the arms a headline compares must have
learned and must not be saturated: "below baseline" when an arm's mean is at or below its constant-answer
baseline plus the margin, "at ceiling" when it is at or above the ceiling. A benefit between two unlearned
or two saturated arms says nothing about data, so such a headline gets no verdict (and no place in the
Holm family).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

RESAMPLES = 2000
LEVEL = 0.95
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
EQUIVALENT = "equivalent"
"""No effect beyond the smallest effect that matters: the whole interval lies inside ±smallest_effect."""
BELOW_BASELINE, AT_CEILING = "below baseline", "at ceiling"
"""No verdict: a compared arm did not beat its constant-answer baseline by the margin, or reached the ceiling."""
GATED = (BELOW_BASELINE, AT_CEILING)
ALPHA = 0.05
"""Family-wise error rate of the headline verdicts (their p values are Holm-adjusted over the family)."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap interval over seeds."""

    estimate: float
    ci_low: float
    ci_high: float
    n: int
    n_seeds: int
    p_value: float
    """Two-sided; see the function that made it (nan when it cannot be computed)."""
    note: str = ""
    seed_sd: float = math.nan
    """Standard deviation (ddof 1) of the per-seed estimates: what power and seed counts are computed from."""


def seed_weights(clusters: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(B, n) weights: how often each observation's cluster was drawn in each resample."""
    labels, index = np.unique(clusters, return_inverse=True)
    k = len(labels)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, k, size=(resamples, k))
    counts = np.zeros((resamples, k))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    return counts[:, index]


def percentile_interval(samples: np.ndarray, clusters: int, level: float = LEVEL) -> tuple[float, float]:
    """Expanded percentile interval of bootstrap samples drawn over `clusters` seeds (module docstring)."""
    samples = samples[np.isfinite(samples)]
    if samples.size == 0 or clusters < 2:
        return math.nan, math.nan
    alpha = 1 - level
    z = math.sqrt(clusters / (clusters - 1)) * scipy_stats.t.ppf(alpha / 2, clusters - 1)
    tail = 100 * float(scipy_stats.norm.cdf(z))
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _too_few(values: np.ndarray, clusters: np.ndarray, estimate: float, minimum: int = 2) -> Estimate | None:
    n_seeds = len(np.unique(clusters))
    if len(values) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0, math.nan, "no paired observations")
    if n_seeds < minimum:
        return Estimate(estimate, math.nan, math.nan, len(values), n_seeds, math.nan,
                        f"only {n_seeds} seed{'s' if n_seeds != 1 else ''}: no interval over seeds can be formed")
    return None


def bootstrap_mean(values, clusters, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """Mean of paired differences; interval from resampling seeds; p from a t-test on the per-seed means."""
    values, clusters = np.asarray(values, float), np.asarray(clusters)
    estimate = float(values.mean()) if len(values) else math.nan
    if (degenerate := _too_few(values, clusters, estimate)) is not None:
        return degenerate
    weights = seed_weights(clusters, resamples, seed)
    boot = (weights @ values) / weights.sum(axis=1)
    seed_means = np.array([values[clusters == c].mean() for c in np.unique(clusters)])
    low, high = _union_t(percentile_interval(boot, len(seed_means)), seed_means)
    p_value = _t_test(seed_means)
    return Estimate(estimate, low, high, len(values), len(seed_means), p_value, _few_seeds_note(len(seed_means)),
                    _sd(seed_means))


def bootstrap_slope(x, y, clusters, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """OLS slope of y on x; interval from resampling seeds; p from a t-test on per-seed slopes."""
    x, y, clusters = np.asarray(x, float), np.asarray(y, float), np.asarray(clusters)
    estimate = _weighted_slope(np.ones((1, len(x))), x, y)[0] if len(x) else math.nan
    if (degenerate := _too_few(y, clusters, estimate)) is not None:
        return degenerate
    if (single := _one_level(x, clusters, "only one value of the covariate: no slope")) is not None:
        return single
    boot = _weighted_slope(seed_weights(clusters, resamples, seed), x, y)
    per_seed = [_weighted_slope(np.ones((1, (clusters == c).sum())), x[clusters == c], y[clusters == c])[0]
                for c in np.unique(clusters)]
    low, high = _union_t(percentile_interval(boot, len(per_seed)), np.array(per_seed))
    n_seeds = len(per_seed)
    return Estimate(float(estimate), low, high, len(x), n_seeds, _t_test(np.array(per_seed)), _few_seeds_note(n_seeds),
                    _sd(np.array(per_seed)))


def bootstrap_spearman(x, y, clusters, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """Spearman rank correlation of y with x; interval from resampling seeds; p from scipy's test on all points."""
    x, y, clusters = np.asarray(x, float), np.asarray(y, float), np.asarray(clusters)
    estimate = _weighted_spearman(np.ones((1, len(x))), x, y)[0] if len(x) else math.nan
    if (degenerate := _too_few(y, clusters, estimate)) is not None:
        return degenerate
    if (single := _one_level(x, clusters, "only one alignment level: no rank correlation")) is not None:
        return single
    weights = seed_weights(clusters, resamples, seed)
    boot = np.concatenate([_weighted_spearman(weights[i:i + 250], x, y) for i in range(0, len(weights), 250)])
    per_seed = [_weighted_spearman(np.ones((1, (clusters == c).sum())), x[clusters == c], y[clusters == c])[0]
                for c in np.unique(clusters)]
    low, high = _union_t(percentile_interval(boot, len(per_seed)), np.array(per_seed))
    # With two levels a seed's own correlation is always ±1, and with 3 seeds the bootstrap has 27
    # resamples: neither widens a pooled rho that no test supports. The Fisher-z interval on all
    # points does (it needs more than 3 points; fewer leave the whole range).
    fisher_low, fisher_high = _fisher_interval(float(estimate), len(x))
    low, high = max(min(low, fisher_low), -1.0), min(max(high, fisher_high), 1.0)  # stays within [-1, 1]
    p_value = float(scipy_stats.spearmanr(x, y).pvalue) if np.ptp(y) > 0 else math.nan
    n_seeds = len(np.unique(clusters))
    return Estimate(float(estimate), low, high, len(x), n_seeds, p_value, _few_seeds_note(n_seeds))


def seed_slopes(x, y, clusters) -> tuple[np.ndarray, np.ndarray]:
    """OLS slope of y on x within each cluster (seed): (slopes, cluster labels); a cluster with one x gives nan."""
    x, y, clusters = np.asarray(x, float), np.asarray(y, float), np.asarray(clusters)
    labels = np.unique(clusters)
    slopes = np.array([_weighted_slope(np.ones((1, int((clusters == c).sum()))), x[clusters == c], y[clusters == c])[0]
                       for c in labels])
    return slopes, labels


def bootstrap_seed_slope(x, y, clusters, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """Mean over seeds of each seed's own OLS slope; interval and p as `bootstrap_mean` over the per-seed slopes."""
    slopes, labels = seed_slopes(x, y, clusters)
    keep = np.isfinite(slopes)
    if len(slopes) and not keep.any():
        return Estimate(math.nan, math.nan, math.nan, len(np.asarray(x)), len(labels), math.nan,
                        "only one value of the covariate within each seed: no slope")
    return bootstrap_mean(slopes[keep], labels[keep], resamples, seed)


def verdict(low: float, high: float, direction: int = 1, smallest_effect: float = 0.0, p: float = 0.0) -> str:
    """supported / contradicted / equivalent / inconclusive for an interval, the paper's direction (+1 or -1), the
    smallest effect that matters and the result's p value (Holm-adjusted over its family; the default 0 judges by
    the interval alone, and nan, no test, never supports or contradicts)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE
    low, high = sorted((direction * low, direction * high))
    if p <= ALPHA and low > 0:
        return SUPPORTED
    if p <= ALPHA and high < 0:
        return CONTRADICTED
    if -smallest_effect < low and high < smallest_effect:
        return EQUIVALENT
    return INCONCLUSIVE


def gate(arm_means: dict[str, float], floors: dict[str, float], margin: float = 0.0,
         ceiling: float | None = None) -> tuple[str | None, str]:
    """(BELOW_BASELINE or AT_CEILING, a note naming the arm and both numbers) when a compared arm (name -> mean final
    value) sits at or below its floor (name -> its constant-answer baseline's mean) + margin, or at or above the
    ceiling; (None, "") when every arm has learned and none is saturated. An arm without a floor is not checked."""
    for arm, mean in arm_means.items():
        if arm in floors and mean <= floors[arm] + margin:
            above = f" + margin {margin:g}" if margin else ""
            return BELOW_BASELINE, (f"no verdict: {arm} averages {mean:.4f}, at or below its constant-answer baseline "
                                    f"{floors[arm]:.4f}{above}")
    if ceiling is not None:
        for arm, mean in arm_means.items():
            if mean >= ceiling:
                return AT_CEILING, f"no verdict: {arm} averages {mean:.4f}, at or above the ceiling {ceiling:g}"
    return None, ""


def power(effect: float, sd: float, seeds: int, alpha: float = 0.05) -> float:
    """Probability that a two-sided one-sample t-test at `alpha` over `seeds` per-seed effects rejects zero."""
    if seeds < 2 or not (sd > 0 and math.isfinite(sd)):
        return math.nan
    df, noncentrality = seeds - 1, effect * math.sqrt(seeds) / sd
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    value = float(scipy_stats.nct.sf(critical, df, noncentrality) + scipy_stats.nct.cdf(-critical, df, noncentrality))
    if not math.isfinite(value):  # scipy's nct fails far in the tail (power ~1 there); the normal limit is exact enough
        value = float(scipy_stats.norm.sf(critical - noncentrality) + scipy_stats.norm.cdf(-critical - noncentrality))
    return min(max(value, 0.0), 1.0)


def minimum_detectable_effect(sd: float, seeds: int, target: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest |effect| that the t-test over `seeds` per-seed effects detects with probability `target`."""
    if seeds < 2 or not (sd > 0 and math.isfinite(sd)):
        return math.nan
    from scipy.optimize import brentq

    high = sd
    while power(high, sd, seeds, alpha) < target:  # bracket the root; power rises with the effect
        high *= 2
    return float(brentq(lambda effect: power(effect, sd, seeds, alpha) - target, 0.0, high, xtol=sd * 1e-9))


def seeds_for_half_width(sd: float, half_width: float, level: float = LEVEL, limit: int = 100_000) -> int | None:
    """The fewest seeds whose t-interval over per-seed effects of this SD has at most this half-width."""
    if not (math.isfinite(sd) and sd >= 0):
        return None
    if sd == 0:
        return 2
    # t_{n-1} * sd / sqrt(n) falls with n: bisect on n between 2 and `limit`.
    def width(n: int) -> float:
        return scipy_stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)

    if width(limit) > half_width:
        return None
    low, high = 2, limit
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if width(middle) > half_width else (low, middle)
    return low


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p values (same order; nan stays nan and does not count towards the family)."""
    p = np.asarray(p_values, float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


# ----------------------------------------------------------------------------- helpers

def _sd(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.std(ddof=1)) if len(values) >= 2 else math.nan


def _union_t(interval: tuple[float, float], per_seed: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The bootstrap interval widened to the t-interval over per-seed estimates where that is wider."""
    per_seed = per_seed[np.isfinite(per_seed)]
    low, high = interval
    if len(per_seed) < 2 or not (math.isfinite(low) and math.isfinite(high)):
        return low, high
    half = scipy_stats.t.ppf(0.5 + level / 2, len(per_seed) - 1) * per_seed.std(ddof=1) / math.sqrt(len(per_seed))
    centre = float(per_seed.mean())
    return min(low, centre - half), max(high, centre + half)


def _fisher_interval(rho: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Interval of a Spearman rho from atanh(rho) ~ Normal(atanh(rho), 1.06 / (n - 3)) (Fieller et al., 1957)."""
    if n <= 3 or not math.isfinite(rho):
        return -1.0, 1.0
    z = math.atanh(min(max(rho, -0.999999), 0.999999))
    half = scipy_stats.norm.ppf(0.5 + level / 2) * math.sqrt(1.06 / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


def _one_level(x: np.ndarray, clusters: np.ndarray, note: str) -> Estimate | None:
    if len(np.unique(x)) >= 2:
        return None
    return Estimate(math.nan, math.nan, math.nan, len(x), len(np.unique(clusters)), math.nan, note)


def _few_seeds_note(n_seeds: int) -> str:
    if n_seeds < 5:
        return (f"{n_seeds} seeds: the bootstrap has few distinct resamples ({n_seeds}^{n_seeds} = {n_seeds ** n_seeds}), "
                "so the interval is widened to the t-interval over per-seed estimates; more seeds would make it firmer")
    return ""


def _t_test(values: np.ndarray) -> float:
    if len(values) < 2 or np.ptp(values) == 0:
        return math.nan
    return float(scipy_stats.ttest_1samp(values, 0.0).pvalue)


def _weighted_slope(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    total = weights.sum(axis=1)
    x_mean = (weights @ x) / total
    y_mean = (weights @ y) / total
    dx = x[None, :] - x_mean[:, None]
    sxx = (weights * dx * dx).sum(axis=1)
    sxy = (weights * dx * (y[None, :] - y_mean[:, None])).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sxx > 0, sxy / sxx, np.nan)


def _weighted_ranks(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mid-ranks of values in each weighted resample: (B, n)."""
    below = (values[None, :] < values[:, None]).astype(float)  # below[i, j] = values[j] < values[i]
    equal = (values[None, :] == values[:, None]).astype(float)
    return weights @ below.T + (weights @ equal.T + 1.0) / 2.0


def _weighted_spearman(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    rx, ry = _weighted_ranks(weights, x), _weighted_ranks(weights, y)
    total = weights.sum(axis=1, keepdims=True)
    dx = rx - (weights * rx).sum(axis=1, keepdims=True) / total
    dy = ry - (weights * ry).sum(axis=1, keepdims=True) / total
    cov = (weights * dx * dy).sum(axis=1)
    var = (weights * dx * dx).sum(axis=1) * (weights * dy * dy).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, cov / np.sqrt(var), np.nan)
