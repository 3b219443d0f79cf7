"""The MLflow layout's names (docs/ARCHITECTURE.md, "MLflow layout"): the one contract between sweeps and analysis.

Everything that writes or reads uvlm's MLflow runs takes its names from here; trainables.mlflow_io writes
with them:

    tag keys and values      Tag.*, Role, the tag sets a sweep's parent run and its trial runs carry
    run statuses             FINISHED, FAILED, KILLED, RUNNING (MLflow's)
    run names                trial_run_name: <study>/<factor>=<level>/.../seed=<n>[/sample=<k>]
    artifact file names      TRIAL_TABLE, VERSIONS_FILE, TRIALS_FILE, REPORT_FOLDER and the report's files
                             (a sweep's parent run),
                             RUN_FILES, ERROR_FILE (a training or trial run)
    metric names             Metric.*, per_attribute(group), per_corner(group), metric_names(), baseline_of(metric)
    attribute, corner names  ATTRIBUTES, CORNERS (defined once, in trainables.data.records)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Iterable, Sequence

from trainables.data.records import ATTRIBUTES, CORNERS, Task

# ---- tags -----------------------------------------------------------------------------------------


class Role(StrEnum):
    """Value of tag uvlm.role."""

    SWEEP = "sweep"  # a sweep's parent run
    TRIAL = "trial"  # one trial of a sweep, nested under the parent
    TRAIN = "train"  # a single `uvlm train` run


class Tag:
    """Tag keys."""

    PARENT = "mlflow.parentRunId"
    ROLE = "uvlm.role"
    SWEEP = "uvlm.sweep"
    STUDY = "uvlm.study"
    # the parent run
    GIT_COMMIT = "uvlm.git_commit"
    SPACE_DIGEST = "uvlm.space_digest"
    TRIALS = "uvlm.trials"
    CONCURRENCY = "uvlm.concurrency"
    SESSIONS = "uvlm.sessions"
    SUMMARY = "uvlm.summary"
    # a trial run
    TRIAL_ID = "uvlm.trial_id"
    SLOT = "uvlm.slot"
    SAMPLE = "uvlm.sample"
    ATTEMPT = "uvlm.attempt"
    ARM = "uvlm.arm"
    SEED = "uvlm.seed"
    CELL = "uvlm.cell"
    FACTOR = "uvlm.factor."  # + the factor's name (a dotted key, or a named factor's name)
    CHECKPOINT = "uvlm.checkpoint"
    PHASE = "uvlm.phase"  # tune | holdout | untuned (search.sweep_plan.Phase)
    OPTUNA_STUDY = "uvlm.optuna_study"  # the Optuna study and trial whose configuration the run trains
    OPTUNA_TRIAL = "uvlm.optuna_trial"
    # how a run ended
    ERROR = "uvlm.error"
    PRUNED = "uvlm.pruned"
    INTERRUPTED = "uvlm.interrupted"


SWEEP_TAGS = frozenset({Tag.ROLE, Tag.SWEEP, Tag.STUDY, Tag.GIT_COMMIT, Tag.SPACE_DIGEST, Tag.TRIALS, Tag.CONCURRENCY,
                        Tag.SESSIONS, Tag.SUMMARY})
"""The uvlm tags of a sweep's ended parent run."""
TRIAL_TAGS = frozenset({Tag.PARENT, Tag.ROLE, Tag.SWEEP, Tag.STUDY, Tag.TRIAL_ID, Tag.SLOT, Tag.SAMPLE, Tag.ATTEMPT,
                        Tag.ARM, Tag.SEED, Tag.CELL, Tag.PHASE})
