"""Bad inputs to every command, each run as a real `uvlm` process.

Each must give exit code 2, at most three lines on stderr, no traceback, and
leave the dataset, the MLflow store and the report that already exist byte for
byte as they were. The inputs are what a researcher gets wrong: wrong types,
out-of-range numbers, NaN and inf, typos, missing or unreadable files, a folder
where a file belongs and the other way round, corrupt shards and stores,
unreachable servers, names that collide, YAML keys given twice and YAML alias
bombs. They fail before any heavy import or compute, which keeps this module fast.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPACE = """\
study: t
fixed: {budget.value: 4, data.path: DATA, data.generate_train_images: 48, data.generate_test_images: 12}
factors: {data.arm: [understanding, mixed]}
seeds: 1
"""


def alias_bomb(levels: int = 8) -> str:
    """A YAML flow list of `levels` nested lists, each nine aliases of the one below: 9**levels values in 0.5 kB."""
    text = "[" + ", ".join(["understanding"] * 9) + "]"
    for level in range(1, levels):
        text = f"[&a{level} {text}" + f", *a{level}" * 8 + "]"
    return text


BOMB_REFUSED = re.compile(r"its aliases \(\*name\) expand it to 48,4\d\d,\d\d\d values; at most 100,000 are allowed")
"""What the one line says of alias_bomb(): 9**8 strings, and the lists and keys around them."""


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once by us, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class World:
    root: Path
    work: Path
    data: Path
    protected: list[Path]
    values: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory, data_path) -> World:
    """A working folder with an MLflow store holding one sweep, a report, the tiny dataset and broken copies."""
    from PIL import Image

    from analysis.synthetic import SyntheticSweep, write_sweep
    from search import tracking

    root = tmp_path_factory.mktemp("bad-inputs")
    work = root / "work"
    work.mkdir()
    store = work / "mlflow.db"
    tracking.connect(f"sqlite:///{store}")
    write_sweep(f"sqlite:///{store}", SyntheticSweep(name="mixing", train_images=(500,), seeds=(0, 1)))
    report = work / "reports" / "mixing"
    report.mkdir(parents=True)
    (report / "report.md").write_text("# Sweep report: mixing\n")
    (report / "findings.json").write_text("{}\n")
    (work / "runs" / "old-run").mkdir(parents=True)
    (work / "runs" / "old-run" / "metrics.json").write_text('{"test/vqa/overall": 0.5}\n')

    files = root / "files"
    files.mkdir()
    (files / "notes.txt").write_text("not a database, not YAML: [\n")
    (files / "empty.db").write_bytes(b"")
    (files / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with sqlite3.connect(files / "other.db") as db:  # another program's database (e.g. optuna.db)
        db.execute("CREATE TABLE studies (id INTEGER)")
    (files / "truncated.db").write_bytes(store.read_bytes()[:8192])
    (files / "dup-config.yaml").write_text("optim:\n  lr: 0.001\n  batch_size: 8\n  lr: 0.1\n")
    (files / "dup-space.yaml").write_text(SPACE.replace("DATA", str(data_path)) + "seeds: 2\n")
    (files / "dup-base.yaml").write_text("data:\n  arm: mixed\ndata:\n  arm: generation\n")
    (files / "space-dup-base.yaml").write_text("base: dup-base.yaml\n" + SPACE.replace("DATA", str(data_path)))
    (files / "good-space.yaml").write_text(SPACE.replace("DATA", str(data_path)))
    (files / "section-not-mapping.yaml").write_text("optim: 3\n")
    (files / "llava.json").write_text('{"not": "a list"}')
    Image.new("RGB", (8, 8)).save(files / "watch.png")
    (files / "llava-good.json").write_text('[{"id": "a", "image": "watch.png", "conversations": '
                                           '[{"from": "human", "value": "<image>\\nWhat is this?"}, '
                                           '{"from": "gpt", "value": "A watch."}]}]')
    (files / "list.yaml").write_text("- optim\n- data\n")
    good = SPACE.replace("DATA", str(data_path))
    (files / "space-base-folder.yaml").write_text(f"base: {files}\n" + good)
    (files / "space-nan.yaml").write_text(good.replace("budget.value: 4", "budget.value: 4, optim.lr: .nan"))
    (files / "space-inf-budget.yaml").write_text(good + "budget: {time_budget_s: .inf}\n")
    (files / "space-many-seeds.yaml").write_text(good.replace("seeds: 1", "seeds: 100000000"))
    (files / "space-many-trials.yaml").write_text(
        good.replace("seeds: 1", "seeds: 1000").replace("[understanding, mixed]", str(list(range(1, 201)))))
    (files / "space-key-typo.yaml").write_text(good.replace("factors: {data.arm", "factors: {data.armm"))
    (files / "space-metric-typo.yaml").write_text(good + "objective: {metric: test/vqa/overal}\n")
    (files / "bomb-space.yaml").write_text(good.replace("[understanding, mixed]", alias_bomb()))
    (files / "bomb-config.yaml").write_text(f"data:\n  hide_from_understanding: {{weather: {alias_bomb()}}}\n")
    (files / "space-bomb-base.yaml").write_text("base: bomb-config.yaml\n" + good)
    (files / "huge.yaml").write_text(good + "# a long comment\n" * 10_000)

    broken = root / "broken"
    for name in ("truncated-shard", "bad-manifest", "flipped-byte", "foreign"):
        shutil.copytree(data_path, broken / name)
    shard = sorted((broken / "truncated-shard").rglob("images-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    (broken / "bad-manifest" / "manifest.json").write_text('{"schema_version": ')
    shard = sorted((broken / "flipped-byte").rglob("images-*.parquet"))[0]
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 3] ^= 0xFF  # inside the PNG bytes: only the SHA-256 check sees it
    shard.write_bytes(bytes(blob))
    (broken / "foreign" / "manifest.json").write_text('{"schema_version": 1, "kind": "imagenet"}')

    values = {"root": str(root), "work": str(work), "data": str(data_path), "files": str(files),
              "broken": str(broken), "closed": f"http://127.0.0.1:{closed_port()}", "store": str(store),
              "report": str(report)}
    return World(root, work, data_path, [work, data_path, files, broken], values)


def snapshot(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of every file under the paths, and the list of folders: what 'unchanged' means here."""
    found = {}
    for top in paths:
        for path in sorted(top.rglob("*")):
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return found


