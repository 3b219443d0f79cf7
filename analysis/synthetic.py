"""A sweep of known effects, written into a real MLflow store in the layout of docs/ARCHITECTURE.md.

Tests and `benchmarks/load_runs.py` need sweeps whose true effects are known,
so that an estimate can be checked against the truth. `write_sweep` writes one
exactly as `search` does: an experiment named after the sweep, a parent run
tagged `uvlm.role=sweep`, one nested trial run per (cell, seed) with
`mlflow.parentRunId`, the `uvlm.*` tags, the flattened `TrainConfig` as
parameters, per-evaluation metric histories through `log_batch`, final
metrics at the last step, and `generated.png` artifacts on request. Tags, run names,
run endings and metric names come from `trainables.mlflow_names` and `mlflow_io`, as in a
real sweep; the loader in `analysis.frames` is its reader.

The simulated metrics are additive, so every effect below is exact in
expectation:

    understanding metric of a run = level(attribute, size) + seed effect + noise
                                    + [mixed] understanding benefit
    understanding benefit         = understanding_benefit
                                    + benefit_slope * ln(size / smallest size)
                                    + alignment_slope * affine strength
                                    + unmatched_pair_penalty * [encoder and space differ]
                                    + random_lm_benefit * [lm.pretraining.steps 0]
    generation metric of a run    = level + seed effect + noise
                                    + [mixed] (generation_benefit + random_lm_benefit * [lm.pretraining.steps 0])
    hidden-value VQA (finding 3)  = 0.3 + seed effect + noise
                                    + [mixed, not control] transfer (LM trains) or transfer_lm_frozen
                                    (on the hidden images' weather; their overall starts at 0.5, above the
                                    constant answers' 0.372, as in runs that have learned to answer)
    constant-answer baselines     BASELINES per attribute (VQA), GENERATION_BASELINE (generation probe)

Along a run (the evaluation history) every score rises towards its final value; for the mixed arm,
the understanding and generation scores at fraction f of the budget are shifted by
benefit_trend * ln(f) (zero at the end), plus independent noise (`eval_noise`) at each evaluation
but the last: so the benefit's slope against ln(records seen) is benefit_trend when the final
benefits are 0, and the mean of the per-run curve differs from its end point.

Example::

    from analysis.synthetic import Effects, SyntheticSweep, write_sweep
    design = SyntheticSweep(name="mixing", effects=Effects(understanding_benefit=0.05))
    write_sweep("sqlite:///tmp/m.db", design)    # into a real MLflow store
    runs = runs_frame(design)                    # the same trials as load_runs would frame them, in memory
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import numpy as np
import polars as pl

from analysis.frames import assemble
from trainables import mlflow_io
from trainables.config import Arm, load_config
from trainables.mlflow_names import (ATTRIBUTES, CORNERS, ENDING_TAGS, FAILED, FINISHED, GENERATED_IMAGE, TRIAL_TABLE, Metric,
                                     Tag, overall, sweep_tags, trial_run_name, trial_tags)

SPACE_FILE = "space.yaml"
"""The stand-in space file logged beside the trial table (its factors only)."""
# Understanding level per attribute at the smallest data size; low enough that no effect is clipped at 1.
LEVELS = {"time": 0.45, "weather": 0.7, "battery": 0.4, "weather_corner": 0.65, "battery_corner": 0.65}
BASELINES = {"time": 0.5, "weather": 0.34, "battery": 0.52, "weather_corner": 0.25, "battery_corner": 0.25}
GENERATION_BASELINE = 0.35
"""The probe's score on a constant generation (baseline/gen/probe/*): below the generating arms' 0.6."""

# Freezing variants of finding 3: a named bundle of config values.
FREEZING = {
    "none": {},
    "lm_frozen": {"lm.trainability": "frozen"},
    "adapters_frozen": {"trainability.understanding_projector": "frozen", "trainability.generation_projector": "frozen"},
}


@dataclass(frozen=True)
class Effects:
    """The true effects of a synthetic sweep (differences in metric units, scores in [0, 1])."""

    understanding_benefit: float = 0.05
    """Mixed minus understanding-only on every test/vqa metric, at the smallest data size, strength 0."""
    benefit_slope: float = 0.0
    """Change of the understanding benefit per unit of ln(train_images)."""
    generation_benefit: float = 0.05
    """Mixed minus generation-only on every test/gen metric."""
    alignment_slope: float = 0.0
    """Change of the understanding benefit per unit of alignment.affine_strength."""
    unmatched_pair_penalty: float = 0.0
    """Change of the understanding benefit when understanding.encoder != generation.space (and space != same)."""
    transfer: float = 0.2
    """Hidden-value VQA gain of mixed over its control when the LM trains."""
    transfer_lm_frozen: float = 0.0
    """The same gain when the LM is frozen."""
    benefit_trend: float = 0.0
    """Mixed arm: shift of the understanding and generation scores by benefit_trend * ln(fraction of the budget)."""
    noise: float = 0.01
    """Standard deviation of the per-run noise."""
    eval_noise: float = 0.0
    """Standard deviation of the noise of each evaluation along a run (the final one excepted)."""
    seed_sd: float = 0.02
    """Standard deviation of the per-seed effect shared by all runs of a seed (what pairing removes)."""
    random_lm_benefit: float = 0.0
    """Change of the understanding and generation benefits in runs with a random LM (lm.pretraining.steps 0)."""


@dataclass(frozen=True)
class SyntheticSweep:
    """The design of a synthetic sweep. A factor with more than one value is crossed (and tagged)."""

    name: str = "synthetic"
    study: str = "mixing"
    arms: tuple[str, ...] = tuple(arm.value for arm in Arm)
    train_images: tuple[int, ...] = (250, 500, 1000, 2000)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    affine_strengths: tuple[float, ...] = (0.0,)
    pairs: tuple[tuple[str, str], ...] = (("patch", "patch"),)
    """(understanding.encoder, generation.space) pairs."""
    hide: bool = False
    """Finding 3: a hide_from_understanding rule, with data.hide_control crossed over (False, True)."""
    freezing: tuple[str, ...] = ("none",)
    """Keys of FREEZING, crossed when more than one."""
    pretraining_steps: tuple[int, ...] = (0,)
    """lm.pretraining.steps (0: a random LM), crossed when more than one."""
    searched: dict[str, tuple[float, float, bool]] = field(default_factory=dict)
    """Searched hyperparameters: dotted name -> (low, high, log). optim.lr has a true optimum at 2e-3."""
    eval_steps: tuple[int, ...] = (250, 500, 750, 1000)
    fail_fraction: float = 0.0
    """Share of trials that end FAILED (after the first evaluation, with tag uvlm.error)."""
    images: bool = False
    """Log a generated.png artifact on every finished trial run that trains generation."""
    effects: Effects = field(default_factory=Effects)
    random_seed: int = 0
    headlines: dict[str, dict[str, Any]] | None = None
    """Declared headlines (the space file's `headlines:` section), logged in trial_table.json on the parent run."""


def factors(design: SyntheticSweep) -> dict[str, list[Any]]:
    """The crossed factors as dotted key -> values (the arm always; the others when they vary)."""
    crossed: dict[str, list[Any]] = {"data.arm": list(design.arms)}
    if len(design.train_images) > 1:
        crossed["data.train_images"] = list(design.train_images)
    if len(design.affine_strengths) > 1:
        crossed["alignment.affine_strength"] = list(design.affine_strengths)
    if len(design.pairs) > 1:
        crossed["pair"] = list(design.pairs)
    if design.hide:
        crossed["data.hide_control"] = [False, True]
    if len(design.freezing) > 1:
        crossed["freezing"] = list(design.freezing)
    if len(design.pretraining_steps) > 1:
        crossed["lm.pretraining.steps"] = list(design.pretraining_steps)
    return crossed


def trial_overrides(design: SyntheticSweep, cell: dict[str, Any], seed: int) -> dict[str, Any]:
    """Dotted config overrides of one trial (bundled factors expanded)."""
    overrides: dict[str, Any] = {"seed": seed, "data.train_images": design.train_images[0],
                                 "alignment.affine_strength": design.affine_strengths[0],
                                 "understanding.encoder": design.pairs[0][0], "generation.space": design.pairs[0][1],
                                 "lm.pretraining.steps": design.pretraining_steps[0]}
    for key, value in cell.items():
        if key == "pair":
            overrides["understanding.encoder"], overrides["generation.space"] = value
        elif key == "freezing":
            overrides.update(FREEZING[value])
        else:
            overrides[key] = value
    if len(design.freezing) == 1:
        overrides.update(FREEZING[design.freezing[0]])
    if overrides["generation.space"] == "vq":
        overrides["generation.loss"] = "ce"
    if design.hide:
        overrides["data.hide_from_understanding"] = ["weather=raining"]
    return overrides


def simulate(design: SyntheticSweep, overrides: dict[str, Any], seed_effect: float, rng: np.random.Generator) -> dict[str, float]:
    """Final metrics of one finished trial under the additive model of the module docstring."""
    fx = design.effects
    arm = overrides["data.arm"]
    size = float(overrides["data.train_images"])
    growth = 0.02 * math.log2(size / min(design.train_images))
    strength = float(overrides["alignment.affine_strength"])
    encoder, space = overrides["understanding.encoder"], overrides["generation.space"]
    unmatched = space != "same" and encoder != space
    lr_penalty = 0.0
    if "optim.lr" in overrides:  # a searched lr: quadratic loss around 2e-3 in log10 units
        lr_penalty = 0.02 * (math.log10(overrides["optim.lr"]) - math.log10(2e-3)) ** 2

    def noisy(value: float) -> float:
        return float(np.clip(value + seed_effect + rng.normal(0.0, fx.noise) - lr_penalty, 0.0, 1.0))

    random_lm = fx.random_lm_benefit if overrides["lm.pretraining.steps"] == 0 else 0.0
    benefit = (fx.understanding_benefit + fx.benefit_slope * math.log(size / min(design.train_images))
               + fx.alignment_slope * strength + fx.unmatched_pair_penalty * unmatched + random_lm)
    metrics: dict[str, float] = {}
    vqa = {}
    for attribute in ATTRIBUTES:
        if arm == Arm.GENERATION:  # never trained to answer: near the constant-answer baseline
            vqa[attribute] = noisy(BASELINES[attribute] * 0.6)
        else:
            vqa[attribute] = noisy(LEVELS[attribute] + growth + (benefit if arm == Arm.MIXED else 0.0))
        metrics[f"{Metric.VQA}/{attribute}"] = vqa[attribute]
        metrics[f"{Metric.BASELINE_VQA}/{attribute}"] = BASELINES[attribute]
    metrics[overall(Metric.VQA)] = float(np.mean(list(vqa.values())))
    metrics[overall(Metric.BASELINE_VQA)] = float(np.mean(list(BASELINES.values())))
    metrics[Metric.CAPTION] = noisy(0.1 if arm == Arm.GENERATION else 0.6 + growth + (benefit if arm == Arm.MIXED else 0.0))
    metrics[Metric.BASELINE_CAPTION] = 0.2
    gen_benefit = fx.generation_benefit + random_lm if arm == Arm.MIXED else 0.0
    probes = {}
    for attribute in ATTRIBUTES:
        probes[attribute] = noisy(0.2 if arm == Arm.UNDERSTANDING else 0.6 + growth + gen_benefit)
        metrics[f"{Metric.GEN_PROBE}/{attribute}"] = probes[attribute]
        metrics[f"{Metric.PROBE_TRUE}/{attribute}"] = 0.95
        metrics[f"{Metric.BASELINE_GEN_PROBE}/{attribute}"] = GENERATION_BASELINE
    metrics[overall(Metric.GEN_PROBE)] = float(np.mean(list(probes.values())))
    metrics[overall(Metric.BASELINE_GEN_PROBE)] = GENERATION_BASELINE
    metrics[overall(Metric.PROBE_TRUE)] = 0.95
    metrics[Metric.GEN_COSINE] = noisy(0.05 if arm == Arm.UNDERSTANDING else 0.5 + growth + gen_benefit)
    if space == "vq":
        metrics[Metric.GEN_TOKEN_ACCURACY] = noisy(0.01 if arm == Arm.UNDERSTANDING else 0.2 + growth + gen_benefit)
        for index, corner in enumerate(CORNERS):  # no draws of its own (the other metrics keep their noise): the
            # icon follows the weather probe, drawn best in the first-generated corner (trainables.icons)
            metrics[f"{Metric.GEN_ICON}/{corner}"] = float(np.clip(probes["weather"] - 0.1 * index, 0.0, 1.0))
            metrics[f"{Metric.BASELINE_GEN_ICON}/{corner}"] = 1 / 3  # one fixed icon: right for a third of the asks
        metrics[overall(Metric.GEN_ICON)] = float(np.mean([metrics[f"{Metric.GEN_ICON}/{c}"] for c in CORNERS]))
        metrics[overall(Metric.BASELINE_GEN_ICON)] = 1 / 3
    if design.hide:
        lm_frozen = overrides.get("lm.trainability") == "frozen"
        gain = 0.0
        if arm == Arm.MIXED and not overrides["data.hide_control"]:
            gain = fx.transfer_lm_frozen if lm_frozen else fx.transfer
        metrics[overall(Metric.VQA_HIDDEN)] = noisy(0.5 + gain)
        metrics[f"{Metric.VQA_HIDDEN}/weather"] = noisy(0.3 + gain)
        metrics[f"{Metric.VQA_HIDDEN}/time"] = noisy(0.45)
    return metrics


def history(final: dict[str, float], steps: tuple[int, ...], rng: np.random.Generator, trend: float = 0.0,
            eval_noise: float = 0.0) -> list[tuple[int, dict[str, float]]]:
    """Per-evaluation metrics rising towards the final ones; the last evaluation is the final one. `trend` shifts
    the understanding and generation scores by trend * ln(step / last step) (the mixed arm's benefit trend)."""
    rows = []
    for step in steps:
        share = 1.0 - math.exp(-3.0 * step / steps[-1])
        scale = share / (1.0 - math.exp(-3.0))
        last = step == steps[-1]
        shift = trend * math.log(step / steps[-1])

        def along(key: str, value: float) -> float:
            if key.startswith((f"{Metric.BASELINE}/", Metric.PROBE_TRUE)) or last:
                return value
            moved = value * scale + (shift if key.startswith((f"{Metric.VQA}/", Metric.CAPTION, f"{Metric.GEN}/")) else 0.0)
            return moved + (rng.normal(0.0, eval_noise) if eval_noise else 0.0)

        values = {key: along(key, value) for key, value in final.items()}
        values[Metric.TRAIN_LOSS] = 3.0 * math.exp(-2.0 * step / steps[-1]) + abs(rng.normal(0, 0.02))
        values[Metric.TRAIN_TEXT_LOSS] = values[Metric.TRAIN_LOSS] * 0.8
        values[Metric.TRAIN_IMAGE_LOSS] = values[Metric.TRAIN_LOSS] * 0.2
        values[Metric.TRAIN_SAMPLES] = float(step * 32)
        values[Metric.STEP] = float(step)
        rows.append((step, values))
    return rows


def watch_grid(color_seed: int, size: int = 4) -> bytes:
    """A small PNG grid of coloured watch faces, standing in for a trial's generated.png."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(color_seed)
    cell = 48
    image = Image.new("RGB", (cell * size, cell * size), "white")
    draw = ImageDraw.Draw(image)
    for row, col in product(range(size), range(size)):
        x, y = col * cell, row * cell
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.ellipse([x + 6, y + 6, x + cell - 6, y + cell - 6], fill=colour)
        angle = rng.uniform(0, 2 * math.pi)
        draw.line([x + cell / 2, y + cell / 2, x + cell / 2 + 14 * math.cos(angle), y + cell / 2 + 14 * math.sin(angle)], fill="white", width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sqlite_artifact_root(tracking_uri: str) -> str:
    """Artifacts beside a sqlite store (`<folder>/mlartifacts`), never MLflow's default ./mlruns in the cwd."""
    path = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    return (path.parent / "mlartifacts").as_uri()


@dataclass
class Trial:
    """One simulated trial: what the sweep would log for it."""

    trial_id: int
    name: str
    """The run name (trainables.mlflow_names.trial_run_name)."""
    tags: dict[str, str]
    params: dict[str, str]
    history: list[tuple[int, dict[str, float]]]
    """(step, metrics) per evaluation; a failed trial stops after the first."""
    status: str
    trains_generation: bool


def trials(design: SyntheticSweep) -> Iterator[Trial]:
    """Every trial of the design in order (crossed cells x seeds); tag mlflow.parentRunId is 'parent' here."""
    rng = np.random.default_rng(design.random_seed)
    seed_effects = {seed: rng.normal(0.0, design.effects.seed_sd) for seed in design.seeds}
    crossed = factors(design)
    trial_id = 0
    for values in product(*crossed.values()):
        cell = dict(zip(crossed, values))
        for seed in design.seeds:
            overrides = trial_overrides(design, cell, seed)
            for name, (low, high, log) in design.searched.items():
                overrides[name] = float(math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high))
            flat = load_config(None, overrides).flatten()
            levels = _levels(cell, flat)
            tags = trial_tags(parent_run_id="parent", sweep=design.name, study=design.study,
                              trial_id=f"{trial_id:05d}", slot=trial_id, sample=0, attempt=1,
                              arm=overrides["data.arm"], seed=seed, levels=levels)
            tags = {key: str(value) for key, value in tags.items()}
            final = simulate(design, overrides, seed_effects[seed], rng)
            failed = bool(rng.uniform() < design.fail_fraction)
            trend = design.effects.benefit_trend if overrides["data.arm"] == Arm.MIXED else 0.0
            steps = history(final, design.eval_steps, rng, trend, design.effects.eval_noise)
            if failed:
                tags[Tag.ERROR] = "RuntimeError: loss is NaN at step 300"
            else:
                tags[Tag.CHECKPOINT] = f"/synthetic/checkpoints/{trial_id:05d}"
            yield Trial(trial_id, trial_run_name(design.study, levels, seed), tags, {key: str(value) for key, value in flat.items()}, steps[:1] if failed else steps,
                        FAILED if failed else FINISHED, overrides["data.arm"] != Arm.UNDERSTANDING)
            trial_id += 1


