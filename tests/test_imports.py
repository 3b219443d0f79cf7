"""The import rules of the three packages, read from the source (no package is imported).

    trainables/   the bottom: imports neither search nor analysis
    analysis/     reads MLflow runs: imports trainables, never search
    search/       the top (sweeps and the command line): may import both

No import circle among modules, function-level imports included, and no module imports another's private name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainables", "search", "analysis")
BENEATH = {"trainables": {"search", "analysis"}, "analysis": {"search"}, "search": set()}
"""Package -> the packages it must not import."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in the module, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, None, node.lineno) if submodule in MODULES else (base, alias.name, node.lineno))
    return found


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def test_every_package_is_read():
    assert {name.split(".")[0] for name in MODULES} == set(PACKAGES)
    assert "analysis.findings" in MODULES and "trainables.data.records" in MODULES


@pytest.mark.parametrize("package", PACKAGES)
def test_no_arrow_up(package):
    wrong = [f"{name}:{line} imports {target}" for name, found in GRAPH.items() if name.split(".")[0] == package
             for target, _, line in found if target.split(".")[0] in BENEATH[package]]
    assert not wrong, f"{package} must not import {sorted(BENEATH[package])}:\n" + "\n".join(wrong)


def test_no_import_circle():
    edges = {name: sorted({target for target, _, _ in found if target in MODULES and target != name})
             for name, found in GRAPH.items()}
    circles, done, stack = [], set(), []

    def visit(name: str) -> None:  # depth-first; a module met again while on the stack closes a circle
        if name in stack:
            circles.append(" -> ".join(stack[stack.index(name):] + [name]))
            return
        if name in done:
            return
        stack.append(name)
        for target in edges[name]:
            visit(target)
        stack.pop()
        done.add(name)

    for name in sorted(edges):
        visit(name)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_private_name_is_imported_from_another_module():
    wrong = [f"{name}:{line} imports {imported} from {target}" for name, found in GRAPH.items()
             for target, imported, line in found
             if imported and imported.startswith("_") and target.split(".")[0] in PACKAGES]
    assert not wrong, "\n".join(wrong)
