"""`uvlm report SWEEP`: a sweep's runs -> report.md, self-contained report.html, findings.json, tables, figures.

The report is built once as a list of blocks (heading, paragraph, list, table,
figure) and rendered twice, to Markdown (figures as files under figures/) and
to HTML (figures embedded as base64 PNG, no external resource), so the two
cannot disagree. Everything written is also logged as artifacts under
`report/` on the sweep's parent MLflow run.

Output folder:
    report.md, report.html, findings.json
    results.csv / results.parquet        every Result of every finding (one row each)
    runs.parquet                         the load_runs frame
    pairs_<table>.csv / .parquet         the paired differences each finding used
    importance.csv, best_configs.csv     searched-parameter importance per arm, best run per arm
    figures/*.png
"""

from __future__ import annotations

import base64
import html
import json
import math
import platform
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from analysis import figures as figs
from analysis import stats
from analysis import tuning
from analysis.findings import OTHER_ATTRIBUTES
from analysis.frames import factor_names, sweep_parent
from analysis.importance import best_configs, objective_for, param_importance, searched_params
from analysis.pooling import SweepRef, default_ref, pool_seeds, pool_sentence, pooled_findings, run_stores
from analysis.power import power_frame
from analysis.results import (EXPLORATORY, MIN_SEEDS_FOR_VERDICT, TARGET_HALF_WIDTH, FindingReport, Result,
                              family_sentence)
from analysis.sweep import sweep_findings
from trainables.mlflow_names import (FINISHED, GENERATED_IMAGE, REPORT_FOLDER, Metric, Tag, baseline_of, factor_tag,
                                     overall)
from trainables.workspace import tracking_uri as resolve_uri
from trainables.workspace import workdir

FINDINGS_FILE, TUNING_FILE = "findings.json", "tuning.json"
"""Beside report.md and report.html: every result, and the tuning section's numbers (searched sweeps only)."""
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


@dataclass
class Document:
    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def table(self, frame: pl.DataFrame, caption: str = "") -> None:
        self.blocks.append(("table", frame, caption))

    def figure(self, name: str, title: str, data: bytes) -> None:
        self.blocks.append(("fig", name, title, data))

    def links(self, items: list[tuple[str, str]]) -> None:
        """A list of links to sibling reports: (text, path without suffix), to .md from Markdown, .html from HTML."""
        if items:
            self.blocks.append(("links", items))


@dataclass
class Built:
    """A written report: its folder and the findings it shows."""

    out: Path
    findings: dict[int, FindingReport | str]


