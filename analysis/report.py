"""`uvlm report SWEEP`: a sweep's runs -> report.md, self-contained report.html, findings.json, tables, figures.

    load (analysis.sweep, or analysis.pooling for pooled seeds) -> the sections in a reader's words
    (analysis.sections) -> one Document rendered to Markdown and HTML (analysis.document) -> the files below

Everything written is also logged as artifacts under `report/` on the sweep's parent MLflow run.

Output folder:
    report.md, report.html, findings.json
    results.csv / results.parquet        every Result of every finding (one row each)
    runs.parquet                         the load_runs frame
    pairs_<table>.csv / .parquet         the paired differences each finding used
    importance.csv, best_configs.csv     searched-parameter importance per arm, best run per arm
    figures/*.png
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from analysis import figures as figs
from analysis import sections
from analysis import tuning
from analysis.document import Document, render_html, render_markdown
from analysis.frames import sweep_parent
from analysis.importance import best_configs, objective_for, param_importance, searched_params
from analysis.pooling import SweepRef, default_ref, pool_seeds, pool_sentence, pooled_findings, run_stores
from analysis.results import TARGET_HALF_WIDTH, FindingReport, family_sentence
from analysis.sweep import sweep_findings
from trainables.mlflow_names import FINDINGS_FILE, REPORT_FOLDER, REPORT_HTML, REPORT_MARKDOWN, TUNING_FILE, Tag
from trainables.workspace import tracking_uri as resolve_uri
from trainables.workspace import workdir

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
    sections.summary(document, findings, headlines is not None)
    sections.design(document, runs, searched)
    figures: dict[str, bytes] = {}

    def draw(name: str, caption: str, make) -> None:
        sections.draw(document, figures, name, caption, make)

    draw("benefit_curves", "The headline benefits against records seen along the runs",
         lambda: figs.benefit_curves(findings))
    drawers = {
        1: [("benefit_vs_size", "Each arm's score and the benefit of mixing against data size",
             lambda: figs.benefit_vs_size(findings[1], runs)),
            ("attribute_bars", "The benefit of mixing per attribute", lambda: figs.attribute_bars(findings[1]))],
        2: [("alignment", "The benefit against alignment", lambda: figs.alignment_curve(findings[2], runs, history))],
        3: [("transfer", "Accuracy on the value seen only in generation data", lambda: figs.transfer_bars(findings[3], runs))],
    }
    for number, finding in findings.items():
        sections.finding_section(document, number, finding)
        for name, caption, make in drawers[number]:
            draw(name, caption, make)
    document.h(2, "Training curves")
    draw("learning_curves", "Learning curves per arm", lambda: figs.learning_curves(history, runs))
    document.h(2, "Searched hyperparameters")
    sections.importance_section(document, importance, best)
    draw("parallel_coordinates", "Searched hyperparameters against each arm's objective",
         lambda: figs.parallel_coordinates(runs, searched, objectives))
    draw("generated_images", "Generated images of the best runs",
         lambda: figs.image_grids(sections.best_images(best, run_stores(runs, refs))))
    draw("icon_corners", "Where the generated images put the requested weather icon", lambda: figs.icon_corners(runs))
    tuned = tuning.section(document, runs, *tuning.objective_of(parent["run_id"], uri), draw)
    document.h(2, "Limits of the evidence")
    document.ul(sections.limits(runs, findings))

    results = [r for f in findings.values() if isinstance(f, FindingReport) for r in f.results]
    _write_tables(out, runs, findings, results, importance, best)
    for name, data in figures.items():
        (out / "figures" / f"{name}.png").write_bytes(data)
    (out / FINDINGS_FILE).write_text(json.dumps(_json(sweep, parent, runs, findings, importance, best, headlines, pooled),
                                                  indent=2, default=_plain))
    if tuned:
        (out / TUNING_FILE).write_text(json.dumps(tuned, indent=2, default=_plain))
    (out / REPORT_MARKDOWN).write_text(render_markdown(document))
    (out / REPORT_HTML).write_text(render_html(document, f"Sweep report: {sweep}"))
    if log_artifacts:
        from mlflow import MlflowClient

        MlflowClient(uri).log_artifacts(parent["run_id"], str(out), artifact_path=REPORT_FOLDER)
    return Built(out, findings)


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


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
