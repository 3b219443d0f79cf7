"""The sections of a sweep's report, in the words a reader sees: verdicts and how they are made, the findings at a
glance, the design, each finding, searched hyperparameters, and the limits of the evidence. analysis.report
assembles them into a Document; the demo's index reuses the verdict words."""

from __future__ import annotations

import math
import tempfile
from typing import Any

import polars as pl

from analysis import figures as figs
from analysis import stats
from analysis.document import Document, fmt
from analysis.findings import OTHER_ATTRIBUTES
from analysis.frames import factor_names
from analysis.power import power_frame
from analysis.results import (EXPLORATORY, MIN_SEEDS_FOR_VERDICT, TARGET_HALF_WIDTH, FindingReport, Result,
                              family_sentence)
from trainables.config import Arm
from trainables.mlflow_names import FINISHED, GENERATED_IMAGE, Metric, baseline_of, factor_tag, overall

BUDGET_RULES = {"steps": "equal optimiser steps in every arm", "samples": "equal training records seen in every arm",
                "epochs": "passes over each run's own records: every run sees each record it shares with another "
                          "run as often, and a run with more records (a mixed arm, or added generation records) "
                          "takes more steps"}
VERDICT_MARK = {stats.SUPPORTED: "supported", stats.CONTRADICTED: "CONTRADICTED", stats.INCONCLUSIVE: "inconclusive",
                stats.EQUIVALENT: "equivalent", stats.BELOW_BASELINE: "below baseline",
                stats.AT_CEILING: "at ceiling", EXPLORATORY: "exploratory"}
VERDICT_RULE = ("supported: the 95% interval over seeds excludes zero in the paper's direction and the p value, "
                f"Holm-adjusted over the headline results, is at most {stats.ALPHA:g}; CONTRADICTED: the same in the "
                "opposite direction; equivalent (|effect| < δ): the whole interval lies inside ±δ, the headline's "
                "smallest effect that matters, so the data rule out any effect that matters in either direction; "
                "inconclusive: none of these (the interval is too wide to tell). Before any verdict two gates: below "
                "baseline, when a compared arm's mean final score is at or below the metric's constant-answer "
                "baseline (plus the headline's learned_margin), and at ceiling, when one is at or above the "
                "headline's ceiling; a benefit between unlearned or saturated arms says nothing about data, so "
                "such a headline gets no verdict and stays out of the Holm family")
"""How a headline verdict is made, in one sentence that every report and the demo's index show."""


def verdict_text(result: Result) -> str:
    """The verdict as a reader sees it: 'equivalent' names its δ, e.g. 'equivalent (|effect| < 0.02)'."""
    mark = VERDICT_MARK[result.verdict]
    return f"{mark} (|effect| < {result.smallest_effect:g})" if result.verdict == stats.EQUIVALENT else mark


def arms_text(result: Result) -> str:
    """The compared arms' mean final scores against the gates, e.g. 'arm=mixed 0.470, arm=generation 0.410 vs floor
    0.475 (+0.1); ceiling 0.95'; '–' when the result has none (not a declared headline)."""
    if not result.arm_means:
        return "–"
    arms = ", ".join(f"{arm} {mean:.3f}" for arm, mean in result.arm_means.items())
    floor = (f" vs floor {result.floor:.3f}" + (f" (+{result.learned_margin:g})" if result.learned_margin else "")
             if math.isfinite(result.floor) else "; no constant-answer baseline")
    return arms + floor + (f"; ceiling {result.ceiling:g}" if result.ceiling is not None else "")



