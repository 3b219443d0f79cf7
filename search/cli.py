"""The `uvlm` command line: one subcommand per module in `COMMANDS`.

Each command module exposes `register(subparsers)`, which adds its parser and
sets `run=<function(args) -> int>`. Registration imports nothing heavy, so
`uvlm --help` is instant; a command imports torch, Ray or MLflow when it runs.
A `UserError` becomes one line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from trainables.errors import UserError, nearest

COMMANDS = [
    "search.commands.data",
    "search.commands.train",
    "search.commands.plan",
    "search.commands.rehearse",
    "search.commands.report",
    "search.commands.power",
    "search.commands.sweep",
    "search.commands.ui",
    "search.commands.dashboard",
    "search.commands.demo",
]

DESCRIPTION = """\
uvlm: ablation research on unified vision-language models.

Generate the synthetic smart-watch data, train one unified VLM, run a
declarative sweep (Ray Tune + Optuna, logged to MLflow) and turn its runs
into findings with confidence intervals. Run `uvlm COMMAND --help` for each.
"""


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: by default it prints the usage first, several lines for our commands."""

    def error(self, message: str) -> None:
        message = re.sub(r"^argument (\S+): (?=must )", r"\1 ", message)  # '--port must be between 1 and 65535'
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            message += nearest(choice[1], re.findall(r"'([^']*)'", choice[2]))
        self.exit(2, f"uvlm: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="uvlm", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def one_line(text: str) -> str:
    """A message on one printable line, whatever a library put into it (newlines, control bytes)."""
    return " ".join("".join(char if char.isprintable() else " " for char in text).split())


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a bad flag already reported by Parser.error
        return done.code
    try:
        return args.run(args) or 0
    except UserError as error:
        print(f"uvlm: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("uvlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
