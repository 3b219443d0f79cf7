"""`uvlm demo`: the study files fit the CPU budget fairly, --smoke shrinks them validly, the whole job runs (with a
cheap trial body) to a combined report, a second run skips what finished, and the README's commands are real."""

from __future__ import annotations

import json
import re
import shlex

import optuna
import pytest
import yaml

from search.cli import build_parser
from search.demo import ON_REQUEST, STUDIES, smoke_space
from search.planner import load_space
from trainables.budget import planned_steps
from trainables.config import LMTrainability
from trainables.errors import UserError
from test_sweep_run import ROOT, runs_of, uvlm

STUDY_FILES = [ROOT / "spaces" / f"{study}.yaml" for study, _ in STUDIES]
ON_REQUEST_FILES = [ROOT / "spaces" / f"{study}.yaml" for study, _ in ON_REQUEST]
FACTOR_STUDIES = [(study, finding) for study, finding in STUDIES if study != "ratio"]  # ratio: one searched arm


# ----------------------------------------------------------------------------- the CPU-scale design

# Measured in a whole `uvlm demo` on a 2-core machine, two trials at a time (54 trials of the four studies, 26,500
# steps, 26m45s on seeds 0-4 from a clean clone of 9404223, 2026-12-07, quiet): a step of the random LM took
# STEP_SECONDS (the median where no pretraining ran beside it: 0.080-0.081 s in alignment at 51f5dce the same day,
# 0.080 s on 2026-12-06), a step of the text-pretrained LM
# PRETRAINED_STEP_SECONDS trained (0.088 s in mixing, 0.099 s in transfer) and FROZEN_STEP_SECONDS frozen, a trial
# TRIAL_SECONDS besides its steps (median: evaluations, set-up, checkpoints, MLflow and Tune), and the LM's
# pretraining PRETRAINING_SECONDS on one thread, beside the first studies' trials (so it adds half of that). Each
# sweep's SWEEP_SECONDS is the rest (its actors' start and first imports, a slot idle through the last trial, data,
# its report), fitted so that the model gives the run's time. The host's step time varies by about 30% from day to
# day (docs/MEASUREMENTS.md, "The demo's wall time").
STEP_SECONDS, PRETRAINED_STEP_SECONDS, FROZEN_STEP_SECONDS = 0.080, 0.093, 0.089
TRIAL_SECONDS, SWEEP_SECONDS, CONCURRENT, PRETRAINING_SECONDS = 4.9, 41.0, 2, 248.0


def step_seconds(config) -> float:
    if not config.lm.pretraining.steps:
        return STEP_SECONDS
    return FROZEN_STEP_SECONDS if config.lm.trainability == LMTrainability.FROZEN else PRETRAINED_STEP_SECONDS


def test_the_demo_studies_fit_thirty_minutes_with_their_fewest_seeds():
    plans = [load_space(path) for path in STUDY_FILES]
    configs = [plan.config(slot) for plan in plans for slot in plan.slots]
    step_time = sum(planned_steps(config) * step_seconds(config) for config in configs)
    pretrained = any(config.lm.pretraining.steps for config in configs)
    minutes = ((step_time + len(configs) * TRIAL_SECONDS + pretrained * PRETRAINING_SECONDS) / CONCURRENT
               + len(plans) * SWEEP_SECONDS) / 60  # the LM is made beside the random-LM studies' trials
    # The budget is 30 minutes. Findings 1 and 3 keep the budgets their gates need (finding 3 trained and
    # frozen at 8 passes: at 4 its trained arms answered rainy faces at the constant answers; finding 1 with
    # generation records from 2,000 images: from 1,000 its generation arms drew below the constant baseline); the
    # seeds gave (five, not eight: intervals about half as wide again), and the ratio search is small
    # (docs/STUDY.md, "Why these budgets"; `uvlm demo --seeds` runs more).
    assert minutes <= 28.5, f"{len(configs)} trials need about {minutes:.1f} minutes on 2 cores"  # a slower day fits
    fewest = {"mixing": 5, "transfer": 5, "alignment": 5, "ratio": 3}  # ratio: paired seeds per configuration
    for plan in plans:
        assert len(plan.space.seeds) >= fewest[plan.study], plan.study
        assert "uvlm demo" in plan.text.split("\n\n")[0]


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda path: path.stem)
def test_every_arm_of_a_study_has_the_same_budget_optimiser_and_alpha(path):
    plan = load_space(path)
    configs = [plan.config(slot).flatten() for slot in plan.slots]
    for key in ("budget.unit", "budget.value", "optim.lr", "optim.batch_size", "generation.alpha", "data.test_images"):
        assert len({config[key] for config in configs}) == 1, (plan.study, key)
    sizes = {config["data.train_images"] or config["data.generate_train_images"] for config in configs}
    assert max(sizes) <= 1000, "below saturation: time and battery are not learnt to the ceiling at this size"


