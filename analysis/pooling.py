"""Sweeps of one design on different seeds, read as one sweep: their headlines computed over all their seeds.

    uvlm power mixing --pool ../seeds-100            # the sweep 'mixing' here and in that working folder
    uvlm power mixing --pool other@sqlite:///x.db    # or a sweep of another name in another store

A 30-minute demo holds 6 seeds a cell; its second seed set (`uvlm demo --seeds 100-105 --workdir DIR`) is the
same design on 6 more. Every headline pairs runs by seed, so the two sweeps' runs put side by side are one
sweep of 12 seeds, as long as they are the same design and share no seed. Both are checked before anything
is computed: the same declared headlines, the same cells, and in each cell the same settings (every
parameter that is the same for all of a cell's runs, except the seed and the folders, which name where a
sweep ran, not what it ran); a seed run by two of the sweeps would be counted twice and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from analysis.sweep import all_findings, load_sweep
from analysis.tuning import finding_runs
from trainables.errors import UserError
from trainables.mlflow_names import FINISHED
from trainables.workspace import tracking_uri as resolve_uri

SOURCE = "pool_source"
"""Column of a pooled runs frame: which sweep (str(SweepRef)) a run came from."""
IGNORED_SETTINGS = ("params.seed",)
"""Settings that differ between seed sets of one design by construction."""


@dataclass(frozen=True)
class SweepRef:
    """One sweep to pool: its name and the store that holds it."""

    sweep: str
    tracking_uri: str

    def __str__(self) -> str:
        return f"{self.sweep!r} at {self.tracking_uri}"


def parse_ref(text: str, default_sweep: str) -> SweepRef:
    """'[SWEEP@]WHERE' -> a SweepRef. WHERE is a tracking URI (it has '://') or a working folder (its mlflow.db);
    the sweep defaults to `default_sweep` (the same study in another working folder)."""
    sweep, at, where = text.rpartition("@")
    if not at:
        sweep, where = default_sweep, text
    if not sweep or not where:
        raise UserError(f"--pool {text!r}: expected [SWEEP@]WORKDIR or [SWEEP@]TRACKING_URI, e.g. --pool ../seeds-100")
    if "://" in where:
        return SweepRef(sweep, where)
    folder = Path(where).expanduser()
    if not (folder / "mlflow.db").is_file():
        raise UserError(f"--pool {text!r}: {str(folder)!r} is not a uvlm working folder (no mlflow.db there); "
                        f"give the --workdir of the other sweep, or its tracking URI")
    return SweepRef(sweep, f"sqlite:///{(folder / 'mlflow.db').resolve()}")


def pooled_findings(refs: list[SweepRef]):
    """(runs, history, declared headlines or None, all_findings) of the sweeps in `refs` read as one sweep."""
    parts = [(ref, *load_sweep(ref.sweep, ref.tracking_uri)) for ref in refs]
    first, _, _, headlines = parts[0]
    for ref, _, _, other in parts[1:]:
        if other != headlines:
            raise UserError(f"cannot pool sweep {ref} with sweep {first}: they declare different headline results")
    check_same_design([(ref, finding_runs(runs)) for ref, runs, _, _ in parts])
    runs = pl.concat([runs.with_columns(pl.lit(str(ref)).alias(SOURCE)) for ref, runs, _, _ in parts], how="diagonal_relaxed")
    history = pl.concat([history for _, _, history, _ in parts], how="vertical_relaxed")
    return runs, history, headlines, all_findings(finding_runs(runs), history, headlines)


def check_same_design(parts: list[tuple[SweepRef, pl.DataFrame]]) -> None:
    """UserError unless every sweep has the same cells with the same settings and no seed is in two of them."""
    (first, first_runs), *others = parts
    reference = cell_settings(first_runs)
    seen_seeds = {seed: first for seed in finished(first_runs)["seed"].unique().to_list()}
    for ref, runs in others:
        settings = cell_settings(runs)
        if set(settings) != set(reference):
            only = sorted(set(settings) ^ set(reference))
            raise UserError(f"cannot pool sweep {ref} with sweep {first}: their cells differ ({', '.join(only)} in one "
                            f"only); pool sweeps of the same space file")
        for cell, values in settings.items():
            for key in sorted(set(values) | set(reference[cell])):
                if values.get(key) != reference[cell].get(key):
                    raise UserError(
                        f"cannot pool sweep {ref} with sweep {first}: in cell {cell or '(the only one)'!r}, "
                        f"{key.removeprefix('params.')} is {values.get(key)!r} there and {reference[cell].get(key)!r} "
                        f"here; pool sweeps of the same design on other seeds (uvlm demo --seeds ... --workdir DIR)")
        for seed in finished(runs)["seed"].unique().to_list():
            if seed in seen_seeds:
                raise UserError(f"cannot pool sweep {ref} with sweep {seen_seeds[seed]}: both ran seed {seed}, which "
                                f"would be counted twice; pool sweeps of other seeds")
            seen_seeds[seed] = ref


def cell_settings(runs: pl.DataFrame) -> dict[str, dict[str, object]]:
    """Per cell of finished runs: every parameter with one value over the cell's runs (seed and folders left out)."""
    done = finished(runs)
    params = [c for c in done.columns if c.startswith("params.") and c not in IGNORED_SETTINGS and not _is_folder(c)]
    out: dict[str, dict[str, object]] = {}
    for (cell,), group in done.group_by("cell", maintain_order=True):
        out[cell or ""] = {c: group[c][0] for c in params if group[c].n_unique() == 1}
    return out


def pool_seeds(runs: pl.DataFrame, refs: list[SweepRef]) -> list[tuple[SweepRef, str]]:
    """Each pooled sweep with the seeds of its finished runs, as ranges ('0-7', '100-103, 105')."""
    done = finished(runs)
    return [(ref, seed_ranges(done.filter(pl.col(SOURCE) == str(ref))["seed"].unique().to_list())) for ref in refs]


def pool_sentence(pooled: list[tuple[SweepRef, str]]) -> str:
    """'Pooled as one sweep, paired by seed: ...', each sweep with its seeds (pool_seeds): power and report say it alike."""
    return "Pooled as one sweep, paired by seed: " + "; ".join(f"sweep {ref} (seeds {seeds})" for ref, seeds in pooled)


def run_stores(runs: pl.DataFrame, refs: list[SweepRef]) -> dict[str, str]:
    """Run id -> the tracking URI that holds it, for a pooled frame (SOURCE column) or one sweep's (refs[0])."""
    if SOURCE not in runs.columns:
        return dict.fromkeys(runs["run_id"].to_list(), refs[0].tracking_uri)
    uris = {str(ref): ref.tracking_uri for ref in refs}
    return {run_id: uris[source] for run_id, source in zip(runs["run_id"].to_list(), runs[SOURCE].to_list())}


def seed_ranges(seeds: list[int]) -> str:
    spans: list[list[int]] = []
    for seed in sorted(seeds):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans) or "none"


def finished(runs: pl.DataFrame) -> pl.DataFrame:
    return runs.filter(pl.col("status") == FINISHED)


def _is_folder(column: str) -> bool:
    name = column.rsplit(".", 1)[-1]
    return name.endswith("path") or name == "cache_dir"


def default_ref(sweep: str, tracking_uri: str | None) -> SweepRef:
    return SweepRef(sweep, resolve_uri(tracking_uri))
