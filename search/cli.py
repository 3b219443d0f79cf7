"""The `uvlm` command line: one subcommand per module in `COMMANDS`.

Each command module exposes `register(subparsers)`, which adds its parser and
sets `run=<function(args) -> int>`. Registration imports nothing heavy, so
`uvlm --help` is instant; a command imports torch, Ray or MLflow when it runs.
A `UserError` becomes one line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from trainables.errors import UserError

COMMANDS = [
    "search.commands.data",
    "search.commands.train",
    "search.commands.report",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uvlm", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except UserError as error:
        print(f"uvlm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("uvlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