# ----------------------------------------------------------------------------- --smoke

def test_smoke_spaces_are_the_studies_at_toy_size(tmp_path):
    for path in STUDY_FILES + ON_REQUEST_FILES:
        smoke = smoke_space(path, tmp_path / "smoke-spaces")
        plan, original = load_space(smoke), load_space(path)
        assert [[name for name, _ in cell.levels] for cell in plan.cells] == \
            [[name for name, _ in cell.levels] for cell in original.cells], "the same cells, smaller"
        assert plan.space.seeds == [0]
        for slot in plan.slots:
            config = plan.config(slot)
            assert config.budget.value <= 10 and config.data.generate_train_images <= 100
            assert config.data.path.startswith(str(tmp_path / "smoke-data")), "toy data stays in the working folder"
            pretraining = config.lm.pretraining
            assert pretraining.steps == 0 or (pretraining.conversations <= 40 and pretraining.batch_size <= 8)
        pretrains = {plan.config(slot).lm.pretraining.steps > 0 for slot in plan.slots}
        assert pretrains == {original.config(slot).lm.pretraining.steps > 0 for slot in original.slots}, \
            "a study that pretrains its LM still does, at toy size"
        again = load_space(smoke_space(path, tmp_path / "smoke-spaces"))
        assert again.digest == plan.digest, "a rerun writes the same file, so an interrupted smoke sweep can resume"


def test_the_text_pretrained_lm_is_made_in_a_process_of_its_own_once(tmp_path):
    from search import background_lm
    from trainables.pretrain import MANIFEST, text_lm_folder

    mixing, alignment = (load_space(smoke_space(ROOT / "spaces" / f"{study}.yaml", tmp_path / "smoke-spaces"))
                         for study in ("mixing", "alignment"))
    assert background_lm.uses_text_lm(mixing) and not background_lm.uses_text_lm(alignment)
    assert background_lm.start([alignment]) is None, "no LM to make"
    process = background_lm.start([mixing, alignment])
    process.join(timeout=300)
    assert process.exitcode == 0 and (text_lm_folder(mixing.slots[0].config) / MANIFEST).is_file()
    assert background_lm.start([mixing]) is None, "made once"


# ----------------------------------------------------------------------------- the whole job, cheap trials

def fake_fit(config, out_dir, *, run_name, storage_path, mlflow_run=None, callbacks=()):
    """A trial body with the trainable's metric names: mixed helps, misalignment hurts, hiding transfers."""
    from ray import tune

    from search import tracking
    from trainables import mlflow_io

    client = tracking.client(mlflow_run["tracking_uri"])
    mlflow_io.log_params(client, mlflow_run["run_id"], config.flatten())
    arm = config.data.arm.value
    noise = 0.003 * config.seed
    und = 0.6 + (0.05 - 0.04 * config.alignment.affine_strength if arm == "mixed" else 0.0) + noise
    gen = 0.5 + (0.03 if arm == "mixed" else 0.0) + noise
    metrics = {"step": int(config.budget.value), "train/loss": 1.0, "test/vqa/overall": und,
               "test/caption/score": und, "test/gen/probe/overall": gen, "test/gen/cosine": gen}
    if config.data.hide_from_understanding:
        transfer = 0.1 if (arm == "mixed" and not config.data.hide_control) else 0.0
        lm_trains = config.lm.trainability.value != "frozen"
        metrics["test/vqa_hidden/overall"] = 0.4 + transfer * (1.0 if lm_trains else 0.1) + noise
    mlflow_io.log_metrics(client, mlflow_run["run_id"], metrics, step=metrics["step"])
    tune.report(metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics))
    return metrics