def build_report(sweep: str, tracking_uri: str | None = None, out_dir: str | Path | None = None,
                 log_artifacts: bool = True, pool: list[SweepRef] | tuple[SweepRef, ...] = ()) -> Built:
    """Write the report of `sweep` into out_dir (default <workdir>/reports/<sweep>); -> the folder and findings.
    `pool`: sweeps of the same design on other seeds, read with it as one sweep (analysis.pooling); their report
    (default <workdir>/reports/<sweep>-pooled) belongs to no one sweep's parent run, so it is not logged on one."""
    uri = resolve_uri(tracking_uri)
    refs = [default_ref(sweep, uri), *pool]
    if pool:
        runs, history, headlines, findings = pooled_findings(refs)
        log_artifacts = False
    else:
        runs, history, headlines, findings = sweep_findings(sweep, uri)
    pooled = pool_seeds(runs, refs) if pool else []
    parent = sweep_parent(sweep, uri)
    out = Path(out_dir) if out_dir else workdir() / "reports" / (f"{sweep}-pooled" if pool else sweep)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    searched = searched_params(runs)
    importance = param_importance(runs)
    best = best_configs(runs)
    objectives = {arm: objective_for(arm, runs) for arm in runs["arm"].drop_nulls().unique().to_list()}

    document = Document()
    document.h(1, f"Sweep report: {sweep}")
    document.p(f"Study {parent['tags'].get(Tag.STUDY, '?')}, parent run {parent['run_id']}, "
               f"code {parent['tags'].get(Tag.GIT_COMMIT, '?')}; generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
               f"from {uri}.")
    if pooled:
        document.p(pool_sentence(pooled) + ". Every interval, verdict and power figure below is over all their seeds.")
    _summary(document, findings, headlines is not None)
    _design(document, runs, searched)
    figures: dict[str, bytes] = {}
    _draw(document, figures, "benefit_curves", "The headline benefits against records seen along the runs",
          lambda: figs.benefit_curves(findings))
    drawers = {
        1: [("benefit_vs_size", "Each arm's score and the benefit of mixing against data size",
             lambda: figs.benefit_vs_size(findings[1], runs)),
            ("attribute_bars", "The benefit of mixing per attribute", lambda: figs.attribute_bars(findings[1]))],
        2: [("alignment", "The benefit against alignment", lambda: figs.alignment_curve(findings[2], runs, history))],
        3: [("transfer", "Accuracy on the value seen only in generation data", lambda: figs.transfer_bars(findings[3], runs))],
    }
    for number, finding in findings.items():
        _finding(document, number, finding)
        for name, caption, draw in drawers[number]:
            _draw(document, figures, name, caption, draw)
    document.h(2, "Training curves")
    _draw(document, figures, "learning_curves", "Learning curves per arm", lambda: figs.learning_curves(history, runs))
    document.h(2, "Searched hyperparameters")
    _importance(document, importance, best)
    _draw(document, figures, "parallel_coordinates", "Searched hyperparameters against each arm's objective",
          lambda: figs.parallel_coordinates(runs, searched, objectives))
    _draw(document, figures, "generated_images", "Generated images of the best runs",
          lambda: figs.image_grids(_best_images(best, run_stores(runs, refs))))
    _draw(document, figures, "icon_corners", "Where the generated images put the requested weather icon",
          lambda: figs.icon_corners(runs))
    tuned = tuning.section(document, runs, *tuning.objective_of(parent["run_id"], uri),
                           lambda name, caption, draw: _draw(document, figures, name, caption, draw))
    document.h(2, "Limits of the evidence")
    document.ul(_limits(runs, findings))

    results = [r for f in findings.values() if isinstance(f, FindingReport) for r in f.results]
    _write_tables(out, runs, findings, results, importance, best)
    for name, data in figures.items():
        (out / "figures" / f"{name}.png").write_bytes(data)
    (out / FINDINGS_FILE).write_text(json.dumps(_json(sweep, parent, runs, findings, importance, best, headlines, pooled),
                                                  indent=2, default=_plain))
    if tuned:
        (out / TUNING_FILE).write_text(json.dumps(tuned, indent=2, default=_plain))
    (out / "report.md").write_text(render_markdown(document))
    (out / "report.html").write_text(render_html(document, f"Sweep report: {sweep}"))
    if log_artifacts:
        from mlflow import MlflowClient

        MlflowClient(uri).log_artifacts(parent["run_id"], str(out), artifact_path=REPORT_FOLDER)
    return Built(out, findings)


# ----------------------------------------------------------------------------- sections

