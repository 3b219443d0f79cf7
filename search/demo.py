"""`uvlm demo`: the main job. The studies of docs/STUDY.md at CPU scale, one command, resumable.

    validate the four space files -> sweep each (skip finished, resume interrupted; those on the random LM
    first, while the text-pretrained LM is made in the background) -> report each
    -> a combined report (reports/index.html, reports/report.md) -> print the findings and where to look

Each study is the shipped space file (spaces/mixing.yaml, alignment.yaml,
transfer.yaml, ratio.yaml) run as a sweep named after the study, so `uvlm report mixing`
and `uvlm sweep spaces/mixing.yaml --resume` address the same sweep. `--smoke`
runs the same files, and the on-request ones (tuning.yaml, pretraining.yaml),
shrunk to toy size (one seed, a few steps, tiny datasets under the working folder)
as sweeps named `<study>-smoke`: it checks the whole path in a few minutes and says nothing about the findings.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from search import background_lm
from search.commands.ui import RUNS_VIEW
from trainables import workspace
from trainables.errors import UserError
from trainables.mlflow_names import REPORT_HTML, TUNING_FILE
from trainables.yamlfile import read_yaml

STUDIES = (("mixing", 1), ("alignment", 2), ("transfer", 3), ("ratio", 1))
"""Each study's space file stem and the finding (1-3 of docs/STUDY.md) it addresses; ratio is the mixing ratio
searched by Optuna on paired seeds, so the main job fills the Optuna dashboard."""
ON_REQUEST = (("tuning", 1), ("pretraining", 1))
"""Studies that do not fit in the demo beside the others: fair per-arm tuning re-run on held-out seeds (about
13 minutes) and the mixing study on a random and on a text-pretrained LM (exploratory, about 14). `uvlm demo --study
NAME` runs one; `--smoke` runs them at toy size with the others, so CI checks their path."""
ALL_STUDIES = dict(STUDIES + ON_REQUEST)
SPACES = Path(__file__).resolve().parents[1] / "spaces"

# --smoke: every study at toy size. Relative data paths move under <workdir>/smoke-data.
SMOKE_FIXED = {
    "data.generate_train_images": 80, "data.generate_test_images": 24, "data.test_images": 24,
    "budget.unit": "steps", "budget.value": 6, "eval.every_steps": 6, "eval.max_eval_records": 24,
    "eval.grid_images": 4,
}
SMOKE_TRAIN_IMAGES = [20, 40]
PRETRAINING_STEPS = "lm.pretraining.steps"
SMOKE_PRETRAINING = {"lm.pretraining.conversations": 40, "lm.pretraining.batch_size": 8}
"""A study's text-pretrained LM at toy size (a few seconds), where the study pretrains one; its steps stay, so that
headlines selecting runs by lm.pretraining.steps still find them."""


@dataclass
class DemoOptions:
    smoke: bool = False
    workdir: str | None = None
    tracking_uri: str | None = None
    spaces: Path = SPACES
    """Folder holding the studies' space files (mixing.yaml, ...)."""
    body: str | None = None
    """The trial body (search.sweep); tests pass a cheap one. Default: the real trainable."""
    studies: list[str] | None = None
    """Run only these studies (names of ALL_STUDIES); default the four of STUDIES (with --smoke, all six)."""
    seeds: list[int] | None = None
    """Run every study on these seeds instead of its space file's (copies under <workdir>/seeded-spaces)."""


@dataclass
class StudyRun:
    study: str
    finding: int
    name: str
    state: str
    """new | resumed | finished (skipped)."""
    exit_code: int = 0
    report: Any = None
    """The study's analysis.report.Built (its folder and findings) once reported."""