@pytest.mark.slow  # three local Rays and 8 cheap trials: about 1 minute on a quiet 2-core machine, 3 on a busy one
def test_demo_runs_every_study_reports_them_and_a_rerun_skips_them(tmp_path):
    args = ("demo", "--smoke", "--workdir", str(tmp_path / "work"), "--trainable", "test_demo:fake_fit")
    first = uvlm(tmp_path, *args, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    for study, finding in STUDIES:
        assert f"{finding} {study}" in first.stdout, first.stdout
        assert (tmp_path / "work" / "reports" / f"{study}-smoke" / "report.html").is_file()
    index = (tmp_path / "work" / "reports" / "index.html").read_text()
    assert all(f"{study}-smoke/report.html" in index for study, _ in STUDIES)
    assert "Findings (95% intervals over seeds" in first.stdout
    assert "uvlm ui --workdir" in first.stdout and "uvlm dashboard --workdir" in first.stdout
    assert "pip install" not in first.stdout
    assert "making the text-pretrained LM in the background" in first.stderr
    started = [study for line in first.stderr.splitlines() if "starting sweep" in line
               for study in [line.split("] ")[1].split(" ")[0]]]
    assert started == ["alignment", "ratio", "tuning", "mixing", "transfer", "pretraining"], \
        "the studies on the random LM first, while the pretrained one is made"
    trials = {study: len(runs_of(tmp_path, f"{study}-smoke")) for study, _ in STUDIES + ON_REQUEST}
    # The cells of each study at one seed (transfer: hidden and control, the LM trained and frozen); ratio: 2
    # configurations; tuning: 2 arms x 2 configurations + 2 arms x one held-out seed x (tuned, untuned); pretraining:
    # 3 arms x 2 LMs.
    assert trials == {"mixing": 3, "alignment": 2, "transfer": 4, "ratio": 2, "tuning": 8, "pretraining": 6}
    storage = f"sqlite:///{tmp_path / 'work' / 'optuna.db'}"
    studies = {summary.study_name for summary in optuna.study.get_all_study_summaries(storage)}
    assert studies == {"ratio-smoke/all", "tuning-smoke/arm=understanding", "tuning-smoke/arm=mixed"}
    for name in studies:
        for trial in optuna.load_study(study_name=name, storage=storage).trials:
            assert trial.state == optuna.trial.TrialState.COMPLETE and trial.params, (name, trial)
    assert "best mixing ratio" in first.stdout and "(untuned, held-out seeds)" in first.stdout

    second = uvlm(tmp_path, *args, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stderr.count("finished earlier, skipped") == len(trials), second.stderr
    assert {study: len(runs_of(tmp_path, f"{study}-smoke")) for study, _ in STUDIES + ON_REQUEST} == trials, \
        "no trial was redone"


def test_demo_skips_finished_studies_and_reports_their_findings(tmp_path, capsys):
    """Three finished sweeps of known effects in the store: nothing is trained, every study is reported."""
    from analysis.synthetic import Effects, SyntheticSweep, write_sweep
    from search.demo import DemoOptions, run_demo

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = dict(train_images=(250, 1000), seeds=(0, 1, 2), eval_steps=(400,))
    write_sweep(uri, SyntheticSweep(name="mixing", study="mixing", **small,
                                    effects=Effects(understanding_benefit=0.05, generation_benefit=-0.05)))
    write_sweep(uri, SyntheticSweep(name="alignment", study="alignment", arms=("understanding", "mixed"),
                                    train_images=(500,), seeds=(0, 1, 2), eval_steps=(400,),
                                    affine_strengths=(0.0, 0.5, 0.9), effects=Effects(alignment_slope=-0.1)))
    write_sweep(uri, SyntheticSweep(name="transfer", study="transfer", arms=("mixed",), train_images=(500,),
                                    seeds=(0, 1, 2), eval_steps=(400,), hide=True, freezing=("none", "lm_frozen")))
    assert run_demo(DemoOptions(workdir=str(tmp_path), studies=["mixing", "alignment", "transfer"])) == 0
    out, err = capsys.readouterr()
    assert err.count("finished earlier, skipped") == 3
    table = out[out.index("Findings"):out.index("report:")]
    assert "1 mixing" in table and "2 alignment" in table and "3 transfer" in table
    assert "±" in table.splitlines()[1].split() and "exploratory" not in table, table  # headline results only
    lines = {line.split("  ")[0] + line.split()[-1] for line in table.splitlines()[3:] if line.strip()}
    assert "1 mixingsupported" in lines and "1 mixingCONTRADICTED" in lines, table  # + on understanding, - on generation
    assert "2 alignmentsupported" in lines and "3 transfersupported" in lines, table
    # one family across the studies (4 mixing, 1 alignment, 2 transfer headlines), not one per study
    assert "Verdicts corrected as one family: Holm over 7 headlines" in table and "δ" in table.splitlines()[1].split()
    md = (tmp_path / "reports" / "report.md").read_text()
    assert md.count("| 1 (mixing) |") >= 2 and "- [alignment](alignment/report.md)" in md
    assert "Holm over 7 headlines" in md and "equivalent (|effect| < δ)" in md
    page = (tmp_path / "reports" / "index.html").read_text()  # the report's renderer: linked, verdicts coloured
    assert "<a href='alignment/report.html'>alignment</a>" in page and "<td class='CONTRADICTED'>" in page
    for study, _ in FACTOR_STUDIES:
        assert (tmp_path / "reports" / study / "report.html").is_file()


def test_the_demo_table_judges_every_studys_headlines_as_one_family(tmp_path):
    """The studies, each with one headline at p = 0.02: each supported in its own report, none across them."""
    from analysis import stats
    from analysis.report import Built
    from analysis.results import TITLES, FindingReport, correct_as_family, make_result
    from search.demo import StudyRun, correct_across_studies, headline_rows

    runs = []
    for study, finding in FACTOR_STUDIES:
        report = FindingReport(finding, *TITLES[finding])
        report.results.append(make_result(finding, f"{study} headline", "test/vqa/overall", "mixed − understanding-only",
                                          stats.Estimate(0.05, 0.01, 0.09, 8, 8, 0.02), "t-test", +1, headline=True))
        correct_as_family([report])  # the study's own report
        assert report.headlines[0].verdict == "supported"
        runs.append(StudyRun(study, finding, study, "finished", report=Built(tmp_path / study, {finding: report})))
    assert correct_across_studies(runs).startswith(f"Verdicts corrected as one family: Holm over {len(runs)} headlines")
    assert [row["verdict"] for row in headline_rows(runs)] == ["inconclusive"] * len(runs)  # p 0.02 x 3 after Holm


# ----------------------------------------------------------------------------- the README

README = (ROOT / "README.md").read_text()


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def readme_commands() -> list[str]:
    commands = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(line)
    return commands


def test_readme_quick_start_is_the_makefile_and_ci():
    makefile = (ROOT / "Makefile").read_text()
    assert "make demo" in readme_commands()[0] and "make test" in readme_commands()[1]
    assert re.search(r"^demo: install\n\tuvlm demo", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("uvlm ")])
def test_every_uvlm_command_in_the_readme_parses(command):
    argv = shlex.split(command)[1:]
    args = build_parser().parse_args(argv)  # argparse exits on an unknown command or flag
    for value in vars(args).values():  # files the command names exist in the repository
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item.startswith(("spaces/", "trainables/")) and "*" not in item \
                    and "paper/" not in item:
                assert (ROOT / item).exists(), item


def test_readme_space_file_examples_are_valid(tmp_path):
    example, paper = [yaml.safe_load(block) for block in readme_blocks("yaml")]
    (tmp_path / "spaces" / "paper").mkdir(parents=True)
    (tmp_path / "trainables").symlink_to(ROOT / "trainables")
    written = tmp_path / "spaces" / "mixing-lr.yaml"
    written.write_text(yaml.safe_dump(example))
    assert len(load_space(written).slots) == 3 * 3 * 4
    tree = yaml.safe_load((ROOT / "spaces" / "mixing.yaml").read_text())
    tree.update(paper)
    written = tmp_path / "spaces" / "paper" / "mixing.yaml"
    written.write_text(yaml.safe_dump(tree))
    plan = load_space(written)
    config = plan.config(plan.slots[0])
    assert (config.lm.trainability.value, config.runtime.use_gpu, config.runtime.num_workers) == ("lora", True, 8)


def test_demo_seeds_run_the_same_design_on_other_seeds(tmp_path):
    from search.commands.demo import parse_seeds
    from search.demo import seeded_space

    assert parse_seeds("100-103,7") == [7, 100, 101, 102, 103] and parse_seeds(None) is None
    for bad in ("10-3", "a-b", "1,,2"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)
    for path in STUDY_FILES + ON_REQUEST_FILES:
        original, copy = load_space(path), load_space(seeded_space(path, list(range(100, 108)), tmp_path))
        searched = bool(original.space.search.params)  # keeps its number of paired seeds
        assert copy.space.seeds == list(range(100, 100 + len(original.space.seeds) if searched else 108))
        assert [*dict.fromkeys(s.cell.key for s in copy.slots)] == [*dict.fromkeys(s.cell.key for s in original.slots)]
        assert original.config(original.slots[0]).with_overrides({"seed": 100}) == copy.config(copy.slots[0])
