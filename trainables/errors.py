"""The one error type the command line turns into a one-line message and exit code 2.

Raise `UserError` for anything the user can fix (a bad flag, a malformed file, a
missing folder). Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem in the user's input, reported as one line without a traceback."""


def nearest(name: str, valid: Iterable[str]) -> str:
    """A ' (did you mean X?)' hint for a misspelt name, or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def unknown_choice(field: str, value: str, valid: Iterable[str]) -> UserError:
    """The error for a name that is not one of the valid choices, listing them."""
    valid = sorted(valid)
    return UserError(
        f"{field}: unknown value {value!r}{nearest(value, valid)}; valid: {', '.join(valid)}"
    )