def _results_frame(results: list[Result], headline_only: bool = False) -> pl.DataFrame:
    rows = [{**({"finding": r.finding} if headline_only else {"role": r.role}), "result": r.name,
             "group": ", ".join(f"{k}={_fmt(v, 3)}" for k, v in r.group.items()),
             "comparison": r.comparison, "metric": r.metric, "estimate": _fmt(r.estimate, 4),
             "95% CI": f"[{_fmt(r.ci_low, 4)}, {_fmt(r.ci_high, 4)}]", "±": _fmt(r.half_width, 3),
             "n (seeds)": f"{r.n} ({r.n_seeds})", "p": _fmt(r.p_value, 3),
             "p (Holm)": _fmt(r.p_adjusted, 3), "expected": r.expected,
             **({"δ": f"{r.smallest_effect:g}"} if r.headline else {"δ": "–"}),
             **({"arms vs floor": arms_text(r)} if headline_only else {}), "verdict": verdict_text(r)}
            for r in results if r.headline or not headline_only]
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def _summary(document: Document, findings: dict[int, FindingReport | str], declared: bool) -> None:
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
            "headline", "metric", "statistic", pl.col("estimate").map_elements(lambda v: _fmt(v, 4), pl.String),
            pl.col("sd_paired").map_elements(lambda v: _fmt(v, 3), pl.String).alias("SD of the per-seed effect"),
            pl.col("half_width").map_elements(lambda v: _fmt(v, 3), pl.String).alias("±"),
            pl.col("seeds_for_target").cast(pl.String).fill_null("–").alias(f"seeds for ±{TARGET_HALF_WIDTH:g}"),
            pl.col("chosen").map_elements(lambda v: "declared" if v else "", pl.String).alias("headline uses")),
            "End point or area under the learning curve: the same comparison on the final evaluation (end) and on "
            "each run's mean over its evaluations (auc). The statistic with the smaller SD needs fewer seeds; the "
            "two estimate different quantities (the end point, or the average along the budget).")
    for number, finding in findings.items():
        if isinstance(finding, str):
            document.p(f"Finding {number} is not addressed by this sweep: {finding}.")


def _design(document: Document, runs: pl.DataFrame, searched: list[str]) -> None:
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
    text = "; ".join(f"{unit} = {_fmt(value)} ({BUDGET_RULES.get(str(unit), 'unknown unit')})" for unit, value in rules)
    same = " for every run" if len(rules) == 1 else " (differs between runs)"
    return f"Budget rule: {text}{same}."


def _fairness_sentence(runs: pl.DataFrame, searched: list[str]) -> str:
    names = [n for n in ("generation.alpha", "optim.lr") if f"params.{n}" in runs.columns]
    if not names:
        return "Generation comparison: alpha and learning rate not logged."
    if any(n in searched for n in names):
        return (f"Generation comparison: {', '.join(n for n in names if n in searched)} searched by Optuna in every arm "
                "with the same budget.")
    arms = runs.filter(pl.col("arm").is_in(["generation", "mixed"]))
    differ = [n for n in names if arms[f"params.{n}"].n_unique() > 1]
    if differ:
        return f"Generation comparison: {', '.join(differ)} differ between the generation-only and mixed runs."
    return "Generation comparison: generation-only and mixed use the same alpha and learning rate."


def _finding(document: Document, number: int, finding: FindingReport | str) -> None:
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
        hidden, control = levels.get(("mixed", "hidden", freezing)), levels.get(("mixed", "control", freezing))
        if hidden is None or control is None:
            continue
        gap = hidden.estimate - control.estimate
        overlap = hidden.ci_low <= control.ci_high and control.ci_low <= hidden.ci_high
        label = {"none": "LM and adapters train", "lm_frozen": "LM frozen", "adapters_frozen": "adapters frozen"}.get(freezing, freezing)
        reading = ("the intervals overlap: no evidence that the value seen only in generation data is named in answers"
                   if overlap else ("answers name the hidden value more often than without its generation records"
                                    if gap > 0 else "answers name the hidden value less often than the control"))
        sentences.append(f"Hidden value's own accuracy ({hidden.metric}, {label}): {_fmt(hidden.estimate, 4)} "
                         f"[{_fmt(hidden.ci_low, 4)}, {_fmt(hidden.ci_high, 4)}] with its generation records, "
                         f"{_fmt(control.estimate, 4)} [{_fmt(control.ci_low, 4)}, {_fmt(control.ci_high, 4)}] in the "
                         f"control; {reading}. The other attributes of hidden images are {OTHER_ATTRIBUTES} below.")
    return sentences


def _draw(document: Document, figures: dict[str, bytes], name: str, caption: str, draw) -> None:
    try:
        figure = draw()
    except figs.Skip as skip:
        document.p(str(skip))
        return
    figures[name] = figs.png(figure)
    document.figure(name, caption, figures[name])


