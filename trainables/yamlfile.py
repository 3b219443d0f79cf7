"""The one way uvlm reads YAML written by a user: safe, and a key given twice is an error.

PyYAML's safe loader keeps the last of two equal keys without a word, so a
config whose author set `optim.lr` twice trains on whichever came last. Every
config, preset and space file (and `--set` values) goes through `load_yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainables.errors import UserError


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r} on line {line} (first on line {first_line})")


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader whose mappings refuse a key that appears twice (merge keys `<<` may still be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: the base constructor reports it
                break
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error or a repeated key is a UserError naming `source` and the line."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as error:
        raise UserError(f"{source}{_describe(error)}") from None


def read_text(path: Path, what: str) -> str:
    """A user's text file; a missing, unreadable or binary file, or a folder, is a UserError naming it."""
    source = f"{what} {str(path)!r}"
    if path.is_dir():
        raise UserError(f"{source} is a folder, not a file")
    if not path.is_file():
        raise UserError(f"{source} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{source} is not a UTF-8 text file") from None
    except OSError as error:
        raise UserError(f"{source} cannot be read ({error.strerror})") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """Read and parse a YAML file; `what` ('config file', 'space file') starts every error message."""
    path = Path(path)
    return load_yaml(read_text(path, what), f"{what} {str(path)!r}")


def _describe(error: yaml.YAMLError) -> str:
    if isinstance(error, DuplicateKey):
        return f": {error}"
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f" is not valid YAML: {problem}" + (f" (line {mark.line + 1})" if mark else "")