def runs_frame(design: SyntheticSweep):
    """The frame `analysis.frames.load_runs` would return for this sweep, built in memory (no MLflow store).

    It goes through the loader's own assembly step, so columns and types are the loader's.
    """
    runs, params, tags, metrics = [], [], [], []
    for trial in trials(design):
        run_id = f"run{trial.trial_id:05d}"
        runs.append((run_id, trial.name, trial.status, 0, 1000, f"memory://{run_id}"))
        params += [(run_id, k, v) for k, v in trial.params.items()]
        tags += [(run_id, k, v) for k, v in {**trial.tags, "mlflow.runName": trial.name}.items()]
        metrics += [(run_id, k, v) for k, v in trial.history[-1][1].items()]
    return assemble(design.name, "0", runs, params, tags, metrics)


def history_frame(design: SyntheticSweep):
    """The frame `analysis.frames.load_history` would return for this sweep (same run ids as `runs_frame`)."""
    rows = [(f"run{trial.trial_id:05d}", key, step, step, value) for trial in trials(design)
            for step, values in trial.history for key, value in values.items()]
    frame = pl.DataFrame(rows, schema={"run_id": pl.String, "metric": pl.String, "step": pl.Int64, "timestamp": pl.Int64,
                                       "value": pl.Float64}, orient="row")
    return frame.with_columns(pl.col("timestamp").cast(pl.Datetime("ms", "UTC"))).sort("run_id", "metric", "step", "timestamp")


