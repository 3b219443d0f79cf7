"""The one way uvlm reads YAML written by a user: safe, bounded, and a key given twice is an error.

PyYAML's safe loader keeps the last of two equal keys without a word, so a
config whose author set `optim.lr` twice trains on whichever came last. Every
config, preset and space file (and `--set` values) goes through `load_yaml`.

Bounded: an alias (`*name`) is one node in the parsed document but a whole copy
for everything that walks the result (validation, error messages), so nine
levels of nine aliases, 1 kB of text, are 9^8 values. A document is refused
before it is constructed when its text is over `limits.YAML_BYTES` or it would
expand to more than `limits.YAML_NODES` values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainables import limits
from trainables.errors import UserError


class Refused(yaml.YAMLError):
    """A document PyYAML would load but uvlm does not; its message follows the source's name."""


class DuplicateKey(Refused):
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

    def construct_document(self, node: yaml.Node) -> Any:
        values = expanded_size(node)
        if values > limits.YAML_NODES:
            raise Refused(f"its aliases (*name) expand it to {values:,} values; at most {limits.YAML_NODES:,} are "
                          f"allowed (write the values out, or refer to fewer)")
        return super().construct_document(node)


def expanded_size(root: yaml.Node) -> int:
    """Values in the document once every alias is expanded: each distinct node is counted once (memoised), so
    this takes time in the size of the text, not of the expansion. An alias inside what it names is refused."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the ancestors of the node being visited
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # depth first, without recursion: nesting depth is the parser's to refuse
        node, children_counted = stack.pop()
        if children_counted:
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _children(node))
            open_nodes.discard(id(node))
        elif id(node) in open_nodes:
            raise Refused(f"the value on line {node.start_mark.line + 1} contains an alias to itself "
                          f"(uvlm reads trees of values, not cycles)")
        elif id(node) not in sizes:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error, a repeated key or a document over the bounds is a UserError naming `source`."""
    _check_size(len(text.encode("utf-8", "surrogatepass")), source)
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as error:
        raise UserError(f"{source}{_describe(error)}") from None
    except RecursionError:  # PyYAML's parser recurses once per level of nesting
        raise UserError(f"{source} nests lists or mappings too deeply to be read; flatten it") from None


def read_text(path: Path, what: str) -> str:
    """A user's YAML file as text; a missing, unreadable, binary or too large file, or a folder, is a UserError
    naming it. No more than the limit is read, so a wrong path to a large file costs no memory."""
    source = f"{what} {str(path)!r}"
    if path.is_dir():
        raise UserError(f"{source} is a folder, not a file")
    if not path.is_file():
        raise UserError(f"{source} does not exist")
    try:
        with path.open(encoding="utf-8") as file:
            text = file.read(limits.YAML_BYTES + 1)  # characters: more than the limit is more bytes too
        _check_size(len(text), source)
        return text
    except UnicodeDecodeError:
        raise UserError(f"{source} is not a UTF-8 text file") from None
    except OSError as error:
        raise UserError(f"{source} cannot be read ({error.strerror})") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """Read and parse a YAML file; `what` ('config file', 'space file') starts every error message."""
    path = Path(path)
    return load_yaml(read_text(path, what), f"{what} {str(path)!r}")


def _check_size(size: int, source: str) -> None:
    if size > limits.YAML_BYTES:
        raise UserError(f"{source} is over {limits.YAML_BYTES:,} bytes, more than a config or space file needs; "
                        f"is it the right file?")


def _describe(error: yaml.YAMLError) -> str:
    if isinstance(error, Refused):
        return f": {error}"
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f" is not valid YAML: {problem}" + (f" (line {mark.line + 1})" if mark else "")
