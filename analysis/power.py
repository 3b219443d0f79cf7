"""The power of headline results, to size the next sweep: seeds run, the SD of the per-seed effect, the effect
detectable at 80% power and the seeds a target half-width needs (`uvlm power`, and the report's power table)."""

from __future__ import annotations

import math

import polars as pl

from analysis import stats
from analysis.results import TARGET_HALF_WIDTH, Result


def power_frame(results: list[Result], half_width: float | None = None, verdicts: bool = False) -> pl.DataFrame:
    """Power of each result: seeds run, SD of the per-seed effect, ±, the effect detectable at 80% power and the
    seeds a 95% half-width of `half_width` (default TARGET_HALF_WIDTH) needs; `verdicts` adds the 95% interval
    and the verdict (where no results table stands beside it)."""
    target = TARGET_HALF_WIDTH if half_width is None else half_width

    def text(value: float | None, digits: int = 4) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

    def interval(r: Result) -> dict[str, str]:
        return {"95% CI": f"[{text(r.ci_low)}, {text(r.ci_high)}]", "verdict": r.verdict} if verdicts else {}

    rows = [{"finding": r.finding, "result": r.name, "statistic": r.statistic, "estimate": text(r.estimate),
             "seeds": r.n_seeds, "SD of the per-seed effect": text(r.sd_paired), "±": text(r.half_width), **interval(r),
             "detectable at 80% power": text(r.mde_80),
             f"seeds for ±{target:g}": str(n) if (n := stats.seeds_for_half_width(r.sd_paired, target)) else "-"}
            for r in results]
    return pl.DataFrame(rows) if rows else pl.DataFrame()
