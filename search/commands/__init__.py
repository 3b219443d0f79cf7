"""The subcommands of `uvlm`, one module each (listed in search.cli.COMMANDS)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from trainables import limits


def number(bounds: limits.Bounds, kind: type = int) -> Callable[[str], float]:
    """An argparse `type` that reads a whole number (or a float) and refuses values outside `bounds`."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'} "
                                             f"(got {text!r})") from None
        why = limits.problem(value, bounds)
        if why:
            raise argparse.ArgumentTypeError(f"{why} (got {text})")
        return value

    return parse


def name(text: str) -> str:
    """An argparse `type` for a name that becomes a folder and an MLflow name (no '/', no '..')."""
    from search.space_schema import NAME_PATTERN

    if not re.match(NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits, '.', '_' and '-' (at most 100), "
                                         f"starting with a letter or digit")
    return text