"""Tags of every trial run, besides one Tag.FACTOR tag per crossed factor, OPTUNA_TAGS when a searcher proposed
its configuration, and the ENDING_TAGS."""
OPTUNA_TAGS = frozenset({Tag.OPTUNA_STUDY, Tag.OPTUNA_TRIAL})
ENDING_TAGS = frozenset({Tag.CHECKPOINT, Tag.ERROR, Tag.PRUNED, Tag.INTERRUPTED})
"""Tags a trial run may get as it ends: its last checkpoint, or why it did not finish."""
TRAIN_TAGS = frozenset({Tag.ROLE, Tag.ARM, Tag.SEED})
"""Tags of a `uvlm train` run."""


def factor_tag(name: str) -> str:
    return Tag.FACTOR + name


def cell_key(levels: Iterable[tuple[str, str]]) -> str:
    """Tag uvlm.cell: 'data.arm=mixed;data.train_images=500', the levels sorted by factor; '' without factors."""
    return ";".join(f"{name}={label}" for name, label in sorted(levels))


def sweep_tags(*, sweep: str, study: str, git_commit: str, space_digest: str, trials: int, concurrency: int,
               sessions: int) -> dict[str, Any]:
    """The parent run's tags while the sweep runs (Tag.SUMMARY comes when it ends)."""
    return {Tag.ROLE: Role.SWEEP.value, Tag.SWEEP: sweep, Tag.STUDY: study, Tag.GIT_COMMIT: git_commit,
            Tag.SPACE_DIGEST: space_digest, Tag.TRIALS: trials, Tag.CONCURRENCY: concurrency, Tag.SESSIONS: sessions}


def trial_tags(*, parent_run_id: str, sweep: str, study: str, trial_id: str, slot: int, sample: int, attempt: int,
               arm: str, seed: int, levels: Sequence[tuple[str, str]], phase: str = "tune",
               optuna_trial: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trial run's tags; `levels` are the crossed (factor name, level label) pairs of its cell; `optuna_trial`
    ({"study", "trial"}) the Optuna trial whose configuration it trains, if a searcher proposed it."""
    tags = {Tag.PARENT: parent_run_id, Tag.ROLE: Role.TRIAL.value, Tag.SWEEP: sweep, Tag.STUDY: study,
            Tag.TRIAL_ID: trial_id, Tag.SLOT: slot, Tag.SAMPLE: sample, Tag.ATTEMPT: attempt, Tag.ARM: arm,
            Tag.SEED: seed, Tag.CELL: cell_key(levels), Tag.PHASE: phase}
    tags.update({factor_tag(name): label for name, label in levels})
    if optuna_trial:
        tags.update({Tag.OPTUNA_STUDY: optuna_trial["study"], Tag.OPTUNA_TRIAL: optuna_trial["trial"]})
    return tags


def train_tags(*, arm: str, seed: int) -> dict[str, Any]:
    return {Tag.ROLE: Role.TRAIN.value, Tag.ARM: arm, Tag.SEED: seed}


def role_filter(role: Role | str) -> str:
    """The search_runs filter for runs of one role."""
    return f"tags.`{Tag.ROLE}` = '{Role(role).value}'"


# ---- run statuses and artifacts --------------------------------------------------------------------

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
TERMINAL = (FINISHED, FAILED, KILLED)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
"""MLflow 3's UI opens an experiment of this kind on its Runs tab (the model-training view itself is
asked for in the address: search.commands.ui.RUNS_VIEW)."""
TRIAL_TABLE = "trial_table.json"
"""The sweep parent run's plan: study, space file, seeds, objective, declared headlines, one row per slot."""
VERSIONS_FILE = "versions.json"
"""The sweep parent run's package versions, git commit and cluster."""
TRIALS_FILE = "trials.json"
"""The sweep parent run's record of how each trial ended, written when the sweep ends."""
REPORT_FOLDER = "report"
"""Where `uvlm report` logs its files on the sweep's parent run."""
REPORT_MARKDOWN, REPORT_HTML, FINDINGS_FILE, TUNING_FILE = "report.md", "report.html", "findings.json", "tuning.json"
"""In the report folder: the report in Markdown and as one self-contained page, every result, and the tuning
section's numbers (searched sweeps only)."""
CONFIG_FILE, METRICS_FILE, GENERATED_IMAGE, AFFINE_FILE = "config.yaml", "metrics.json", "generated.png", "affine.pt"
"""A training run's folder: its config, final metrics, a grid of generated images, the affine map (alignment)."""
RUN_FILES = (CONFIG_FILE, GENERATED_IMAGE, METRICS_FILE, AFFINE_FILE)
"""The files of a training run's folder logged as its artifacts (those it has)."""
ERROR_FILE = "error.txt"
"""A failed run's traceback."""
FLAG = "true"
"""The value of a flag tag (uvlm.pruned)."""