def write_sweep(tracking_uri: str, design: SyntheticSweep, artifact_root: str | None = None) -> str:
    """Write the sweep's experiment, parent run and trial runs; returns the parent run id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    root = artifact_root or (sqlite_artifact_root(tracking_uri) if tracking_uri.startswith("sqlite:") else None)
    experiment_id = mlflow_io.experiment_id(client, design.name, root)
    every = list(trials(design))
    parent_id = mlflow_io.start_run(client, experiment_id, design.name, sweep_tags(
        sweep=design.name, study=design.study, git_commit="synthetic", space_digest="synthetic", trials=len(every),
        concurrency=1, sessions=1))
    for trial in every:
        _write_trial(client, experiment_id, parent_id, design, trial)
    client.log_text(parent_id, "\n".join(f"{k}: {v}" for k, v in factors(design).items()) + "\n", SPACE_FILE)
    table = {"study": design.study, "space_file": SPACE_FILE, "seeds": list(design.seeds)}
    if design.headlines is not None:
        table["headlines"] = design.headlines
    client.log_dict(parent_id, table, TRIAL_TABLE)
    mlflow_io.finish(client, parent_id, FINISHED, tags={Tag.SUMMARY: f"synthetic sweep {design.name!r}: {len(every)} trials"})
    return parent_id


def _levels(cell: dict[str, Any], flat: dict[str, Any]) -> list[tuple[str, str]]:
    """The cell as (factor, level) pairs for the trial's uvlm.factor.* tags, cell key and run name; the bundled
    factors (pair, freezing) as the dotted keys they set."""
    levels = []
    for key, value in cell.items():
        if key == "pair":
            levels += [("understanding.encoder", value[0]), ("generation.space", value[1])]
        elif key == "freezing":
            levels += [(dotted, str(flat[dotted])) for dotted in sorted({k for bundle in FREEZING.values() for k in bundle})]
        else:
            levels.append((key, str(value)))
    return levels


def _write_trial(client, experiment_id: str, parent_id: str, design: SyntheticSweep, trial: Trial) -> None:
    ending = {key: trial.tags[key] for key in ENDING_TAGS & trial.tags.keys()}
    run_id = mlflow_io.start_run(client, experiment_id, trial.name,
                                 {**{k: v for k, v in trial.tags.items() if k not in ending}, Tag.PARENT: parent_id})
    names = sorted({key for _, values in trial.history for key in values})
    mlflow_io.log_curve(client, run_id, names, [(step, [values.get(name, float("nan")) for name in names])
                                                for step, values in trial.history])
    mlflow_io.log_params(client, run_id, trial.params)
    if design.images and trial.status == FINISHED and trial.trains_generation:
        client.log_image(run_id, _png_array(watch_grid(trial.trial_id)), artifact_file=GENERATED_IMAGE)
    error = ending.pop(Tag.ERROR, None)
    mlflow_io.finish(client, run_id, trial.status, error, tags=ending)


def _png_array(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
