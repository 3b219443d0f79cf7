"""From MLflow runs to findings: polars frames, paired effects with intervals, figures and a report.

    from analysis import load_runs, load_history, mutual_benefit, alignment, transfer, build_report
    runs = load_runs(sweep="mixing")                # one row per trial (columns: analysis/frames.py)
    f1 = mutual_benefit(runs)                       # FindingReport: Results with estimate, 95% CI, n, test, verdict
    build_report("mixing", out_dir="report/")       # what `uvlm report mixing` does; -> Built(out, findings)

Heavy modules (matplotlib, mlflow, optuna) are imported by the functions that need them.
"""

from analysis.findings import alignment, mutual_benefit, transfer
from analysis.frames import list_sweeps, load_history, load_runs
from analysis.importance import best_configs, param_importance, searched_params
from analysis.results import FindingReport, InsufficientData, Result
from analysis.sweep import all_findings


def build_report(*args, **kwargs):
    """`analysis.report.build_report` (imported lazily: it loads matplotlib)."""
    from analysis.report import build_report as build

    return build(*args, **kwargs)


__all__ = ["FindingReport", "InsufficientData", "Result", "alignment", "all_findings", "best_configs", "build_report",
           "list_sweeps", "load_history", "load_runs", "mutual_benefit", "param_importance", "searched_params", "transfer"]