# ---- run names ------------------------------------------------------------------------------------

def trial_run_name(study: str, levels: Sequence[tuple[str, str]], seed: int, sample: int | None = None,
                   rerun: int = 0) -> str:
    """What a trial is, readable in the MLflow UI: 'mixing/arm=mixed/seed=2'.

    Factors in the order given, each by the last part of its dotted key unless two factors share it;
    `sample` (searched configurations per cell and seed) only when the space asks for several; `rerun`
    counts earlier runs of the same slot (a trial Tune restarted under a new id after a kill -9), so
    names stay unique within a sweep.
    """
    short = [name.rsplit(".", 1)[-1] for name, _ in levels]
    parts = [study] + [f"{name if short.count(part) > 1 else part}={label}"
                       for (name, label), part in zip(levels, short)]
    parts.append(f"seed={seed}")
    if sample is not None:
        parts.append(f"sample={sample}")
    if rerun:
        parts.append(f"rerun={rerun}")
    return "/".join(parts)


# ---- metric names ---------------------------------------------------------------------------------

class Metric:
    """Metric names (flat, '/'-separated). Groups with one metric per attribute end in 'overall' too."""

    STEP = "step"
    # prefixes of groups
    TRAIN = "train"  # training curves and counts
    GEN = "test/gen"  # every generation metric
    BASELINE = "baseline"  # every constant-answer baseline
    TRIALS = "trials"  # the sweep parent run's counts of trials by how they ended: trials/<state>
    TRAIN_LOSS = "train/loss"
    TRAIN_TEXT_LOSS = "train/text_loss"
    TRAIN_IMAGE_LOSS = "train/image_loss"
    TRAIN_SAMPLES = "train/samples"
    # per-attribute groups: <group>/overall and <group>/<attribute>
    VQA = "test/vqa"
    VQA_HIDDEN = "test/vqa_hidden"  # test images matching a data.hide_from_understanding rule
    GEN_PROBE = "test/gen/probe"  # attributes read back from free-running generations
    PROBE_TRUE = "probe/true"  # the probe's accuracy on true tokens
    BASELINE_VQA = "baseline/vqa"  # the constant-answer baseline
    BASELINE_GEN_PROBE = "baseline/gen/probe"
    # per-corner groups: <group>/overall and <group>/<corner>
    GEN_ICON = "test/gen/icon"  # the requested weather's icon drawn in the requested corner (discrete spaces)
    BASELINE_GEN_ICON = "baseline/gen/icon"
    GEN_ICON_FORCED = "test/gen/icon_forced"  # the same read with each cell's true predecessors fed back (final evaluation)
    # single metrics
    CAPTION = "test/caption/score"
    BASELINE_CAPTION = "baseline/caption/score"
    GEN_COSINE = "test/gen/cosine"
    GEN_TOKEN_ACCURACY = "test/gen/token_accuracy"  # vq spaces
    GEN_FRECHET = "test/gen/frechet"
    TRAIN_SECONDS = "time/train_seconds"
    STEP_SECONDS = "time/step_seconds"
    STEP_SECONDS_MEDIAN = "time/step_seconds_median"
    SETUP_SECONDS = "time/setup_seconds"
    EVAL_SECONDS = "time/eval_seconds"
    FIT_SECONDS = "time/fit_seconds"  # wall time of the trial body, logged by the trial driver
    RESUMED_FROM_STEP = "train/resumed_from_step"  # final metrics of a run that resumed from a checkpoint
    PEAK_MEMORY = "memory/peak_gb"  # GPU runs only


