"""Space files: the shipped ones are valid, and a plan expands to the right cells, slots and configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.planner import load_space
from search.sweep_plan import format_value
from trainables.budget import planned_steps
from trainables.config import Arm
from trainables.errors import UserError
from trainables.selection import holds, matches

SPACES = sorted((Path(__file__).resolve().parents[1] / "spaces").glob("*.yaml"))


def write(tmp_path: Path, tree: dict | str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(tree if isinstance(tree, str) else yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.mark.parametrize("path", SPACES, ids=lambda path: path.name)
def test_every_shipped_space_is_valid(path):
    plan = load_space(path)
    assert plan.slots, "a study runs at least one trial"
    assert path.read_text().startswith("#"), "the header comment shows the command that runs it"
    assert f"uvlm sweep spaces/{path.name}" in path.read_text().split("\n\n")[0]


def test_cells_cross_every_level_and_every_seed(tmp_path):
    plan = load_space(write(tmp_path, {
        "study": "t",
        "factors": {"data.arm": ["understanding", "mixed"], "data.train_images": [100, 200, 400]},
        "seeds": 2,
    }))
    assert len(plan.cells) == 6 and len(plan.slots) == 12
    assert plan.cells[0].key == "data.arm=understanding;data.train_images=100"
    # seeds outside cells: every cell gets seed 0 before any gets seed 1 (pairs finish early)
    assert [slot.seed for slot in plan.slots] == [0] * 6 + [1] * 6
    config = plan.config(plan.slots[7])
    assert (config.data.arm.value, config.data.train_images, config.seed) == ("understanding", 200, 1)


def test_longest_trials_of_a_seed_run_first(tmp_path):
    # epochs over each arm's own records: mixed (3 records an image) > understanding (2) > generation (1)
    plan = load_space(write(tmp_path, {
        "study": "t",
        "fixed": {"budget.unit": "epochs", "budget.value": 2, "data.train_images": 64},
        "factors": {"data.arm": ["understanding", "generation", "mixed"]},
        "seeds": 2,
    }))
    assert [(slot.seed, slot.cell.key) for slot in plan.slots] == [
        (seed, f"data.arm={arm}") for seed in (0, 1) for arm in ("mixed", "understanding", "generation")]
    assert [slot.index for slot in plan.slots] == list(range(6)), "indices follow the running order"
    assert [planned_steps(plan.config(slot)) for slot in plan.slots[:3]] == [2 * 3 * 64 // 32, 2 * 2 * 64 // 32, 2 * 64 // 32]


def test_named_factor_sets_keys_together_and_overrides_fixed(tmp_path):
    plan = load_space(write(tmp_path, {
        "study": "t",
        "fixed": {"data.path": "data/a", "optim.lr": 0.001},
        "factors": {"pair": {"patch-vq": {"generation.space": "vq", "generation.loss": "ce"},
                             "hidden": {"data.path": "data/b", "data.hide_from_understanding": ["weather=raining"]}}},
    }))
    keys = [cell.key for cell in plan.cells]
    assert keys == ["pair=patch-vq", "pair=hidden"]
    first, second = (plan.config(slot) for slot in plan.slots)
    assert first.generation.space.value == "vq" and first.data.path == str(Path.cwd() / "data" / "a")
    assert second.data.path == str(Path.cwd() / "data" / "b") and second.data.hide_from_understanding == ["weather=raining"]


def test_resources_set_the_runtime_section(tmp_path):
    plan = load_space(write(tmp_path, {"study": "t", "resources": {"workers": 2, "cpus_per_worker": 1}}))
    config = plan.config(plan.slots[0])
    assert (config.runtime.num_workers, config.runtime.threads_per_worker, config.runtime.use_gpu) == (2, 1, False)
    assert plan.space.resources.per_trial() == {"CPU": 2, "GPU": 0}


def test_search_samples_multiply_slots_and_endpoints_are_checked(tmp_path):
    plan = load_space(write(tmp_path, {
        "study": "t", "factors": {"data.arm": ["generation", "mixed"]}, "seeds": [3, 5],
        "objective": {"metric": "test/vqa/overall", "mode": "max"},
        "search": {"samples": 3, "params": {
            "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "generation.alpha": {"type": "uniform", "low": 0.05, "high": 0.5, "when": {"data.arm": "mixed"}},
        }},
    }))
    assert len(plan.slots) == 2 * 2 * 3
    assert {slot.sample for slot in plan.slots} == {0, 1, 2}
    assert plan.slots[0].seed == 3


def test_cell_keys_format_values_like_yaml():
    assert format_value(True) == "true" and format_value(None) == "null"
    assert format_value(["weather=raining", 3]) == "[weather=raining,3]"
    assert format_value(0.5) == "0.5"


def test_conditions_match_plain_values():
    values = {"data.arm": "mixed", "data.train_images": 500}
    assert holds({"data.arm": ["mixed", "generation"]}, values)
    assert holds({"data.train_images": 500}, values)
    assert not holds({"data.arm": "understanding"}, values)


def test_a_selection_answers_alike_for_a_cells_config_and_a_runs_logged_params():
    """Space files are checked against configs (JSON values), findings select logged runs (parsed text): one rule."""
    config = {"data.arm": "mixed", "alignment.affine_strength": 0.3, "data.hide_control": False, "lm.pretrained_path": None}
    logged = {"data.arm": "mixed", "alignment.affine_strength": 0.30000000000000004, "data.hide_control": False,
              "lm.pretrained_path": None}
    for selection in ({"data.arm": "Mixed"}, {"data.arm": Arm.MIXED}, {"alignment.affine_strength": [0.3, 0.9]},
                      {"data.hide_control": "false"}, {"lm.pretrained_path": None}, {"data.arm": "understanding"}):
        assert holds(selection, config) == holds(selection, logged), selection
    assert holds({"data.arm": Arm.MIXED, "data.hide_control": False}, config)
    assert not matches(None, "null") and not matches(1, True)


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    space = write(tmp_path, {"study": "t", "fixed": {"data.path": "data/x"}})
    monkeypatch.chdir(tmp_path / "..")  # a slot's config is resolved against the folder the plan is loaded in
    slot = load_space(space).slots[0]
    assert slot.config.data.path == str(tmp_path.parent / "data" / "x") and slot.overrides["data.path"] == "data/x"


def test_digest_changes_with_the_file(tmp_path):
    first = load_space(write(tmp_path, {"study": "t", "seeds": 1}))
    second = load_space(write(tmp_path, {"study": "t", "seeds": 2}))
    assert first.digest != second.digest


def test_digest_changes_with_the_order_the_trials_run_in(tmp_path, monkeypatch):
    """A resume names trials by slot index: a uvlm that orders the same file otherwise must not resume it."""
    path = write(tmp_path, {"study": "t", "fixed": {"budget.unit": "epochs", "budget.value": 1},
                            "factors": {"data.arm": ["generation", "mixed"]}})
    longest_first = load_space(path)
    monkeypatch.setattr("search.planner.planned_steps", lambda config: 1)  # every trial equal: file order
    file_order = load_space(path)
    assert [slot.cell.key for slot in longest_first.slots] != [slot.cell.key for slot in file_order.slots]
    assert longest_first.digest != file_order.digest and load_space(path).digest == file_order.digest


def test_base_config_is_read_relative_to_the_space_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"optim": {"lr": 0.005}}))
    plan = load_space(write(tmp_path, {"study": "t", "base": "base.yaml"}))
    assert plan.config(plan.slots[0]).optim.lr == 0.005
    with pytest.raises(UserError, match="base 'missing.yaml' does not exist"):
        load_space(write(tmp_path, {"study": "t", "base": "missing.yaml"}))