def _results_frame(results: list[Result], headline_only: bool = False) -> pl.DataFrame:
    rows = [{**({"finding": r.finding} if headline_only else {"role": r.role}), "result": r.name,
             "group": ", ".join(f"{k}={fmt(v, 3)}" for k, v in r.group.items()),
             "comparison": r.comparison, "metric": r.metric, "estimate": fmt(r.estimate, 4),
             "95% CI": f"[{fmt(r.ci_low, 4)}, {fmt(r.ci_high, 4)}]", "±": fmt(r.half_width, 3),
             "n (seeds)": f"{r.n} ({r.n_seeds})", "p": fmt(r.p_value, 3),
             "p (Holm)": fmt(r.p_adjusted, 3), "expected": r.expected,
             **({"δ": f"{r.smallest_effect:g}"} if r.headline else {"δ": "–"}),
             **({"arms vs floor": arms_text(r)} if headline_only else {}), "verdict": verdict_text(r)}
            for r in results if r.headline or not headline_only]
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def summary(document: Document, findings: dict[int, FindingReport | str], declared: bool) -> None:
    document.h(2, "Findings at a glance")
    headlines = [r for f in findings.values() if isinstance(f, FindingReport) for r in f.headlines]
    source = ("declared in the space file (`headlines:`)" if declared else
              "the default set (the space file declares none)")
    if headlines:
        document.p(f"Headline results, {source}. Only these get verdicts; every other result in this report is "
                   "exploratory, with Holm-adjusted p values and no verdict. " + family_sentence(headlines))
        document.table(_results_frame(headlines, headline_only=True),
                       f"Verdict: {VERDICT_RULE}. With fewer than {MIN_SEEDS_FOR_VERDICT} seeds there is no verdict "
                       "(inconclusive). p (Holm): the p value adjusted over the headline results as one family. ±: "
                       "half the interval's width and δ the smallest effect that matters, both on the statistic's "
                       "own scale (score 0–1; per unit of the x axis for a slope). Arms vs floor: each compared "
                       "arm's mean final score and the constant-answer baseline the gates read.")
        document.table(power_frame(headlines),
                       "Power of each headline: the SD over seeds of the per-seed paired effect; the smallest effect "
                       "a two-sided 5% t-test over the seeds run detects with 80% power (noncentral t); the seeds a "
                       f"95% half-width of {TARGET_HALF_WIDTH:g} needs at that SD (t-interval). Use it to size a sweep.")
    choice = [f.tables["headline_statistic_choice"] for f in findings.values()
              if isinstance(f, FindingReport) and "headline_statistic_choice" in f.tables]
    if choice:
        table = pl.concat(choice, how="diagonal_relaxed")
        document.table(table.select(
            "headline", "metric", "statistic", pl.col("estimate").map_elements(lambda v: fmt(v, 4), pl.String),
            pl.col("sd_paired").map_elements(lambda v: fmt(v, 3), pl.String).alias("SD of the per-seed effect"),
            pl.col("half_width").map_elements(lambda v: fmt(v, 3), pl.String).alias("±"),
            pl.col("seeds_for_target").cast(pl.String).fill_null("–").alias(f"seeds for ±{TARGET_HALF_WIDTH:g}"),
            pl.col("chosen").map_elements(lambda v: "declared" if v else "", pl.String).alias("headline uses")),
            "End point or area under the learning curve: the same comparison on the final evaluation (end) and on "
            "each run's mean over its evaluations (auc). The statistic with the smaller SD needs fewer seeds; the "
            "two estimate different quantities (the end point, or the average along the budget).")
    for number, finding in findings.items():
        if isinstance(finding, str):
            document.p(f"Finding {number} is not addressed by this sweep: {finding}.")


def design(document: Document, runs: pl.DataFrame, searched: list[str]) -> None:
    document.h(2, "Design")
    counts = dict(runs.group_by("status").len().iter_rows())
    done = runs.filter(pl.col("status") == FINISHED)
    items = [f"Runs: {runs.height} trials; " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) + "."]
    arms = dict(runs.group_by("arm").len().sort("arm").iter_rows())
    items.append("Arms: " + ", ".join(f"{a} ({n} runs)" for a, n in arms.items()) + ".")
    seeds = sorted(done["seed"].drop_nulls().unique().to_list())
    items.append(f"Seeds: {len(seeds)} ({', '.join(map(str, seeds))}), paired across arms.")
    if "params.data.train_images" in runs.columns:
        sizes = _natural(runs["params.data.train_images"].unique().to_list())
        items.append(f"Data sizes (training images): {', '.join(sizes)}.")
    for factor in factor_names(runs):
        values = _natural(runs[f"tags.{factor_tag(factor)}"].drop_nulls().unique().to_list())
        items.append(f"Crossed factor {factor}: {', '.join(values)}.")
    items.append(_budget_sentence(runs))
    items.append(_fairness_sentence(runs, searched))
    items.append(f"Searched by Optuna: {', '.join(searched)}." if searched else "No hyperparameter was searched.")
    document.ul(items)


def _budget_sentence(runs: pl.DataFrame) -> str:
    if "params.budget.unit" not in runs.columns:
        return "Budget rule: not logged."
    rules = runs.select("params.budget.unit", "params.budget.value").unique().sort("params.budget.unit").rows()
    text = "; ".join(f"{unit} = {fmt(value)} ({BUDGET_RULES.get(str(unit), 'unknown unit')})" for unit, value in rules)
    same = " for every run" if len(rules) == 1 else " (differs between runs)"
    return f"Budget rule: {text}{same}."