def _importance(document: Document, importance, best: pl.DataFrame) -> None:
    rows = [{"arm": a.arm, "objective (centred per cell)": a.objective, "trials": a.n_trials,
             **{k: _fmt(v, 3) for k, v in a.importances.items()}, "note": a.note} for a in importance]
    if rows:
        document.table(pl.DataFrame(rows), "Importance of the searched parameters per arm (Optuna PED-ANOVA on a "
                                           "study rebuilt from the finished runs; sums to 1 per arm).")
    if not best.is_empty():
        document.table(best.with_columns(pl.col("value").round(4)), "Best finished run per arm on its objective.")


def _best_images(best: pl.DataFrame, stores: dict[str, str]) -> dict[str, tuple[str, Any]]:
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
            if row["arm"] == "understanding":
                continue
            client = MlflowClient(stores[row["run_id"]])
            if GENERATED_IMAGE not in {a.path for a in client.list_artifacts(row["run_id"])}:
                continue
            path = client.download_artifacts(row["run_id"], GENERATED_IMAGE, folder)
            caption = f"trial {row['trial_id']}, seed {row['seed']}, {row['objective']} = {row['value']:.3f}"
            images[f"best {row['arm']} run"] = (caption, np.asarray(Image.open(path).convert("RGB")))
    return images


def _limits(runs: pl.DataFrame, findings: dict[int, FindingReport | str]) -> list[str]:
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
    items.extend(_untrained_runs(done))
    for number, finding in findings.items():
        if isinstance(finding, str):
            items.append(f"Finding {number} cannot be judged from this sweep.")
        else:
            items.extend(f"Finding {number}: {s}" for s in finding.skipped if "not computed" in s)
    return items


BASELINE_MARGIN = 0.05
"""A run whose final VQA is within this of the constant answers' score has not started reading the images."""


def _untrained_runs(done: pl.DataFrame) -> list[str]:
    """Runs that cannot carry a comparison: at the constant-answer baseline, or with a random LM frozen."""
    items = []
    score, baseline = f"metrics.{overall(Metric.VQA)}", f"metrics.{baseline_of(overall(Metric.VQA))}"
    trainability, pretrained = "params.lm.trainability", "params.lm.pretrained_path"
    if score in done.columns and baseline in done.columns:
        scored = done.filter(pl.col(score).is_not_null() & pl.col(baseline).is_not_null())
        if "params.data.arm" in scored.columns:  # generation-only runs never learn to answer
            scored = scored.filter(pl.col("params.data.arm") != "generation")
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


# ----------------------------------------------------------------------------- files

def _write_tables(out: Path, runs, findings, results, importance, best) -> None:
    frame = pl.DataFrame([r.as_dict() | {key: json.dumps(getattr(r, key), default=_plain) for key in ("group", "arm_means")}
                          for r in results]) if results \
        else pl.DataFrame()
    frame.write_csv(out / "results.csv")
    frame.write_parquet(out / "results.parquet")
    runs.write_parquet(out / "runs.parquet")
    for finding in findings.values():
        if isinstance(finding, FindingReport):
            for name, table in finding.tables.items():
                if not table.is_empty():
                    table.write_csv(out / f"pairs_{name}.csv")
                    table.write_parquet(out / f"pairs_{name}.parquet")
    pl.DataFrame([{"arm": a.arm, "objective": a.objective, "trials": a.n_trials, "parameter": k, "importance": v}
                  for a in importance for k, v in a.importances.items()]
                 or [{"arm": None, "objective": None, "trials": None, "parameter": None, "importance": None}]
                 ).write_csv(out / "importance.csv")
    best.write_csv(out / "best_configs.csv")


