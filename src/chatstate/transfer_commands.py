"""The ``chatstate export``, ``import`` and ``fork`` commands: whole sessions moved as they are
(:mod:`chatstate.transfer`), in the form of every command (:mod:`chatstate.commands`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from chatstate.commands import _run, add_store_argument
from chatstate.stores.base import StateStore

# export, import, fork --------------------------------------------------------------------------

EXPORT_HELP = """write sessions as JSON Lines (one line a session), to stdout or --output

  chatstate export --store sqlite:///chat.db -o all.jsonl             every session
  chatstate export --store sqlite:///chat.db --user 42 -o 42.jsonl    user 42's sessions
  chatstate export --store redis://localhost:6379/0 trip trip-budget  these two"""


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    parser.add_argument(
        "sessions", nargs="*", metavar="SESSION", help="the sessions (default: every session)"
    )
    parser.add_argument("--user", metavar="ID", help="every session of this user instead")
    parser.add_argument(
        "--output", "-o", metavar="FILE", help="the file to write (default: stdout)"
    )


def run_export(args: argparse.Namespace) -> int:
    from chatstate.sessions import Conversations
    from chatstate.transfer import export_sessions

    async def export(store: StateStore) -> int:
        ids: Any
        if args.user is not None:
            ids = await Conversations(store).session_ids(args.user)
        elif args.sessions:
            ids = args.sessions
        elif hasattr(store, "session_ids"):
            ids = store.session_ids()
        else:
            print(f"chatstate export: {args.store} cannot list its sessions", file=sys.stderr)
            return 1
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        count = 0
        try:
            async for line in export_sessions(store, ids):
                out.write(line)
                count += 1
        finally:
            if args.output:
                out.close()
        print(f"exported {count} sessions", file=sys.stderr)
        return 0

    return _run(args, export)


IMPORT_HELP = """write the sessions of a JSON Lines export into a store

  chatstate import --store redis://localhost:6379/0 all.jsonl         nothing written on a clash
  chatstate import --store redis://... all.jsonl --on-conflict skip   keep existing sessions
  chatstate export --store sqlite:///a.db | chatstate import --store sqlite:///b.db -"""


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    parser.add_argument("file", metavar="FILE", help="the export to read ('-': stdin)")
    parser.add_argument(
        "--on-conflict",
        choices=("raise", "skip", "overwrite"),
        default="raise",
        help="a session that exists: stop before writing anything (raise, the default), leave "
        "it (skip) or replace it (overwrite)",
    )


def run_import(args: argparse.Namespace) -> int:
    from chatstate.transfer import import_sessions

    async def load(store: StateStore) -> int:
        try:
            lines = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
        except OSError as exc:
            print(f"chatstate import: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
        with lines:
            report = await import_sessions(store, lines, on_conflict=args.on_conflict)
        print(
            f"imported {len(report.imported)}, skipped {len(report.skipped)} existing, "
            f"{len(report.expired)} expired",
            file=sys.stderr,
        )
        return 0

    return _run(args, load)


FORK_HELP = """copy a session into a new one (a branch of the conversation)

  chatstate fork trip trip-budget --store sqlite:///chat.db
  chatstate fork trip trip-budget --store sqlite:///chat.db --overwrite"""


def add_fork_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    parser.add_argument("source", metavar="SOURCE", help="the session to copy")
    parser.add_argument("target", metavar="TARGET", help="the new session")
    parser.add_argument("--overwrite", action="store_true", help="replace TARGET if it exists")


def run_fork(args: argparse.Namespace) -> int:
    from chatstate.transfer import fork_session

    async def fork(store: StateStore) -> int:
        copied = await fork_session(store, args.source, args.target, overwrite=args.overwrite)
        print(f"forked {args.source!r} into {args.target!r}: {len(copied.messages)} messages")
        return 0

    return _run(args, fork)