def _fairness_sentence(runs: pl.DataFrame, searched: list[str]) -> str:
    names = [n for n in ("generation.alpha", "optim.lr") if f"params.{n}" in runs.columns]
    if not names:
        return "Generation comparison: alpha and learning rate not logged."
    if any(n in searched for n in names):
        return (f"Generation comparison: {', '.join(n for n in names if n in searched)} searched by Optuna in every arm "
                "with the same budget.")
    arms = runs.filter(pl.col("arm").is_in([Arm.GENERATION, Arm.MIXED]))
    differ = [n for n in names if arms[f"params.{n}"].n_unique() > 1]
    if differ:
        return f"Generation comparison: {', '.join(differ)} differ between the generation-only and mixed runs."
    return "Generation comparison: generation-only and mixed use the same alpha and learning rate."


def finding_section(document: Document, number: int, finding: FindingReport | str) -> None:
    titles = {1: "Finding 1: mutual benefit", 2: "Finding 2: alignment matters", 3: "Finding 3: transfer lives in the LM"}
    document.h(2, titles[number])
    if isinstance(finding, str):
        document.p(f"Not addressed by this sweep: {finding}.")
        return
    document.p(f"Claim: {finding.claim}")
    if number == 3:
        document.ul(_hidden_value_sentences(finding))
    if finding.results:
        document.table(_results_frame(finding.results), f"All results of finding {number}: headline rows have verdicts; "
                                                        "exploratory rows have none, and their p values are "
                                                        "Holm-adjusted over the finding's exploratory results "
                                                        "(headline rows: over the headline results).")
        tests = sorted({r.test for r in finding.results})
        document.p("Tests: " + " | ".join(tests))
        notes = sorted({r.note for r in finding.results if r.note})
        document.ul([f"Note: {n}" for n in notes])
    document.ul(finding.skipped)
    document.ul([f"Limit: {limit}" for limit in finding.limits])


def _hidden_value_sentences(finding: FindingReport) -> list[str]:
    """What the hidden value's own accuracy shows: mixed runs that saw it only in generation data against their control."""
    levels = {(r.group.get("arm"), r.group.get("condition"), r.group.get("freezing")): r for r in finding.results
              if r.name.startswith("accuracy on the hidden value")}
    sentences = []
    for freezing in sorted({key[2] for key in levels}):
        hidden, control = levels.get((Arm.MIXED, "hidden", freezing)), levels.get((Arm.MIXED, "control", freezing))
        if hidden is None or control is None:
            continue
        gap = hidden.estimate - control.estimate
        overlap = hidden.ci_low <= control.ci_high and control.ci_low <= hidden.ci_high
        label = {"none": "LM and adapters train", "lm_frozen": "LM frozen", "adapters_frozen": "adapters frozen"}.get(freezing, freezing)
        reading = ("the intervals overlap: no evidence that the value seen only in generation data is named in answers"
                   if overlap else ("answers name the hidden value more often than without its generation records"
                                    if gap > 0 else "answers name the hidden value less often than the control"))
        sentences.append(f"Hidden value's own accuracy ({hidden.metric}, {label}): {fmt(hidden.estimate, 4)} "
                         f"[{fmt(hidden.ci_low, 4)}, {fmt(hidden.ci_high, 4)}] with its generation records, "
                         f"{fmt(control.estimate, 4)} [{fmt(control.ci_low, 4)}, {fmt(control.ci_high, 4)}] in the "
                         f"control; {reading}. The other attributes of hidden images are {OTHER_ATTRIBUTES} below.")
    return sentences


def draw(document: Document, figures: dict[str, bytes], name: str, caption: str, draw) -> None:
    try:
        figure = draw()
    except figs.Skip as skip:
        document.p(str(skip))
        return
    figures[name] = figs.png(figure)
    document.figure(name, caption, figures[name])


def importance_section(document: Document, importance, best: pl.DataFrame) -> None:
    rows = [{"arm": a.arm, "objective (centred per cell)": a.objective, "trials": a.n_trials,
             **{k: fmt(v, 3) for k, v in a.importances.items()}, "note": a.note} for a in importance]
    if rows:
        document.table(pl.DataFrame(rows), "Importance of the searched parameters per arm (Optuna PED-ANOVA on a "
                                           "study rebuilt from the finished runs; sums to 1 per arm).")
    if not best.is_empty():
        document.table(best.with_columns(pl.col("value").round(4)), "Best finished run per arm on its objective.")


def best_images(best: pl.DataFrame, stores: dict[str, str]) -> dict[str, tuple[str, Any]]:
    """The generated grid of each arm's best run; `stores`: run id -> the tracking URI that holds the run."""
    if best.is_empty():
        return {}
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient
    from PIL import Image
    import numpy as np

    images = {}
    with tempfile.TemporaryDirectory() as folder:
        for row in best.iter_rows(named=True):
            if row["arm"] == Arm.UNDERSTANDING:
                continue
            client = MlflowClient(stores[row["run_id"]])
            if GENERATED_IMAGE not in {a.path for a in client.list_artifacts(row["run_id"])}:
                continue
            path = client.download_artifacts(row["run_id"], GENERATED_IMAGE, folder)
            caption = f"trial {row['trial_id']}, seed {row['seed']}, {row['objective']} = {row['value']:.3f}"
            images[f"best {row['arm']} run"] = (caption, np.asarray(Image.open(path).convert("RGB")))
    return images


