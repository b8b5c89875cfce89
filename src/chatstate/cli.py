"""The ``chatstate`` command line: ``chatstate <command> [options]``.

Each subcommand is a :class:`Command`: its name, its help, a function that adds its options to an
argparse parser and one that runs it and returns the exit status. Adding a command is adding one
entry to :data:`COMMANDS`. A command's module must stay light to import: what it needs beyond the
core (rich, matplotlib, redis) it imports when it runs, so ``chatstate --help`` is fast and works
on a core install.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import chatstate
from chatstate import commands, transfer_commands
from chatstate.bench import command as bench

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand of ``chatstate``."""

    name: str
    help: str
    """One line, for ``chatstate --help``."""
    description: str
    """Paragraphs, for ``chatstate NAME --help``."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    """Runs the command with the parsed options; returns the exit status."""


COMMANDS: tuple[Command, ...] = (
    Command("bench", bench.HELP, bench.DESCRIPTION, bench.add_arguments, bench.run),
    Command(
        "chat",
        commands.CHAT_HELP.splitlines()[0],
        commands.CHAT_HELP,
        commands.add_chat_arguments,
        commands.run_chat,
    ),
    Command(
        "inspect",
        commands.INSPECT_HELP.splitlines()[0],
        commands.INSPECT_HELP,
        commands.add_inspect_arguments,
        commands.run_inspect,
    ),
    Command(
        "history",
        commands.HISTORY_HELP.splitlines()[0],
        commands.HISTORY_HELP,
        commands.add_history_arguments,
        commands.run_history,
    ),
    Command(
        "undo",
        commands.UNDO_HELP.splitlines()[0],
        commands.UNDO_HELP,
        commands.add_undo_arguments,
        commands.run_undo,
    ),
    Command(
        "sessions",
        commands.SESSIONS_HELP.splitlines()[0],
        commands.SESSIONS_HELP,
        commands.add_sessions_arguments,
        commands.run_sessions,
    ),
    Command(
        "export",
        transfer_commands.EXPORT_HELP.splitlines()[0],
        transfer_commands.EXPORT_HELP,
        transfer_commands.add_export_arguments,
        transfer_commands.run_export,
    ),
    Command(
        "import",
        transfer_commands.IMPORT_HELP.splitlines()[0],
        transfer_commands.IMPORT_HELP,
        transfer_commands.add_import_arguments,
        transfer_commands.run_import,
    ),
    Command(
        "fork",
        transfer_commands.FORK_HELP.splitlines()[0],
        transfer_commands.FORK_HELP,
        transfer_commands.add_fork_arguments,
        transfer_commands.run_fork,
    ),
    Command(
        "stats",
        commands.STATS_HELP.splitlines()[0],
        commands.STATS_HELP,
        commands.add_stats_arguments,
        commands.run_stats,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``chatstate`` and every command."""
    parser = argparse.ArgumentParser(
        prog="chatstate", description="Async-first conversation state for LLM applications."
    )
    parser.add_argument("--version", action="version", version=f"chatstate {chatstate.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        subparser = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run, usage_error=subparser.error)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``chatstate`` with ``argv`` (default: the process's arguments); returns the exit
    status: 0 done, 1 failed, 2 bad usage (argparse's convention), 130 interrupted."""
    try:
        args = build_parser().parse_args(argv)
        problem = commands.resolve_session(args)
        if problem is not None:
            args.usage_error(problem)  # exits 2, with the command's usage
    except SystemExit as exc:  # argparse exits on --help and --version (0) and bad usage (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        print("chatstate: interrupted", file=sys.stderr)
        return 130
    return status