def _json(sweep, parent, runs, findings, importance, best, headlines=None, pooled=()) -> dict[str, Any]:
    counts = dict(runs.group_by("status").len().iter_rows())
    return {
        "sweep": sweep, "parent_run_id": parent["run_id"], "study": parent["tags"].get(Tag.STUDY),
        "pooled": [{"sweep": ref.sweep, "tracking_uri": ref.tracking_uri, "seeds": seeds} for ref, seeds in pooled],
        "headlines": {"source": "declared" if headlines else "default",
                      "declared": {name: h.model_dump(mode="json") for name, h in (headlines or {}).items()},
                      "target_half_width": TARGET_HALF_WIDTH,
                      "correction": family_sentence([r for f in findings.values() if isinstance(f, FindingReport)
                                                     for r in f.headlines])},
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
        "runs": {"total": runs.height, **{k.lower(): v for k, v in counts.items()}},
        "findings": {str(n): ({"addressed": False, "reason": f} if isinstance(f, str) else {
            "addressed": True, "title": f.title, "claim": f.claim, "results": [r.as_dict() for r in f.results],
            "skipped": f.skipped, "limits": f.limits}) for n, f in findings.items()},
        "importance": [{"arm": a.arm, "objective": a.objective, "trials": a.n_trials, "importances": a.importances,
                        "note": a.note} for a in importance],
        "best": best.to_dicts(),
    }


def _natural(values: list[Any]) -> list[str]:
    """Values as text, numbers in numeric order ('250' before '1000'), None as 'all'."""
    def key(value: Any) -> tuple:
        try:
            return (0, float(value), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(value))
    return ["all" if v is None else str(v) for v in sorted(values, key=key)]


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if value == int(value) and abs(value) >= 1:
            return str(int(value))
        return f"{value:+.{digits}f}" if digits >= 4 else f"{value:.{digits}g}"
    return str(value)


# ----------------------------------------------------------------------------- renderers

def render_markdown(document: Document) -> str:
    lines: list[str] = []
    for block in document.blocks:
        kind = block[0]
        if kind == "h":
            lines += [f"{'#' * block[1]} {block[2]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            frame, caption = block[1], block[2]
            cells = [[str(v).replace("|", "\\|").replace("\n", " ") if v is not None else "–" for v in row]
                     for row in frame.rows()]
            lines += ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
            lines += ["| " + " | ".join(row) + " |" for row in cells]
            lines += ["", f"*{caption}*" if caption else "", ""]
        elif kind == "fig":
            lines += [f"![{block[2]}](figures/{block[1]}.png)", ""]
        elif kind == "links":
            lines += [f"- [{text}]({path}.md)" for text, path in block[1]] + [""]
    return "\n".join(lines).rstrip() + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
div.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.8em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
th { background: #f3f3f3; }
caption { caption-side: bottom; font-style: italic; font-size: 0.9em; padding-top: 4px; text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
td.supported { background: #e3f4e1; } td.CONTRADICTED { background: #f9dcdc; font-weight: bold; }
td.inconclusive { background: #fdf5dc; } td.equivalent { background: #e3ecf7; } td.exploratory { color: #666; }
td.below, td.at { background: #eee; font-style: italic; }
"""


def render_html(document: Document, title: str) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>"]
    for block in document.blocks:
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            frame, caption = block[1], block[2]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
            body = "".join("<tr>" + "".join(
                f"<td class='{html.escape(str(v).split(' ')[0])}'>{html.escape(str(v) if v is not None else '–')}</td>"
                if c == "verdict" else f"<td>{html.escape(str(v) if v is not None else '–')}</td>"
                for c, v in zip(frame.columns, row)) + "</tr>" for row in frame.rows())
            parts.append(f"<div class='scroll'><table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr>"
                         f"</thead><tbody>{body}</tbody></table></div>")
        elif kind == "fig":
            data = base64.b64encode(block[3]).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(block[2])}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
        elif kind == "links":
            parts.append("<ul>" + "".join(f"<li><a href='{html.escape(path)}.html'>{html.escape(text)}</a></li>"
                                          for text, path in block[1]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
