"""The report's figures (matplotlib, Agg): each function returns a Figure, or raises `Skip` with the sentence
the report prints in its place when the sweep lacks what the figure needs.

Every figure carries a title, axis labels with units and a legend, so it reads without the text.
Intervals are the 95% bootstrap intervals over seeds of analysis.stats.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from analysis import stats  # noqa: E402
from analysis.findings import HIDDEN_METRIC  # noqa: E402
from analysis.frames import factor_names  # noqa: E402
from analysis.headlines import run_areas  # noqa: E402
from analysis.pairing import prepare  # noqa: E402
from analysis.results import FindingReport, InsufficientData, Result  # noqa: E402
from trainables.config import Arm  # noqa: E402
from trainables.mlflow_names import CORNERS, FINISHED, Metric, Tag, overall  # noqa: E402

HISTORY_METRICS = (overall(Metric.VQA), overall(Metric.GEN_PROBE), Metric.TRAIN_LOSS)
"""The per-step metrics of the learning curves."""

ARM_COLOURS = {Arm.UNDERSTANDING: "#1f77b4", Arm.GENERATION: "#ff7f0e", Arm.MIXED: "#2ca02c"}
SIDE_COLOURS = {"understanding": "#1f77b4", "generation": "#ff7f0e"}
SCORE = "score (0–1)"
DIFF = "difference in score (mixed − single-task)"


class Skip(Exception):
    """A figure the sweep cannot support; the message is the sentence the report shows instead."""


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _with_errors(results: list[Result]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Estimates and matplotlib yerr (distances to the interval ends; none where there is no interval)."""
    y = np.array([r.estimate for r in results])
    low = np.array([r.ci_low if math.isfinite(r.ci_low) else r.estimate for r in results])
    high = np.array([r.ci_high if math.isfinite(r.ci_high) else r.estimate for r in results])
    return y, [y - low, high - y]


def _errorbar(axis, x, results: list[Result], **style) -> None:
    y, yerr = _with_errors(results)
    axis.errorbar(x, y, yerr=yerr, capsize=4, marker="o", **style)


def _zero(axis) -> None:
    axis.axhline(0.0, color="grey", linewidth=0.8, linestyle="--", label="no difference")


def _mean_ci(values: np.ndarray, seeds: np.ndarray) -> tuple[float, float, float]:
    estimate = stats.bootstrap_mean(values, seeds)
    low = estimate.ci_low if math.isfinite(estimate.ci_low) else estimate.estimate
    high = estimate.ci_high if math.isfinite(estimate.ci_high) else estimate.estimate
    return estimate.estimate, low, high


def benefit_vs_size(report: FindingReport | str, runs: pl.DataFrame):
    """Left: each arm's score against data size; right: the benefit of mixing against data size."""
    if isinstance(report, str):
        raise Skip(f"Benefit against data size is not drawn: {report}")
    by_size = [r for r in report.results if r.name.endswith("by data size")]
    if not by_size:
        raise Skip("Benefit against data size is not drawn: the sweep has one data size.")
    prepared = prepare(runs).filter(pl.col("status") == FINISHED)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    metrics = sorted({r.metric for r in by_size})
    for metric, style in zip(metrics, ("-", "--")):
        column = f"metrics.{metric}"
        for arm in sorted(prepared["arm"].unique().to_list()):
            rows = prepared.filter((pl.col("arm") == arm) & pl.col(column).is_not_null())
            if rows.is_empty():
                continue
            sizes = sorted(rows["size"].unique().to_list())
            points = [_mean_ci(rows.filter(pl.col("size") == s)[column].to_numpy(),
                               rows.filter(pl.col("size") == s)["seed"].to_numpy()) for s in sizes]
            y = np.array([p[0] for p in points])
            left.errorbar(sizes, y, yerr=[y - [p[1] for p in points], [p[2] for p in points] - y], capsize=3,
                          marker="o", linestyle=style, color=ARM_COLOURS.get(arm), label=f"{arm}: {metric}")
    left.set(xscale="log", xlabel="training images (log scale)", ylabel=SCORE, title="Score per arm against data size")
    left.legend(fontsize=7)
    for side in ("understanding", "generation"):
        results = sorted((r for r in by_size if r.name.startswith(side)), key=lambda r: r.group["size"])
        if results:
            _errorbar(right, [r.group["size"] for r in results], results, color=SIDE_COLOURS[side],
                      label=f"{results[0].comparison} on {results[0].metric}")
    _zero(right)
    right.set(xscale="log", xlabel="training images (log scale)", ylabel=DIFF,
              title="Benefit of mixed training against data size (95% CI over seeds)")
    right.legend(fontsize=7)
    figure.tight_layout()
    return figure