ATTRIBUTE_GROUPS = (Metric.VQA, Metric.VQA_HIDDEN, Metric.GEN_PROBE, Metric.PROBE_TRUE, Metric.BASELINE_VQA,
                    Metric.BASELINE_GEN_PROBE)
CORNER_GROUPS = (Metric.GEN_ICON, Metric.BASELINE_GEN_ICON, Metric.GEN_ICON_FORCED)
TRAIN_CURVE = (Metric.TRAIN_LOSS, Metric.TRAIN_TEXT_LOSS, Metric.TRAIN_IMAGE_LOSS)
"""Logged as a curve (their mean over every eval.log_every_steps steps)."""
SINGLE_METRICS = (Metric.STEP, *TRAIN_CURVE, Metric.TRAIN_SAMPLES, Metric.CAPTION, Metric.BASELINE_CAPTION,
                  Metric.GEN_COSINE, Metric.GEN_TOKEN_ACCURACY, Metric.GEN_FRECHET, Metric.TRAIN_SECONDS,
                  Metric.STEP_SECONDS, Metric.STEP_SECONDS_MEDIAN, Metric.SETUP_SECONDS, Metric.EVAL_SECONDS,
                  Metric.FIT_SECONDS, Metric.PEAK_MEMORY, Metric.RESUMED_FROM_STEP)


def overall(group: str) -> str:
    return f"{group}/overall"


def per_attribute(group: str) -> tuple[str, ...]:
    """'<group>/<attribute>' for each of ATTRIBUTES (without 'overall')."""
    return tuple(f"{group}/{attribute}" for attribute in ATTRIBUTES)


def per_corner(group: str) -> tuple[str, ...]:
    """'<group>/<corner>' for each of CORNERS (without 'overall')."""
    return tuple(f"{group}/{corner}" for corner in CORNERS)


def prefixed(metrics: dict[str, float], group: str) -> dict[str, float]:
    """{'overall': x, 'time': y} -> {'<group>/overall': x, '<group>/time': y}."""
    return {f"{group}/{key}": value for key, value in metrics.items()}


BASELINE_GROUPS = {Metric.VQA: Metric.BASELINE_VQA, Metric.VQA_HIDDEN: Metric.BASELINE_VQA,
                   Metric.GEN_PROBE: Metric.BASELINE_GEN_PROBE, Metric.GEN_ICON: Metric.BASELINE_GEN_ICON}
"""Each test group scored against a constant answer -> that baseline's group (the hidden images' VQA against the
constant answers of the whole test split)."""


def baseline_of(metric: str) -> str | None:
    """The constant-answer baseline logged beside a test metric, e.g. test/vqa_hidden/time -> baseline/vqa/time;
    None for a metric without one (training, timing, cosine, Fréchet...)."""
    if metric == Metric.CAPTION:
        return Metric.BASELINE_CAPTION
    group, _, key = metric.rpartition("/")
    return f"{BASELINE_GROUPS[group]}/{key}" if group in BASELINE_GROUPS else None


def scored_task(metric: str) -> Task | None:
    """The test task whose evaluation logs `metric` (None for training, timing and fixed metrics)."""
    for prefix, task in ((Metric.VQA + "/", Task.VQA), (Metric.VQA_HIDDEN + "/", Task.VQA), (Metric.CAPTION, Task.CAPTION),
                         (Metric.GEN + "/", Task.GENERATION)):
        if metric.startswith(prefix):
            return task
    return None


def metric_names() -> list[str]:
    """Every metric name a trial run may carry."""
    names = list(SINGLE_METRICS)
    for group in ATTRIBUTE_GROUPS:
        names += [overall(group), *per_attribute(group)]
    for group in CORNER_GROUPS:
        names += [overall(group), *per_corner(group)]
    return names
