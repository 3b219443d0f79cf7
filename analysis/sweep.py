"""A sweep's findings: its runs and declared headlines read from the MLflow store, and every finding computed.

    load_sweep(sweep)       runs, the evaluations the findings read along each run, the declared headlines
    all_findings(runs, ...) the three findings (analysis.findings), with the declared headlines (analysis.headlines)
                            as the only headline results when there are any
    sweep_findings(sweep)   both: what `uvlm report` and `uvlm power` compute (a tuned sweep: its held-out runs)

Where the declarations come from: `from_parent(sweep)` reads the sweep parent run's trial table
(trainables.mlflow_names.TRIAL_TABLE, key `headlines`, written from search.sweep_plan.Plan.headlines_record), or, for
sweeps logged before that key existed, the `headlines:` section of the space file logged beside it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import polars as pl

from analysis.findings import alignment, mutual_benefit, transfer
from analysis.frames import load_history, load_runs, sweep_parent
from analysis.headlines import declared_results, parse
from analysis.results import TITLES, FindingReport, InsufficientData, correct_as_family, finish
from analysis.tuning import finding_runs
from trainables.errors import UserError
from trainables.headline_schema import Headline
from trainables.mlflow_names import TRIAL_TABLE, Metric, overall
from trainables.workspace import tracking_uri as resolve_uri
from trainables.yamlfile import load_yaml

HISTORY_METRICS = [overall(Metric.VQA), overall(Metric.GEN_PROBE), Metric.TRAIN_LOSS, Metric.TRAIN_SAMPLES]
"""Evaluations read for the report's learning curves, besides each declared headline's metric."""


def sweep_findings(sweep: str, tracking_uri: str | None = None):
    """(runs, history, declared headlines or None, all_findings) of a sweep in the MLflow store."""
    runs, history, headlines = load_sweep(sweep, tracking_uri)
    return runs, history, headlines, all_findings(finding_runs(runs), history, headlines)  # a tuned sweep: held-out runs


def load_sweep(sweep: str, tracking_uri: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Headline] | None]:
    """(runs, the history the findings read, declared headlines or None) of a sweep in the MLflow store."""
    runs = load_runs(sweep, tracking_uri)
    if runs.is_empty():
        raise UserError(f"sweep {sweep!r} has no trial runs yet (uvlm.role=trial); nothing to report")
    headlines = from_parent(sweep, tracking_uri)
    wanted = sorted({*HISTORY_METRICS, *(h.metric for h in (headlines or {}).values())})
    return runs, load_history(sweep, tracking_uri, metrics=wanted), headlines


def from_parent(sweep: str, tracking_uri: str | None = None) -> dict[str, Headline] | None:
    """The declared headlines of `sweep`, read from its parent run's artifacts (module docstring); None if none."""
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_uri(tracking_uri)
    parent = sweep_parent(sweep, uri)["run_id"]
    client = MlflowClient(uri)
    logged = {artifact.path for artifact in client.list_artifacts(parent)}
    if TRIAL_TABLE not in logged:
        return None
    with tempfile.TemporaryDirectory() as folder:
        table = json.loads(Path(client.download_artifacts(parent, TRIAL_TABLE, folder)).read_text())
        if "headlines" in table:
            return parse(table["headlines"])
        space_file = table.get("space_file")
        if space_file not in logged:
            return None
        text = Path(client.download_artifacts(parent, space_file, folder)).read_text()
        tree = load_yaml(text, f"the space file {space_file!r} logged on sweep {sweep!r}") or {}
    return parse(tree.get("headlines"))


def all_findings(runs: pl.DataFrame, history: pl.DataFrame | None = None,
                 headlines: dict[str, Headline] | None = None) -> dict[int, FindingReport | str]:
    """Each finding's report, or the sentence saying why the sweep cannot address it.

    `headlines` (name -> Headline, as declared in the space file): when given, only those are headline results
    (analysis.headlines computes them, with `history` for auc and trend) and every default headline of the
    findings becomes exploratory. None: the findings' default headlines. Either way the headline results of the
    three findings are judged as one family (analysis.results.correct_as_family).
    """
    out: dict[int, FindingReport | str] = {}
    for number, function in ((1, mutual_benefit), (2, alignment), (3, transfer)):
        try:
            out[number] = function(runs)
        except InsufficientData as error:
            out[number] = str(error)
    if headlines:
        for report in out.values():  # only declared headlines get verdicts, in every finding
            if isinstance(report, FindingReport):
                report.results[:] = [replace(r, headline=False) for r in report.results]
                finish(report)
        for number, declared in declared_results(runs, history, headlines).items():
            report = out.get(number)
            if not isinstance(report, FindingReport):
                report = FindingReport(number, *TITLES[number])
                report.skipped.append(f"The finding's own analysis is not computed: {out.get(number)}")
                out[number] = report
            report.results[:0] = [d.result for d in declared]
            for d in declared:
                if d.curve is not None:
                    report.tables[f"headline_{d.result.name.replace(' ', '_').replace('-', '_')}_curve"] = d.curve
            choice = [row for d in declared for row in d.choice]
            if choice:
                report.tables["headline_statistic_choice"] = pl.DataFrame(choice)
            finish(report)
    correct_as_family([report for report in out.values() if isinstance(report, FindingReport)])
    return out