def run_demo(options: DemoOptions) -> int:
    """Sweep, report and summarise the studies; 0 when every trial of every study finished."""
    from search.planner import load_space
    from search.sweep import SweepOptions, dry_run, run_sweep

    began = time.monotonic()
    folder = workspace.workdir(options.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    uri = workspace.tracking_uri(options.tracking_uri, folder)
    chosen = selected(options)
    plans = [load_space(_space_path(options, study, folder)) for study, _ in chosen]  # all valid before any compute
    runs = []
    for (study, finding), plan in zip(chosen, plans):
        name = f"{study}-smoke" if options.smoke else study
        runs.append(StudyRun(study, finding, name, _state(uri, name)))
    sweep_options = [SweepOptions(name=run.name, tracking_uri=options.tracking_uri, workdir=str(folder),
                                  resume=run.state == "resumed", body=options.body) for run in runs]
    for plan, run, sweep in zip(plans, runs, sweep_options):
        if run.state == "new":
            dry_run(plan, sweep)  # datasets, resources and every trial's config, before the first study starts
    total = sum(len(plan.slots) for plan in plans)
    _say(f"demo{' (smoke)' if options.smoke else ''}: {len(chosen)} studies, {total} trials, working folder {folder}")
    pending = [i for i, run in enumerate(runs) if run.state != "finished"]
    lm_maker = background_lm.start([plans[i] for i in pending])
    if lm_maker is not None:
        _say("making the text-pretrained LM in the background (one thread), beside the studies on the "
             "random LM, which run first")
    order = sorted(range(len(plans)), key=lambda i: background_lm.uses_text_lm(plans[i]))  # stable: file order within
    try:
        for position, i in enumerate(order, 1):
            plan, run, sweep = plans[i], runs[i], sweep_options[i]
            label = f"[{position}/{len(chosen)}] {run.study} (finding {run.finding}): {len(plan.slots)} trials"
            if run.state == "finished":
                _say(f"{label}: finished earlier, skipped")
                continue
            if lm_maker is not None and background_lm.uses_text_lm(plan) and lm_maker.is_alive():
                _say(f"{label}: waiting for the text-pretrained LM")
                lm_maker.join()
            _say(f"{label}: {'resuming' if run.state == 'resumed' else 'starting'} sweep {run.name!r}")
            summary = run_sweep(plan, sweep)
            run.exit_code = summary.exit_code
            if not summary.complete:
                _say(f"{run.study}: interrupted; run `uvlm demo{' --smoke' if options.smoke else ''}` again to "
                     f"continue (finished trials are kept)")
                return 1
    finally:
        background_lm.stop(lm_maker)
    reports = folder / "reports"
    for run in runs:
        run.report = _report(run.name, uri, reports / run.name)
    correction = correct_across_studies(runs)
    rows = headline_rows(runs)
    index_md, index_html = write_index(reports, runs, rows, options.smoke, time.monotonic() - began, correction)
    print(findings_table(rows, correction), flush=True)
    print(f"\nreport:        {index_html}\n               {index_md} (per study: {reports}/<study>/{REPORT_HTML})")
    if options.tracking_uri or _env_uri():
        print(f"MLflow UI:     open {uri.rstrip('/')}{RUNS_VIEW}   (one experiment per study)")
    else:
        print(f"MLflow UI:     uvlm ui --workdir {folder}   (then http://127.0.0.1:5000{RUNS_VIEW}; one experiment per study)")
    print(f"Optuna:        uvlm dashboard --workdir {folder}   (then http://127.0.0.1:8080/dashboard; one study per "
          f"cell of a searched sweep)")
    print(f"demo wall time: {_minutes(time.monotonic() - began)}", flush=True)
    return max(run.exit_code for run in runs)


def selected(options: DemoOptions) -> tuple[tuple[str, int], ...]:
    """The studies this demo runs, in order: --study names, else the four (and the ON_REQUEST ones with --smoke)."""
    if options.studies:
        unknown = [name for name in options.studies if name not in ALL_STUDIES]
        if unknown:
            from trainables.errors import unknown_choice

            raise UserError(unknown_choice("--study", unknown[0], list(ALL_STUDIES)))
        return tuple((name, ALL_STUDIES[name]) for name in dict.fromkeys(options.studies))
    return STUDIES + (ON_REQUEST if options.smoke else ())


def _env_uri() -> str | None:
    import os

    return os.environ.get("MLFLOW_TRACKING_URI")


def _say(text: str) -> None:
    print(f"uvlm: {text}", file=sys.stderr, flush=True)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


# ----------------------------------------------------------------------------- space files

def _space_path(options: DemoOptions, study: str, folder: Path) -> Path:
    path = options.spaces / f"{study}.yaml"
    if not path.is_file():
        raise UserError(f"the study file {path} is missing; `uvlm demo` runs from a checkout of the repository "
                        f"(pip install -e .)")
    if options.smoke:
        path = smoke_space(path, folder / "smoke-spaces")
    return seeded_space(path, options.seeds, folder / "seeded-spaces") if options.seeds else path


def seeded_space(path: Path, seeds: list[int], out: Path) -> Path:
    """A copy of a space file that runs on `seeds` (and, tuning, re-runs held-out seeds after them): the same design
    on other seeds, e.g. to check that its intervals do not depend on the seed values. A searched study keeps its
    number of paired seeds per configuration (the first of `seeds`), so its budget stays the same."""
    tree = read_yaml(path, "space file")
    if (tree.get("search") or {}).get("params"):
        own = tree.get("seeds", 1)
        seeds = seeds[:own if isinstance(own, int) else len(own)]
    tree["seeds"] = list(seeds)
    if tree.get("holdout"):  # held-out seeds must stay apart from the tuning seeds
        held_out = len(tree["holdout"]["seeds"])
        tree["holdout"] = {**tree["holdout"], "seeds": list(range(max(seeds) + 1, max(seeds) + 1 + held_out))}
    if isinstance(tree.get("base"), str) and not Path(tree["base"]).is_absolute():
        tree["base"] = str((path.parent / tree["base"]).resolve())
    return _write_copy(tree, out / path.name, f"--seeds: {path.name} on seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} seeds)")


def _write_copy(tree: dict[str, Any], target: Path, what: str) -> Path:
    """Write a demo's copy of a space file, headed by what it is; unchanged text keeps the digest a resume checks."""
    target.parent.mkdir(parents=True, exist_ok=True)
    text = (f"# uvlm demo {what}.\n# Written by uvlm demo; the study itself: uvlm sweep spaces/{target.name}\n"
            + yaml.safe_dump(tree, sort_keys=False))
    if not target.is_file() or target.read_text() != text:
        target.write_text(text)
    return target


def smoke_space(path: Path, out: Path) -> Path:
    """A copy of a study's space file shrunk to toy size: one seed, a few steps, tiny datasets under the workdir."""
    tree = read_yaml(path, "space file")
    data_root = out.parent / "smoke-data"

    def shrink(overrides: dict[str, Any]) -> dict[str, Any]:
        overrides = dict(overrides)
        if isinstance(overrides.get("data.path"), str) and not Path(overrides["data.path"]).is_absolute():
            overrides["data.path"] = str(data_root / Path(overrides["data.path"]).name)
        if "data.train_images" in overrides:
            overrides["data.train_images"] = SMOKE_TRAIN_IMAGES[-1]
        for key in SMOKE_FIXED.keys() & overrides.keys():  # e.g. a factor level's own budget.value
            overrides[key] = SMOKE_FIXED[key]
        if overrides.get(PRETRAINING_STEPS):
            overrides.update(SMOKE_PRETRAINING)
        return overrides

    tree["fixed"] = {**shrink(tree.get("fixed", {})), **SMOKE_FIXED}
    factors = {}
    for name, levels in (tree.get("factors") or {}).items():
        if name == PRETRAINING_STEPS:  # e.g. lm.pretraining.steps: [0, 800]
            tree["fixed"] = {**tree["fixed"], **SMOKE_PRETRAINING}
        if name == "data.train_images":
            factors[name] = SMOKE_TRAIN_IMAGES
        elif isinstance(levels, dict):
            factors[name] = {label: shrink(overrides) for label, overrides in levels.items()}
        else:
            factors[name] = levels
    tree["factors"] = factors
    tree["seeds"] = 1
    if tree.get("search", {}).get("params"):  # two configurations per cell: Optuna's studies get complete trials
        tree["search"] = {**tree["search"], "samples": min(tree["search"].get("samples", 1), 2),
                          "startup_trials": 1}
    if tree.get("holdout"):
        tree["holdout"] = {**tree["holdout"], "seeds": tree["holdout"]["seeds"][:1]}
    if tree.get("early_stopping"):
        tree["early_stopping"] = {**tree["early_stopping"], "enabled": False}  # no rung within a few steps
    return _write_copy(tree, out / path.name, f"--smoke: {path.name} shrunk to toy size (one seed, "
                                              f"{SMOKE_FIXED['budget.value']} steps)")


# ----------------------------------------------------------------------------- sweep state

def _state(uri: str, name: str) -> str:
    """new (no sweep of this name), finished (its parent run ended FINISHED: every trial ran) or resumed."""
    from search import tracking
    from trainables import mlflow_io
    from trainables.mlflow_names import FINISHED, Role

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return "new"
    client = tracking.connect(uri)
    experiment = mlflow_io.experiment_id(client, name, create=False)
    if experiment is None:
        return "new"
    parents = mlflow_io.runs(client, experiment, Role.SWEEP)
    trials = mlflow_io.runs(client, experiment, Role.TRIAL)
    if not parents and not trials:
        return "new"
    return "finished" if parents and parents[-1].info.status == FINISHED else "resumed"


# ----------------------------------------------------------------------------- reports

def _report(name: str, uri: str, out: Path):
    import logging

    from analysis.report import build_report

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    _say(f"report of {name!r} -> {out}")
    return build_report(name, uri, out)


def correct_across_studies(runs: list[StudyRun]) -> str:
    """Judge the headline results of every study's own finding (the rows of the demo's table) as one family, Holm
    across the studies, where each study's report corrects within its sweep; -> the line that says so."""
    from analysis.results import FindingReport, correct_as_family, family_sentence

    reports = [finding for run in runs if isinstance(finding := run.report.findings[run.finding], FindingReport)]
    correct_as_family(reports)
    return family_sentence([result for report in reports for result in report.headlines])


def headline_rows(runs: list[StudyRun]) -> list[dict[str, Any]]:
    """Each study's own finding: its headline results (estimate, interval, seeds, verdict), or why none."""
    from analysis.sections import arms_text, verdict_text

    rows = []
    for run in runs:
        path = run.report.out / TUNING_FILE
        tuned = json.loads(path.read_text()) if path.is_file() else {}
        if tuned.get("best_ratio"):  # the ratio study has one arm: its finding is the best ratio
            rows += _tuning_rows(run, tuned)
            continue
        held_out = " (tuned, held-out seeds)" if tuned.get("tuned_vs_untuned") else ""
        finding = run.report.findings[run.finding]
        base = {"study": run.study, "finding": run.finding, "report": f"{run.name}/{REPORT_HTML}", "half_width": None,
                "smallest_effect": None, "arms": "-"}
        if isinstance(finding, str):  # not addressed: the reason
            rows.append({**base, "result": "not addressed", "comparison": finding, "metric": "",
                         "estimate": None, "ci": (None, None), "seeds": 0, "verdict": "-"})
            continue
        if not finding.headlines:
            rows.append({**base, "result": "no headline result", "comparison": "; ".join(finding.skipped[:2]),
                         "metric": "", "estimate": None, "ci": (None, None), "seeds": 0, "verdict": "-"})
        for result in finding.headlines:
            group = ", ".join(f"{k}={v}" for k, v in result.group.items() if k not in ("attribute", "trend", "factor"))
            rows.append({**base, "result": result.name + (f" ({group})" if group else "") + held_out,
                         "comparison": result.comparison, "metric": result.metric,
                         "estimate": _finite(result.estimate), "ci": (_finite(result.ci_low), _finite(result.ci_high)),
                         "half_width": _finite(result.half_width), "smallest_effect": result.smallest_effect,
                         "seeds": result.n_seeds, "verdict": verdict_text(result), "arms": arms_text(result)})
        rows += _tuning_rows(run, tuned)  # the untuned finding on the same held-out seeds, beside the tuned one
    return rows


def _tuning_rows(run: StudyRun, tuned: dict[str, Any]) -> list[dict[str, Any]]:
    """A searched study's own rows: the best mixing ratio, and the untuned finding beside the tuned one."""
    from analysis.sections import VERDICT_MARK

    base = {"study": run.study, "finding": run.finding, "report": f"{run.name}/{REPORT_HTML}", "half_width": None,
            "smallest_effect": None, "arms": "-"}
    rows = []
    if ratio := tuned.get("best_ratio"):
        rows.append({**base, "result": f"best mixing ratio ({ratio['configurations']} configurations)",
                     "comparison": "argmax of the mean over seeds", "metric": "data.generation_ratio",
                     "estimate": ratio["ratio"], "ci": (ratio["ci_low"], ratio["ci_high"]), "seeds": ratio["seeds"],
                     "verdict": "-"})
    for row in tuned.get("tuned_vs_untuned", []):
        rows.append({**base, "result": f"{row['result']} (untuned, held-out seeds)", "comparison": row["comparison"],
                     "metric": row["metric"], "estimate": row["untuned"], "ci": tuple(row["untuned_ci"]),
                     "seeds": row["seeds"], "verdict": VERDICT_MARK.get(row["untuned_verdict"], row["untuned_verdict"] or "-")})
    return rows


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _half(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def findings_table(rows: list[dict[str, Any]], correction: str = "") -> str:
    """The headline findings as fixed-width text: what `uvlm demo` prints at the end (± = 95% CI half-width,
    δ = the smallest effect that matters, arms vs floor = the compared arms' mean final scores against the
    constant-answer baseline), over the line that says how the verdicts were corrected."""
    header = ("finding", "result", "metric", "estimate", "95% CI", "±", "δ", "seeds", "arms vs floor", "verdict")
    lines = [header] + [
        (f"{row['finding']} {row['study']}", row["result"], row["metric"], _number(row["estimate"]),
         f"[{_number(row['ci'][0])}, {_number(row['ci'][1])}]" if row["estimate"] is not None else "-",
         _half(row.get("half_width")), _delta(row.get("smallest_effect")), str(row["seeds"]), row.get("arms", "-"),
         row["verdict"])
        for row in rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    text = ["  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return ("Findings (95% intervals over seeds, ± their half-width; headline results only; verdict against the "
            "paper's direction):\n" + "\n".join(text) + (f"\n{correction}" if correction else ""))


def write_index(reports: Path, runs: list[StudyRun], rows: list[dict[str, Any]], smoke: bool,
                seconds: float, correction: str = "") -> tuple[Path, Path]:
    """reports/report.md and reports/index.html: the findings of the studies, linking each study's report,
    rendered by the report's own renderer."""
    import polars as pl

    from analysis.document import Document, render_html, render_markdown
    from analysis.sections import VERDICT_RULE

    title = "uvlm demo: the studies at CPU scale" + (" (smoke: toy size, no conclusions)" if smoke else "")
    document = Document()
    document.h(1, title)
    document.p("Each study is one sweep (a space file under spaces/); each row is a headline result of the finding the "
               "study addresses (declared in its space file), with its 95% bootstrap interval over seeds and that "
               f"interval's half-width (±). {VERDICT_RULE[0].upper()}{VERDICT_RULE[1:]} (or fewer than 3 seeds). "
               f"{correction} Here the family is every row below, across the studies; each study's own report "
               "corrects over its sweep's headline results alone, so a verdict there can be firmer than here. "
               "The per-study reports hold the design, the budget rule, every comparison, figures and limits.")
    document.table(pl.DataFrame([
        {"finding": f"{row['finding']} ({row['study']})", "result": row["result"], "comparison": row["comparison"],
         "metric": row["metric"], "estimate": _number(row["estimate"]),
         "95% CI": f"[{_number(row['ci'][0])}, {_number(row['ci'][1])}]" if row["estimate"] is not None else "-",
         "±": _half(row.get("half_width")), "δ": _delta(row.get("smallest_effect")), "seeds": str(row["seeds"]),
         "arms vs floor": row.get("arms", "-"), "verdict": row["verdict"]} for row in rows]))
    document.h(2, "Reports per study")
    document.links([(run.study, f"{run.name}/report") for run in runs])
    document.p(f"Written by uvlm demo{' --smoke' if smoke else ''} in {_minutes(seconds)} (this session).")
    reports.mkdir(parents=True, exist_ok=True)
    index_md, index_html = reports / "report.md", reports / "index.html"
    index_md.write_text(render_markdown(document))
    index_html.write_text(render_html(document, title))
    return index_md, index_html
