"""Bad space files and command lines: one line `uvlm: error: ...`, exit code 2, no traceback, no MLflow store."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from search.cli import main

VALID = {
    "study": "t",
    "fixed": {"budget.value": 10, "data.path": "data/t"},
    "factors": {"data.arm": ["understanding", "mixed"]},
    "seeds": 2,
    "objective": {"metric": "test/vqa/overall", "mode": "max"},
    "search": {"params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
}


def mutated(**changes):
    tree = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(leaf)
        else:
            node[leaf] = value
    return tree


DELETE = object()

# (id, space file contents, what the one-line message must say)
BAD_SPACES = [
    ("not-yaml", "study: [unclosed", "is not valid YAML"),
    ("not-a-mapping", "- study\n- t\n", "must hold a mapping"),
    ("unknown-top-key", mutated(factor={"data.arm": ["mixed"]}), "unknown key 'factor' (did you mean 'factors'?)"),
    ("missing-study", mutated(study=DELETE), "study is required"),
    ("bad-study-name", mutated(study="my study!"), "study: String should match pattern"),
    ("unknown-config-key", mutated(fixed={"optim.lrr": 0.1}), "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
    ("bad-value-type", mutated(fixed={"budget.value": "lots"}), "budget.value"),
    ("out-of-range", mutated(fixed={"alignment.affine_strength": 1.5}), "alignment.affine_strength"),
    ("unknown-encoder", mutated(factors={"understanding.encoder": ["patch", "sigclip"]}), "'sigclip'"),
    ("loss-does-not-fit-space", mutated(**{"fixed__generation.loss": "cosine"}, factors={"generation.space": ["patch", "vq"]}),
     "cell generation.space=vq"),
    ("empty-factor", mutated(factors={"data.arm": []}), "factors.data.arm has no levels"),
    ("repeated-level", mutated(factors={"data.arm": ["mixed", "mixed"]}), "repeats a value"),
    ("dotted-named-factor", mutated(factors={"my.pair": {"a": {"data.arm": "mixed"}}}), "a named factor"),
    ("zero-seeds", mutated(seeds=0), "a seed count must be at least 1"),
    ("repeated-seeds", mutated(seeds=[1, 1]), "seeds repeat a value"),
    ("unknown-distribution", mutated(search={"params": {"optim.lr": {"type": "lognormal", "low": 1, "high": 2}}}),
     "unknown value 'lognormal'"),
    ("loguniform-at-zero", mutated(search={"params": {"optim.lr": {"type": "loguniform", "low": 0, "high": 1e-2}}}),
     "needs low > 0"),
    ("low-above-high", mutated(search={"params": {"optim.lr": {"type": "uniform", "low": 0.1, "high": 0.01}}}),
     "`low` must be below `high`"),
    ("categorical-without-choices", mutated(search={"params": {"data.arm": {"type": "categorical"}}}), "needs a non-empty `choices`"),
    ("unknown-param-key", mutated(search={"params": {"optim.lr": {"type": "uniform", "lo": 0.1, "high": 0.2}}}),
     "unknown key 'search.params.optim.lr.lo' (did you mean 'low'?)"),
    ("searched-endpoint-invalid", mutated(search={"params": {"alignment.affine_strength": {"type": "uniform", "low": 0.5, "high": 2.0}}}),
     "search.params.alignment.affine_strength value 2.0"),
    ("searched-and-fixed", mutated(search={"params": {"budget.value": {"type": "int", "low": 5, "high": 50}}}),
     "'budget.value' is searched and also set in fixed"),
    ("search-without-objective", mutated(objective=DELETE), "search.params needs an `objective`"),
    ("unknown-metric", mutated(objective={"metric": "test/vqa/overal"}), "did you mean 'test/vqa/overall'"),
    ("unknown-mode", mutated(objective={"metric": "test/vqa/overall", "mode": "maximize"}), "valid: max, min"),
    ("zero-workers", mutated(resources={"workers": 0}), "resources.workers"),
    ("too-many-cpus", mutated(resources={"cpus_per_worker": 512}), "a trial needs 512 CPUs"),
    ("seed-in-fixed", mutated(fixed={"seed": 3}), "the seed is set by `seeds:`"),
    ("runtime-in-fixed", mutated(fixed={"runtime.num_workers": 2}), "set by the `resources:` section"),
    ("when-unknown-key", mutated(search={"params": {"optim.lr": {"type": "uniform", "low": 0.1, "high": 0.2, "when": {"data.armm": "mixed"}}}}),
     "unknown config key 'data.armm'"),
    ("two-datasets-one-path", mutated(factors={"data.generate_train_images": [100, 200]}), "want different datasets"),
    ("samples-without-search", mutated(search={"samples": 3}), "search.samples > 1 repeats identical runs"),
    ("asha-without-steps", mutated(fixed={"budget.unit": "epochs", "budget.value": 1}, early_stopping={"enabled": True}),
     "early_stopping needs budget.unit: steps"),
    ("bad-early-stopping", mutated(early_stopping={"enabled": True, "reduction_factor": 1}), "early_stopping.reduction_factor"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    work = tmp_path / "work"
    monkeypatch.setenv("UVLM_WORKDIR", str(work))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return work


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("uvlm: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("command", ["sweep", "validate"])
@pytest.mark.parametrize("case", BAD_SPACES, ids=[case[0] for case in BAD_SPACES])
def test_bad_space_file(case, command, tmp_path, workdir, capsys):
    _, contents, expected = case
    path = tmp_path / "bad.yaml"
    path.write_text(contents if isinstance(contents, str) else yaml.safe_dump(contents, sort_keys=False))
    extra = ["--trainable", "sweep_bodies:quick"] if command == "sweep" else []
    line = one_line_error(capsys, [command, str(path), *extra])
    assert expected in line
    assert not (workdir / "mlflow.db").exists(), "nothing may be written to MLflow"


BAD_COMMANDS = [
    ("missing-file", ["sweep", "nope.yaml"], "space file 'nope.yaml' does not exist"),
    ("zero-concurrency", ["sweep", "{space}", "--max-concurrent", "0"], "--max-concurrent must be between 1 and 1024 (got 0)"),
    ("dry-run-and-resume", ["sweep", "{space}", "--dry-run", "--resume"], "do not go together"),
    ("bad-name", ["sweep", "{space}", "--name", "a/b"], "--name 'a/b'"),
    ("resume-unknown", ["sweep", "{space}", "--resume", "--name", "never-ran", "--trainable", "sweep_bodies:quick"], "no sweep named 'never-ran' to resume"),
    ("unreachable-server", ["sweep", "{space}", "--tracking-uri", "http://127.0.0.1:9", "--trainable", "sweep_bodies:quick"], "is unreachable"),
    ("unsupported-uri", ["sweep", "{space}", "--tracking-uri", "ftp://host/x", "--trainable", "sweep_bodies:quick"], "unsupported scheme 'ftp'"),
    ("trainable-without-colon", ["sweep", "{space}", "--trainable", "fit"], "expected MODULE:FUNCTION"),
    ("trainable-missing-module", ["sweep", "{space}", "--trainable", "no_such_module:fit"], "cannot import 'no_such_module'"),
    ("trainable-missing-function", ["sweep", "{space}", "--trainable", "json:no_such"], "has no function 'no_such'"),
    # a body with another signature failed in every trial, after Ray started: now the sweep and its dry run refuse it
    ("trainable-wrong-signature", ["sweep", "{space}", "--trainable", "os:system"],
     ("system(command) does not take a trial's arguments, those of trainables.launch.fit"
      "(config, out_dir, *, run_name, storage_path, mlflow_run=None, callbacks=())")),
    ("trainable-wrong-signature-dry-run", ["sweep", "{space}", "--dry-run", "--trainable", "os:system"],
     "system(command) does not take a trial's arguments, those of trainables.launch.fit("),
    ("trainable-without-keywords", ["sweep", "{space}", "--trainable", "shutil:copy"],
     "copy(src, dst, *, follow_symlinks=True) does not take a trial's arguments"),
    ("unreachable-cluster", ["sweep", "{space}", "--dry-run", "--address", "127.0.0.1:9"], "nothing answers at the Ray cluster address"),
    ("unreachable-cluster-run", ["sweep", "{space}", "--address", "127.0.0.1:9", "--trainable", "sweep_bodies:quick"],
     "nothing answers at the Ray cluster address"),
    ("ui-bad-port", ["ui", "--port", "70000"], "--port must be between 1 and 65535"),
]


@pytest.mark.parametrize("case", BAD_COMMANDS, ids=[case[0] for case in BAD_COMMANDS])
def test_bad_command_line(case, tmp_path, workdir, capsys):
    _, argv, expected = case
    space = tmp_path / "good.yaml"
    space.write_text(yaml.safe_dump(VALID))
    line = one_line_error(capsys, [arg.format(space=space) for arg in argv])
    assert expected in line
    assert not (workdir / "mlflow.db").exists(), "nothing may be written to MLflow"


@pytest.mark.parametrize("body", ["trainables.launch:fit", "trainables.launch:fit_in_trial", "sweep_bodies:quick"])
def test_the_bodies_that_train_take_a_trials_arguments(body):
    """The signature check and fit agree: a keyword fit came to need, and a trial does not pass, is caught here."""
    from search.trial import resolve_body

    assert callable(resolve_body(body))


def test_the_installed_command_prints_one_line(tmp_path):
    """The real process: exit code 2 and a single stderr line, whatever Python would print."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(mutated(fixed={"optim.lrr": 0.1})))
    result = subprocess.run([sys.executable, "-m", "search.cli", "sweep", str(path)], capture_output=True, text=True,
                            env={**os.environ, "UVLM_WORKDIR": str(tmp_path / "work")}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "did you mean 'lr'" in result.stderr
    assert not (tmp_path / "work" / "mlflow.db").exists()


def test_a_driver_started_inside_another_checkout_is_refused_before_any_trial(tmp_path):
    """Ray puts the driver's working directory first on its workers' path: started inside a checkout other than the
    one it imports, a sweep's trials would run that checkout's code. It stops with one line instead."""
    from search.same_code import package_roots

    checkout = tmp_path / "older-checkout"
    for root in package_roots():
        shutil.copytree(root, checkout / root.name, ignore=shutil.ignore_patterns("__pycache__"))
    with (checkout / "trainables" / "pretrain.py").open("a") as source:
        source.write("\nRECIPE_VERSION = 2  # what an older checkout says\n")
    driver = tmp_path / "bin" / "uvlm"  # like the installed script: a folder without the packages
    driver.parent.mkdir()
    driver.write_text("import sys\nfrom search.cli import main\nsys.exit(main())\n")
    space = tmp_path / "good.yaml"
    space.write_text(yaml.safe_dump(VALID))
    work = tmp_path / "work"
    here = package_roots()[0].parent
    env = {**os.environ, "UVLM_WORKDIR": str(work), "PYTHONPATH": f"{here}{os.pathsep}{here / 'tests'}"}
    result = subprocess.run([sys.executable, str(driver), "sweep", str(space), "--trainable", "sweep_bodies:quick"],
                            cwd=checkout, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"Ray's workers import uvlm from {checkout} but this driver from {here}" in lines[0]
    assert not (work / "runs").exists(), "no trial may start"