def limits(runs: pl.DataFrame, findings: dict[int, FindingReport | str]) -> list[str]:
    items = []
    done = runs.filter(pl.col("status") == FINISHED)
    failed = runs.height - done.height
    if failed:
        errors = runs.filter(pl.col("status") != FINISHED)["error"].drop_nulls().value_counts(sort=True).head(3)
        listed = "; ".join(f"{e} (x{n})" for e, n in errors.iter_rows())
        items.append(f"{failed} of {runs.height} runs did not finish and are left out{': ' + listed if listed else ''}.")
    seeds = done["seed"].n_unique()
    if seeds < 5:
        items.append(f"Only {seeds} seed{'s' if seeds != 1 else ''} per cell: a bootstrap over so few seeds has few distinct "
                     "resamples, so intervals are widened to the t-interval over per-seed estimates (wide); "
                     f"below {MIN_SEEDS_FOR_VERDICT} seeds no verdict is given. More seeds would make the verdicts firmer.")
    items.append("Intervals resample seeds (the unit that repeats the whole experiment); runs of one seed share data "
                  "order and initialisation, so they are not treated as independent.")
    items.append("Only headline results get verdicts, judged as one family (Holm over the headline results, "
                 f"family-wise error {stats.ALPHA:.0%}). Every other result is exploratory: its p value is Holm-adjusted "
                 "over the exploratory results of its finding (family-wise error 5%), and it carries no verdict.")
    items.append("Power assumes the per-seed paired effects are roughly normal with the observed SD; with few seeds "
                 "that SD is itself uncertain, so the seed counts are estimates, not guarantees.")
    items.append("Curves along a run (trend and auc statistics) use the evaluations logged every eval.every_steps, on "
                 "the first eval.max_eval_records test prompts per task (the same records in every run and "
                 "evaluation); the final evaluation scores the whole test split. Fractions of the budget are put on "
                 "one grid by linear interpolation between a run's evaluations.")
    items.extend(untrained_runs(done))
    for number, finding in findings.items():
        if isinstance(finding, str):
            items.append(f"Finding {number} cannot be judged from this sweep.")
        else:
            items.extend(f"Finding {number}: {s}" for s in finding.skipped if "not computed" in s)
    return items


BASELINE_MARGIN = 0.05
"""A run whose final VQA is within this of the constant answers' score has not started reading the images."""


def untrained_runs(done: pl.DataFrame) -> list[str]:
    """Runs that cannot carry a comparison: at the constant-answer baseline, or with a random LM frozen."""
    items = []
    score, baseline = f"metrics.{overall(Metric.VQA)}", f"metrics.{baseline_of(overall(Metric.VQA))}"
    trainability, pretrained = "params.lm.trainability", "params.lm.pretrained_path"
    if score in done.columns and baseline in done.columns:
        scored = done.filter(pl.col(score).is_not_null() & pl.col(baseline).is_not_null())
        if "params.data.arm" in scored.columns:  # generation-only runs never learn to answer
            scored = scored.filter(pl.col("params.data.arm") != Arm.GENERATION)
        if trainability in scored.columns:  # a frozen LM: the item below
            scored = scored.filter(pl.col(trainability) != "frozen")
        low = scored.filter(pl.col(score) < pl.col(baseline) + BASELINE_MARGIN)
        if low.height:
            items.append(f"{low.height} of {scored.height} runs that train on understanding records ended within "
                         f"{BASELINE_MARGIN} of the constant answers' score on {overall(Metric.VQA)} (or below it): "
                         "they had not started reading the images, and "
                         "a comparison among such runs measures little however narrow its interval; raise "
                         "budget.value past that threshold.")
    if trainability in done.columns:
        frozen = done.filter(pl.col(trainability) == "frozen")
        if pretrained in done.columns:
            frozen = frozen.filter(pl.col(pretrained).is_null() | pl.col(pretrained).is_in(["", "None"]))
        if frozen.height:
            items.append(f"{frozen.height} runs froze a randomly initialised LM (lm.trainability: frozen without "
                         "lm.pretrained_path): such an LM never learns the answer words, so their understanding scores "
                         "are near zero by construction, not by experiment.")
    return items


def _natural(values: list[Any]) -> list[str]:
    """Values as text, numbers in numeric order ('250' before '1000'), None as 'all'."""
    def key(value: Any) -> tuple:
        try:
            return (0, float(value), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(value))
    return ["all" if v is None else str(v) for v in sorted(values, key=key)]
