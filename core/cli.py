"""The command-table machinery every `moe-suite` command module registers into (apps.cli builds the
parser): `CommandTable`, and argparse helpers shared by core and app commands. Light to import."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

Handler = Callable[[argparse.Namespace], int | None]


class CommandTable:
    """Where registrars add commands: at the top level, or inside a named group like `bench`."""

    def __init__(self, subparsers: argparse._SubParsersAction):
        self._subparsers = subparsers
        self._groups: dict[str, CommandTable] = {}

    def command(self, name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        """Add `name`, run by `handler`; returns its parser for the command's arguments."""
        parser = self._subparsers.add_parser(name, help=help, description=help)
        parser.set_defaults(handler=handler)
        return parser

    def group(self, name: str, help: str) -> CommandTable:
        """The group of sub-commands `name` (created on first use; later `help`s are ignored)."""
        if name not in self._groups:
            parser = self._subparsers.add_parser(name, help=help, description=help)
            self._groups[name] = CommandTable(
                parser.add_subparsers(title="commands", metavar="COMMAND", required=True))
        return self._groups[name]


def given_flags(args: argparse.Namespace, names: Iterable[str]) -> dict:
    """The flags among `names` given on the command line (declared with default=argparse.SUPPRESS,
    an absent flag leaves no attribute), so a config's own defaults apply to the others."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