def attribute_bars(report: FindingReport | str):
    """The benefit per attribute and overall, understanding and generation side by side."""
    if isinstance(report, str):
        raise Skip(f"Per-attribute benefits are not drawn: {report}")
    results = [r for r in report.results if r.name in ("understanding benefit", "generation benefit") and "attribute" in r.group]
    if not results:
        raise Skip("Per-attribute benefits are not drawn: no paired understanding or generation metric.")
    labels = list(dict.fromkeys(r.group["attribute"] for r in results))
    figure, axis = plt.subplots(figsize=(12, 4.5))
    width = 0.38
    for offset, side in ((-width / 2, "understanding"), (width / 2, "generation")):
        side_results = {r.group["attribute"]: r for r in results if r.name.startswith(side)}
        if not side_results:
            continue
        x = [labels.index(a) + offset for a in side_results]
        values = list(side_results.values())
        y, yerr = _with_errors(values)
        axis.bar(x, y, width, yerr=yerr, capsize=3, color=SIDE_COLOURS[side],
                 label=f"{values[0].comparison} ({f'{Metric.VQA}, caption' if side == 'understanding' else Metric.GEN})")
    _zero(axis)
    axis.set_xticks(range(len(labels)), labels, rotation=20)
    axis.set(xlabel="attribute / metric", ylabel=DIFF, title="Benefit of mixed training per attribute (95% CI over seeds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def benefit_curves(findings: dict[int, FindingReport | str]):
    """Each declared trend headline: the paired benefit against records seen, mean over seeds with its 95% band."""
    curves = {name.removeprefix("headline_").removesuffix("_curve").replace("_", " "): table
              for report in findings.values() if isinstance(report, FindingReport)
              for name, table in report.tables.items() if name.startswith("headline_") and name.endswith("_curve")}
    if not curves:
        raise Skip("The benefit against records seen is not drawn: no trend headline is declared (statistic: trend).")
    figure, axis = plt.subplots(figsize=(8, 4.5))
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    by_records = all(table["records"].null_count() == 0 for table in curves.values())
    for name, table in curves.items():
        x_column = "records" if by_records else "fraction"
        points = []
        for x in sorted(table[x_column].unique().to_list()):
            rows = table.filter(pl.col(x_column) == x)
            points.append((x, *_mean_ci(rows["difference"].to_numpy(), rows["seed"].to_numpy())))
        x, y, low, high = map(np.array, zip(*points))
        colour = next(colours)
        axis.plot(x, y, marker="o", color=colour, label=f"{name} ({table['metric'][0]})")
        axis.fill_between(x, low, high, color=colour, alpha=0.2)
    _zero(axis)
    axis.set_xscale("log")
    axis.set(xlabel="records seen by the control run (log scale)" if by_records else "fraction of the budget (log scale)",
             ylabel="treatment − control (score)", title="Benefit along the runs (mean over seeds, 95% band)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def alignment_curve(report: FindingReport | str, runs: pl.DataFrame | None = None, history: pl.DataFrame | None = None):
    """Left: the benefit against affine strength; right: the benefit per encoder/space pair. A study without an
    understanding-only control (spaces/alignment.yaml): the mixed runs' own scores against strength instead."""
    if isinstance(report, str):
        raise Skip(f"The alignment curve is not drawn: {report}")
    by_strength = [r for r in report.results if r.name.endswith("by strength")]
    by_pair = [r for r in report.results if r.name.endswith("by pair")]
    panels = [p for p in (by_strength, by_pair) if p]
    if not panels:
        return _scores_by_strength(runs, history)
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    axes = list(axes[0])
    if by_strength:
        axis = axes.pop(0)
        for side in ("understanding", "generation"):
            results = sorted((r for r in by_strength if r.name.startswith(side)), key=lambda r: r.group["strength"])
            if results:
                _errorbar(axis, [r.group["strength"] for r in results], results, color=SIDE_COLOURS[side],
                          label=f"{results[0].comparison} on {results[0].metric}")
        _zero(axis)
        axis.set(xlabel="affine misalignment strength s (0 = aligned)", ylabel=DIFF,
                 title="Benefit against misalignment (95% CI over seeds)")
        axis.legend(fontsize=7)
    if by_pair:
        axis = axes.pop(0)
        pairs = list(dict.fromkeys(r.group["pair"] for r in by_pair))
        for offset, side in ((-0.2, "understanding"), (0.2, "generation")):
            results = [r for r in by_pair if r.name.startswith(side)]
            if results:
                y, yerr = _with_errors(results)
                axis.bar([pairs.index(r.group["pair"]) + offset for r in results], y, 0.4, yerr=yerr,
                         capsize=3, color=SIDE_COLOURS[side], label=f"{results[0].comparison} on {results[0].metric}")
        _zero(axis)
        axis.set_xticks(range(len(pairs)), pairs, rotation=15)
        axis.set(xlabel="understanding encoder → generation space", ylabel=DIFF,
                 title="Benefit per encoder/space pair (95% CI over seeds)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def _scores_by_strength(runs: pl.DataFrame | None, history: pl.DataFrame | None):
    """The mixed runs' VQA against strength, each seed a thin line and the mean over seeds with its 95% CI: at the
    final evaluation and as the mean over the evaluations along each run (the area the headline slope reads)."""
    metric, strength = overall(Metric.VQA), "params.alignment.affine_strength"
    if runs is None or strength not in runs.columns or f"metrics.{metric}" not in runs.columns:
        raise Skip("The alignment curve is not drawn: no run logged an affine strength and a VQA score")
    mixed = (prepare(runs).filter((pl.col("status") == FINISHED) & (pl.col("arm") == Arm.MIXED))
             .select("run_id", "seed", pl.col(strength).cast(pl.Float64).alias("strength"),
                     pl.col(f"metrics.{metric}").alias("final evaluation")))
    if mixed.is_empty():
        raise Skip("The alignment curve is not drawn: no finished mixed run")
    panels = ["final evaluation"]
    if history is not None and not history.is_empty():
        try:  # the area the headline slope reads
            area = run_areas(prepare(runs).filter(pl.col("run_id").is_in(mixed["run_id"].to_list())), history, metric)
            mixed = mixed.join(area.rename({"value": "mean over the evaluations"}), on="run_id", how="left")
            panels.append("mean over the evaluations")
        except InsufficientData:
            pass  # fewer than 2 evaluations a run: the final evaluation only
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, column in zip(axes[0], panels):
        for (_,), seed in mixed.sort("strength").group_by("seed", maintain_order=True):
            axis.plot(seed["strength"], seed[column], color="#bbbbbb", linewidth=0.8)
        points = []
        for x in sorted(mixed["strength"].unique().to_list()):
            rows = mixed.filter((pl.col("strength") == x) & pl.col(column).is_not_null())
            points.append((x, *_mean_ci(rows[column].to_numpy(), rows["seed"].to_numpy())))
        x, y, low, high = map(np.array, zip(*points))
        axis.errorbar(x, y, yerr=[y - low, high - y], marker="o", capsize=3, color=SIDE_COLOURS["understanding"],
                      label="mean over seeds (95% CI); grey: one seed")
        axis.set(xlabel="affine misalignment strength s (0 = aligned)", ylabel=f"{metric}, {column}",
                 title=f"Mixed runs against misalignment: {column}")
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def transfer_bars(report: FindingReport | str, runs: pl.DataFrame):
    """Accuracy on the hidden value: mixed, its control and understanding-only, per freezing policy."""
    if isinstance(report, str):
        raise Skip(f"Transfer bars are not drawn: {report}")
    column = f"metrics.{HIDDEN_METRIC}"
    prepared = prepare(runs).filter((pl.col("status") == FINISHED) & pl.col("hidden") & pl.col(column).is_not_null())
    groups = [(Arm.MIXED, False, "mixed (value only in generation data)", "#2ca02c"),
              (Arm.MIXED, True, "mixed control (value absent everywhere)", "#7f7f7f"),
              (Arm.UNDERSTANDING, False, "understanding-only", "#1f77b4")]
    order = ["none", "adapters_frozen", "lm_frozen"]
    freezings = sorted(prepared["freezing"].unique().to_list(), key=lambda f: (order.index(f) if f in order else 9, f))
    bars = []
    for arm, control, label, colour in groups:
        values = {}
        for position, freezing in enumerate(freezings):
            rows = prepared.filter((pl.col("arm") == arm) & (pl.col("hide_control") == control) & (pl.col("freezing") == freezing))
            if not rows.is_empty():
                values[position] = _mean_ci(rows[column].to_numpy(), rows["seed"].to_numpy())
        if values:
            bars.append((label, colour, values))
    figure, axis = plt.subplots(figsize=(max(6, 3 * len(freezings) + 2), 4.5))
    width = 0.8 / len(bars)
    for index, (label, colour, values) in enumerate(bars):
        offset = (index - (len(bars) - 1) / 2) * width
        estimates = np.array([v[0] for v in values.values()])
        axis.bar([p + offset for p in values], estimates, width, capsize=3, color=colour, label=label,
                 yerr=[estimates - [v[1] for v in values.values()], [v[2] for v in values.values()] - estimates])
    axis.set_xlim(-0.6, len(freezings) - 0.4)
    names = {"none": "LM and adapters train", "lm_frozen": "LM frozen", "adapters_frozen": "adapters frozen"}
    axis.set_xticks(range(len(freezings)), [names.get(f, f) for f in freezings])
    axis.set(xlabel="freezing policy", ylabel=f"{HIDDEN_METRIC} ({SCORE})",
             title="Understanding of the value seen only in generation data (95% CI over seeds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def icon_corners(runs: pl.DataFrame):
    """The requested weather's icon in the requested corner (trainables.icons), per corner and cell of the sweep,
    beside the constant generation (each grid cell's most frequent code)."""
    keys = [*CORNERS, "overall"]
    model, baseline = f"metrics.{overall(Metric.GEN_ICON)}", f"metrics.{overall(Metric.BASELINE_GEN_ICON)}"
    done = runs.filter(pl.col("status") == FINISHED)
    if model not in done.columns or done[model].drop_nulls().is_empty():
        raise Skip(f"Icon placement is not drawn: no run scored {Metric.GEN_ICON} (discrete generation spaces on "
                   f"smart-watch data, with prompts naming the weather and its corner).")
    done = done.filter(pl.col(model).is_not_null())
    factors = factor_names(done)
    labels = (pl.concat_str([pl.lit(f"{name}=") + pl.col(f"tags.{Tag.FACTOR}{name}").cast(pl.String) for name in factors],
                            separator=", ") if factors else pl.lit("all runs"))
    done = done.with_columns(labels.alias("_cell"))
    cells = sorted(done["_cell"].unique().to_list())
    figure, axis = plt.subplots(figsize=(max(7, 1.6 * len(keys) + len(cells)), 4.5))
    width = 0.8 / len(cells)
    for index, cell in enumerate(cells):
        rows = done.filter(pl.col("_cell") == cell)
        points = []
        for position, key in enumerate(keys):
            column = f"metrics.{Metric.GEN_ICON}/{key}"
            scored = rows.filter(pl.col(column).is_not_null()) if column in rows.columns else rows.clear()
            if not scored.is_empty():
                points.append((position, *_mean_ci(scored[column].to_numpy(), scored["seed"].to_numpy())))
        x = [p[0] + (index - (len(cells) - 1) / 2) * width for p in points]
        y = np.array([p[1] for p in points])
        axis.bar(x, y, width, yerr=[y - [p[2] for p in points], [p[3] for p in points] - y], capsize=3, label=cell)
    if baseline in done.columns:
        constant = [(position, done[f"metrics.{Metric.BASELINE_GEN_ICON}/{key}"].mean()) for position, key in enumerate(keys)
                    if f"metrics.{Metric.BASELINE_GEN_ICON}/{key}" in done.columns]
        axis.scatter([c[0] for c in constant], [c[1] for c in constant], marker="_", s=900, color="black", zorder=3,
                     label="constant generation (each cell's most frequent code)")
    axis.set_xticks(range(len(keys)), keys)
    axis.set_ylim(0, 1.05)
    axis.set(xlabel="requested corner of the weather icon", ylabel=f"{Metric.GEN_ICON} ({SCORE})",
             title="The requested weather drawn in the requested corner (95% CI over seeds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def learning_curves(history: pl.DataFrame, runs: pl.DataFrame):
    """Mean over finished runs per arm against the training step, with the range between runs shaded."""
    wanted = [m for m in HISTORY_METRICS if m in set(history["metric"].to_list())]
    if history.is_empty() or not wanted:
        raise Skip("Learning curves are not drawn: no per-step metrics were logged.")
    arms = runs.filter(pl.col("status") == FINISHED).select("run_id", "arm")
    data = history.join(arms, on="run_id", how="inner")
    figure, axes = plt.subplots(1, len(wanted), figsize=(5 * len(wanted), 4), squeeze=False)
    for axis, metric in zip(axes[0], wanted):
        curves = (data.filter(pl.col("metric") == metric).group_by("arm", "step")
                  .agg(pl.col("value").mean().alias("mean"), pl.col("value").min().alias("low"),
                       pl.col("value").max().alias("high"), pl.len().alias("runs")).sort("arm", "step"))
        for arm in sorted(curves["arm"].unique().to_list()):
            curve = curves.filter(pl.col("arm") == arm)
            axis.plot(curve["step"], curve["mean"], marker=".", color=ARM_COLOURS.get(arm), label=f"{arm} (mean)")
            axis.fill_between(curve["step"].to_numpy(), curve["low"].to_numpy(), curve["high"].to_numpy(),
                              color=ARM_COLOURS.get(arm), alpha=0.15)
        unit = "loss (nats per token)" if metric.startswith(f"{Metric.TRAIN}/") else SCORE
        axis.set(xlabel="training step", ylabel=f"{metric}: {unit}", title=f"{metric} per arm (band: min–max over runs)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def parallel_coordinates(runs: pl.DataFrame, searched: list[str], objectives: dict[str, str]):
    """One line per finished trial across the searched parameters, coloured by its arm's objective."""
    if not searched:
        raise Skip("The parallel-coordinates view is not drawn: the sweep searched no hyperparameter.")
    done = runs.filter(pl.col("status") == FINISHED)
    arms = [a for a in sorted(done["arm"].drop_nulls().unique().to_list()) if objectives.get(a)]
    figure, axes = plt.subplots(len(arms), 1, figsize=(10, 3.2 * len(arms)), squeeze=False)
    for axis, arm in zip(axes[:, 0], arms):
        rows = done.filter(pl.col("arm") == arm)
        objective = f"metrics.{objectives[arm]}"
        columns, labels = [], []
        for name in searched:
            values = rows[f"params.{name}"]
            if values.dtype.is_numeric():
                numbers = values.cast(pl.Float64).to_numpy()
                log = numbers.min() > 0 and numbers.max() / max(numbers.min(), 1e-300) >= 10
                numbers = np.log10(numbers) if log else numbers
                labels.append(f"{name}\n({'log10 ' if log else ''}{numbers.min():.3g}…{numbers.max():.3g})")
            else:
                categories = sorted(values.cast(pl.String).unique().to_list(), key=str)
                numbers = np.array([categories.index(v) for v in values.cast(pl.String).to_list()], float)
                labels.append(f"{name}\n({' | '.join(map(str, categories))})")
            columns.append(numbers)
        scores = rows[objective].to_numpy()
        columns.append(scores)
        labels.append(f"{objectives[arm]}\n({scores.min():.3f}…{scores.max():.3f})")
        matrix = np.array(columns, float)
        span = np.ptp(matrix, axis=1, keepdims=True)
        scaled = (matrix - matrix.min(axis=1, keepdims=True)) / np.where(span > 0, span, 1.0)
        colours = plt.cm.viridis((scores - scores.min()) / (np.ptp(scores) or 1.0))
        for line, colour in zip(scaled.T, colours):
            axis.plot(range(len(labels)), line, color=colour, alpha=0.7)
        axis.set_xticks(range(len(labels)), labels, fontsize=7)
        axis.set(ylabel="position in range (0–1)", title=f"{arm}: searched hyperparameters, lines coloured by {objectives[arm]}")
        mappable = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(scores.min(), scores.max()))
        figure.colorbar(mappable, ax=axis, label=f"{objectives[arm]} ({SCORE})")
    figure.tight_layout()
    return figure


def image_grids(images: dict[str, tuple[str, np.ndarray]]):
    """The generated-image grids (artifact generated.png) of the best run per arm: label -> (caption, image)."""
    if not images:
        raise Skip("Generated-image grids are not shown: no best run has a generated.png artifact.")
    aspect = max(image.shape[0] / image.shape[1] for _, image in images.values())
    figure, axes = plt.subplots(1, len(images), figsize=(5 * len(images), 5 * aspect + 1.2), squeeze=False,
                                layout="constrained")
    for axis, (label, (caption, image)) in zip(axes[0], images.items()):
        axis.imshow(image)
        axis.set_title(f"{label}\n{caption}", fontsize=9)
        axis.axis("off")
    figure.suptitle("Generated images of the best run per arm (free-running generation)")
    return figure