def uvlm(world: World, argv: list[str], extra_env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "UVLM_WORKDIR": str(world.work), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra_env)
    return subprocess.run([sys.executable, "-m", "search.cli", *argv], cwd=world.root, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


# (id, argv with {placeholders} from World.values, a piece of the one-line message[, environment variables])
CASES = [
    # uvlm data
    ("data-huge-image", "data smartwatch --out {root}/new --image-size 100000", "--image-size must be between 32 and 1024"),
    ("data-image-not-a-number", "data smartwatch --out {root}/new --image-size big", "expected a whole number (got 'big')"),
    ("data-negative-images", "data smartwatch --out {root}/new --train-images -5", "--train-images must be between 1"),
    ("data-zero-shard", "data smartwatch --out {root}/new --shard-images 0", "--shard-images must be between 1"),
    ("data-negative-seed", "data smartwatch --out {root}/new --seed -1", "--seed must be between 0 and 4294967295"),
    ("data-float-seed", "data smartwatch --out {root}/new --seed 1e3", "expected a whole number"),
    ("data-zero-workers", "data smartwatch --out {root}/new --workers 0", "--workers must be between 1 and 1024"),
    ("data-hide-typo-attribute", "data smartwatch --out {root}/new --hide-from-understanding wether=raining",
     "did you mean 'weather'"),
    ("data-hide-typo-value", "data smartwatch --out {root}/new --hide-from-understanding weather=rainy", "raining"),
    ("data-collides-with-dataset", "data smartwatch --out {data} --train-images 50", "{data}"),
    ("data-out-is-a-file", "data smartwatch --out {files}/notes.txt", "notes.txt"),
    ("data-kind-typo", "data smartwach --out {root}/new", "did you mean 'smartwatch'"),
    ("info-missing", "data info {root}/no-such-dataset", "no-such-dataset"),
    ("info-a-file", "data info {files}/notes.txt", "is a file, not a dataset folder"),
    ("info-truncated-shard", "data info {broken}/truncated-shard", "truncated-shard"),
    ("info-corrupt-manifest", "data info {broken}/bad-manifest", "manifest.json"),
    ("info-foreign-manifest", "data info {broken}/foreign", "foreign"),
    ("info-verify-flipped-byte", "data info --verify {broken}/flipped-byte", "SHA-256"),
    ("llava-missing-json", "data llava --json {root}/none.json --images {files} --out {root}/llava", "does not exist"),
    ("llava-json-is-folder", "data llava --json {files} --images {files} --out {root}/llava", "is a folder"),
    ("llava-json-not-a-list", "data llava --json {files}/llava.json --images {files} --out {root}/llava",
     "expected a JSON list"),
    ("llava-images-is-file", "data llava --json {files}/llava.json --images {files}/notes.txt --out {root}/llava",
     "is a file, not a folder"),
    ("llava-collides-with-dataset", "data llava --json {files}/llava-good.json --images {files} --out {data}",
     "already holds a different dataset"),
    ("llava-zero-shard", "data llava --json {files}/llava.json --images {files} --out {root}/llava --shard-records 0",
     "--shard-records must be between 1"),
    # uvlm train
    ("train-missing-config", "train {root}/nope.yaml", "config file '{root}/nope.yaml' does not exist"),
    ("train-config-is-folder", "train {files}", "is a folder"),
    ("train-config-binary", "train {files}/binary.yaml", "not a UTF-8 text file"),
    ("train-config-duplicate-key", "train {files}/dup-config.yaml", "duplicate key 'lr' on line 4 (first on line 2)"),
    ("train-section-not-mapping", "train {files}/section-not-mapping.yaml", "optim"),
    ("train-nan", "train --set optim.lr=.nan --set data.path={data}", "config optim.lr"),
    ("train-nan-string", "train --set optim.lr=nan --set data.path={data}", "config optim.lr"),
    ("train-inf", "train --set budget.value=.inf --set data.path={data}", "config budget.value"),
    ("train-key-typo", "train --set optim.lrr=1e-3", "did you mean 'lr'"),
    ("train-section-typo", "train --set optm.lr=1e-3", "did you mean 'optim'"),
    ("train-choice-typo", "train --set data.arm=mixd", "data.arm"),
    ("train-wrong-type", "train --set lm.hidden_size=wide", "lm.hidden_size"),
    ("train-huge-image", "train --set data.generate_image_size=100000", "less than or equal to 1024"),
    ("train-negative-seed", "train --set seed=-1", "greater than or equal to 0"),
    ("train-zero-batch", "train --set optim.batch_size=0", "optim.batch_size"),
    ("train-set-without-equals", "train --set optim.lr", "expected KEY=VALUE"),
    ("train-control-hides-nothing", "train --set data.hide_control=true", "needs at least one data.hide_from_understanding"),
    ("train-set-duplicate-key", "train --set 'data.hide_from_understanding={{a: 1, a: 2}}'", "duplicate key 'a'"),
    ("train-data-path-is-file", "train --set data.path={files}/notes.txt --tracking-uri sqlite:///{store}",
     "is a file, not a dataset folder"),
    ("train-data-collides", "train --set data.path={data} --set data.generate_train_images=50", "other options"),
    ("train-too-many-images", "train --set data.path={data} --set data.train_images=4000 "
     "--set data.generate_train_images=48 --set data.generate_test_images=12", "has only 48"),
    ("train-unreachable-server", "train --set data.path={data} --tracking-uri {closed}", "is unreachable"),
    ("train-store-not-a-db", "train --set data.path={data} --tracking-uri sqlite:///{files}/notes.txt",
     "is not an SQLite database"),
    ("train-out-is-a-file", "train --set data.path={data} --out {files}/notes.txt", "--out"),
    ("train-name-escapes", "train --name ../../elsewhere", "use letters, digits"),
    ("train-name-collides", "train --name old-run", "already holds files"),
    ("train-out-holds-a-report", "train --out {report}", "already holds files"),
    ("train-huge-batch", "train --set optim.batch_size=100000", "less than or equal to 4096"),
    ("train-config-is-a-list", "train {files}/list.yaml", "must hold a mapping"),
    ("train-corrupt-dataset", "train --set data.path={broken}/truncated-shard --tracking-uri sqlite:///{store}",
     "truncated-shard"),
    # uvlm sweep / validate
    ("validate-duplicate-key", "validate {files}/dup-space.yaml", "duplicate key 'seeds' on line 5 (first on line 4)"),
    ("validate-base-duplicate-key", "validate {files}/space-dup-base.yaml", "duplicate key 'data' on line 3"),
    ("validate-folder", "validate {files}", "is a folder"),
    ("validate-missing", "validate {root}/nope.yaml", "does not exist"),
    ("validate-huge-file", "validate {files}/huge.yaml", "huge.yaml' is over 65,536 bytes"),
    ("train-huge-config", "train {files}/huge.yaml", "huge.yaml' is over 65,536 bytes"),
    ("sweep-workdir-is-file", "sweep {files}/good-space.yaml --workdir {files}/notes.txt", "working folder"),
    ("sweep-concurrency-huge", "sweep {files}/good-space.yaml --max-concurrent 100000", "--max-concurrent must be between 1"),
    ("sweep-concurrency-word", "sweep {files}/good-space.yaml --max-concurrent many", "expected a whole number"),
    ("sweep-store-not-a-db", "sweep {files}/good-space.yaml --tracking-uri sqlite:///{files}/notes.txt",
     "is not an SQLite database"),
    ("sweep-store-other-program", "sweep {files}/good-space.yaml --tracking-uri sqlite:///{files}/other.db",
     "another program"),
    ("sweep-store-folder", "sweep {files}/good-space.yaml --tracking-uri sqlite:///{files}", "is a folder"),
    ("sweep-unreachable-server", "sweep {files}/good-space.yaml --tracking-uri {closed}", "is unreachable"),
    ("sweep-unknown-command", "swep {files}/good-space.yaml", "did you mean 'sweep'"),
    ("sweep-storage-is-file", "sweep {files}/good-space.yaml --storage {files}/notes.txt", "--storage"),
    ("sweep-name-collides", "sweep {files}/good-space.yaml --name mixing --trainable sweep_bodies:quick",
     "sweep 'mixing' already exists"),
    ("validate-base-is-folder", "validate {files}/space-base-folder.yaml", "is a folder"),
    ("validate-nan", "validate {files}/space-nan.yaml", "optim.lr"),
    ("validate-inf", "validate {files}/space-inf-budget.yaml", "budget.time_budget_s"),
    ("validate-too-many-seeds", "validate {files}/space-many-seeds.yaml", "a seed count must be at most 1000 (got 100000000)"),
    ("validate-too-many-trials", "validate {files}/space-many-trials.yaml", "at most 100000 per sweep"),
    ("validate-key-typo", "validate {files}/space-key-typo.yaml", "did you mean 'arm'"),
    ("validate-metric-typo", "validate {files}/space-metric-typo.yaml", "did you mean 'test/vqa/overall'"),
    # uvlm report
    ("report-sweep-typo", "report mixnig", "did you mean 'mixing'"),
    ("report-store-not-a-db", "report mixing --tracking-uri sqlite:///{files}/notes.txt", "is not an SQLite database"),
    ("report-store-empty-file", "report mixing --tracking-uri sqlite:///{files}/empty.db", "an empty file"),
    ("report-store-other-program", "report mixing --tracking-uri sqlite:///{files}/other.db", "another program"),
    ("report-store-truncated", "report mixing --tracking-uri sqlite:///{files}/truncated.db", "truncated.db"),
    ("report-store-folder", "report mixing --tracking-uri sqlite:///{files}", "is a folder"),
    ("report-store-missing", "report mixing --tracking-uri sqlite:///{root}/none.db", "no MLflow store"),
    ("report-unreachable-server", "report mixing --tracking-uri {closed}", "is unreachable"),
    ("report-unsupported-uri", "report mixing --tracking-uri ftp://host/store", "unsupported scheme 'ftp'"),
    ("report-folder-store", "report mixing --tracking-uri {files}", "is a folder store"),
    ("report-file-uri-store", "report mixing --tracking-uri file://{files}", "is a folder store"),
    ("report-out-is-a-file", "report mixing --out {files}/notes.txt", "--out"),
    # uvlm power
    ("power-half-width-nan", "power mixing --half-width nan", "--half-width must be a finite number between 1e-06"),
    ("power-half-width-negative", "power mixing --half-width -0.1", "--half-width must be between 1e-06 and 1000000"),
    ("power-half-width-word", "power mixing --half-width wide", "expected a number (got 'wide')"),
    ("power-store-other-program", "power mixing --tracking-uri sqlite:///{files}/other.db", "another program"),
    ("power-sweep-typo", "power mixnig", "did you mean 'mixing'"),
    # uvlm demo
    ("demo-workdir-is-file", "demo --workdir {files}/notes.txt", "working folder"),
    ("demo-unreachable-server", "demo --workdir {root}/demo --tracking-uri {closed}", "is unreachable"),
    ("demo-store-not-a-db", "demo --workdir {root}/demo --tracking-uri sqlite:///{files}/notes.txt",
     "is not an SQLite database"),
    # uvlm ui
    ("ui-port-zero", "ui --port 0", "--port must be between 1 and 65535"),
    ("ui-port-word", "ui --port http", "expected a whole number"),
    ("ui-bad-host", "ui --host 300.1.2.3", "--host '300.1.2.3'"),
    ("ui-store-not-a-db", "ui --tracking-uri sqlite:///{files}/notes.txt", "is not an SQLite database"),
    ("ui-store-other-program", "ui --tracking-uri sqlite:///{files}/other.db", "another program"),
    ("ui-unreachable-server", "ui --tracking-uri {closed}", "is unreachable"),
    ("ui-workdir-is-file", "ui --workdir {files}/notes.txt", "working folder"),
    # settings from the environment
    ("env-workdir-is-file", "report mixing", "working folder", {"UVLM_WORKDIR": "{files}/notes.txt"}),
    ("env-store-not-a-db", "report mixing", "is not an SQLite database",
     {"MLFLOW_TRACKING_URI": "sqlite:///{files}/notes.txt"}),
    ("env-unreachable-server", "sweep {files}/good-space.yaml", "is unreachable", {"MLFLOW_TRACKING_URI": "{closed}"}),
]


@pytest.mark.parametrize("argv", [
    "validate {files}/bomb-space.yaml",
    "sweep {files}/bomb-space.yaml --dry-run",
    "validate {files}/space-bomb-base.yaml",
    "train {files}/bomb-config.yaml",
    f"train --set 'data.hide_from_understanding={{{{weather: {alias_bomb()}}}}}'",
], ids=["space", "sweep-dry-run", "space-base", "config", "set"])
def test_an_alias_bomb_is_refused_at_once(argv, world):
    """Nine lists of nine aliases, 0.5 kB of text: `validate` walked 9**8 values for a minute, grew to 6.5 GB and
    printed them all. (The memory bound is pinned in-process below: a child's peak RSS counts its parent's.)"""
    before = snapshot(world.protected)
    began = time.monotonic()
    result = uvlm(world, shlex.split(argv.format(**world.values)), {}, timeout_s=30)
    seconds = time.monotonic() - began
    assert result.returncode == 2 and seconds < 10, f"exit {result.returncode} after {seconds:.1f} s"
    assert result.stderr.count("\n") == 1 and BOMB_REFUSED.search(result.stderr), result.stderr[:1000]
    assert snapshot(world.protected) == before


def test_the_yaml_loader_refuses_a_bomb_a_cycle_deep_nesting_and_a_large_text_at_once():
    import tracemalloc

    from trainables.errors import UserError
    from trainables.yamlfile import load_yaml

    tracemalloc.start()
    began = time.monotonic()
    with pytest.raises(UserError, match=f"^space file 's.yaml': {BOMB_REFUSED.pattern}"):
        load_yaml(f"factors: {{data.arm: {alias_bomb()}}}", "space file 's.yaml'")
    seconds, peak = time.monotonic() - began, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1 and peak < 1_000_000, f"{seconds:.2f} s, {peak} bytes"
    with pytest.raises(UserError, match="the value on line 2 contains an alias to itself"):
        load_yaml("study: t\nfixed: &f {a: [1, *f]}", "s")
    with pytest.raises(UserError, match="nests lists or mappings too deeply"):
        load_yaml("[" * 20_000, "s")
    with pytest.raises(UserError, match="is over 65,536 bytes"):
        load_yaml("a: 1\n" * 20_000, "s")
    shared = load_yaml("x: &x [1, 2]\ny: [*x, *x]\nz: {<<: {k: *x}}", "s")  # aliases within the bound still work
    assert shared == {"x": [1, 2], "y": [[1, 2], [1, 2]], "z": {"k": [1, 2]}}


def test_every_yaml_reader_goes_through_the_one_bounded_loader():
    """A second yaml.load/safe_load would read user files without the bounds and the duplicate-key check."""
    loads = re.compile(r"yaml\.(safe_load|load|full_load|unsafe_load|load_all|safe_load_all|compose|compose_all)\(")
    copies = re.compile(r"yaml\.safe_load\(yaml\.safe_dump\(")  # a deep copy of plain data that uvlm made itself
    found = [f"{path.relative_to(ROOT)}:{number}"
             for package in ("trainables", "search", "analysis", "benchmarks") for path in (ROOT / package).rglob("*.py")
             if path.name != "yamlfile.py"
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if loads.search(line) and not copies.search(line)]
    assert not found, f"read YAML with trainables.yamlfile.load_yaml / read_yaml instead: {found}"


def test_there_are_enough_cases_for_every_command():
    commands = {case[1].split()[0] for case in CASES}
    assert {"data", "train", "sweep", "validate", "report", "power", "demo", "ui"} <= commands
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, world):
    _, argv, expected, *env = case
    env = {key: value.format(**world.values) for key, value in (env[0] if env else {}).items()}
    before = snapshot(world.protected)
    result = uvlm(world, shlex.split(argv.format(**world.values)), env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert 1 <= len(lines) <= 3, result.stderr
    assert lines[-1].startswith("uvlm: error: "), result.stderr
    assert expected.format(**world.values) in result.stderr, result.stderr
    assert snapshot(world.protected) == before, "a bad input changed an existing dataset, store or report"


class Planted:
    """A pickle that runs a command when loaded: what a hostile file in a shared cache folder would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def faces(n: int):
    from trainables.data.records import CORNERS, WEATHERS, WatchFace

    return [WatchFace(hour=i % 12, minute=(7 * i) % 60, second=(11 * i) % 60, battery=(9 * i) % 101,
                      weather=WEATHERS[i % 3], weather_corner=CORNERS[i % 4], battery_corner=CORNERS[(i + 1) % 4])
            for i in range(n)]


def test_a_planted_pickle_in_the_probe_cache_is_not_run(tmp_path):
    import pickle

    import numpy as np

    from trainables.probe import fit_probe

    tokens = np.random.default_rng(0).normal(size=(30, 4, 3))
    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    fitted, held_out = fit_probe(tokens, faces(30), cache)
    (cached_file,) = cache.iterdir()
    assert cached_file.suffix == ".npz"
    again, _ = fit_probe(tokens, faces(30), cache)  # from the cache: the same predictions
    assert again(tokens[held_out]) == fitted(tokens[held_out])

    for name in (cached_file.name, cached_file.with_suffix(".pkl").name):  # the cache file, and the old pickle's name
        (cache / name).write_bytes(pickle.dumps(Planted(marker)))
    refitted, _ = fit_probe(tokens, faces(30), cache)
    assert not marker.exists(), "loading the probe cache ran code"
    assert refitted(tokens[held_out]) == fitted(tokens[held_out])
    with np.load(cached_file, allow_pickle=False) as arrays:  # rewritten as arrays
        assert "mean" in arrays


def test_a_planted_pickle_in_the_codebook_cache_is_not_run(tmp_path):
    import pickle

    import torch

    from trainables.vq import fit_kmeans_vq

    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    fitted = fit_kmeans_vq(images, 8, 4, 4, seed=0, cache_dir=cache, fingerprint="t")
    (cached_file,) = cache.iterdir()
    cached_file.write_bytes(pickle.dumps(Planted(marker)))
    refitted = fit_kmeans_vq(images, 8, 4, 4, seed=0, cache_dir=cache, fingerprint="t")
    assert not marker.exists(), "loading the codebook cache ran code"
    assert torch.equal(refitted.codebook, fitted.codebook)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
@pytest.mark.parametrize("argv, expected", [
    ("train {unreadable}", "cannot be read (Permission denied)"),
    ("validate {unreadable}", "cannot be read (Permission denied)"),
    ("report mixing --tracking-uri sqlite:///{unreadable}", "cannot be read (Permission denied)"),
], ids=["config", "space", "store"])
def test_unreadable_files_are_one_line(argv, expected, world, tmp_path):
    unreadable = tmp_path / "unreadable.yaml"
    unreadable.write_text("study: t\n")
    unreadable.chmod(0)
    result = uvlm(world, shlex.split(argv.format(unreadable=unreadable)), {})
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
