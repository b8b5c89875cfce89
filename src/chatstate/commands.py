"""The ``chatstate chat``, ``inspect``, ``history``, ``undo``, ``sessions`` and ``stats``
commands (``export``, ``import`` and ``fork``: :mod:`chatstate.transfer_commands`).

The same thing has the same form in every command: a session is the positional ``SESSION``
(``--session ID`` is its alias, the form ``chat`` used to take), a store ``--store URL``
(``memory://``, ``sqlite:///chat.db``, ``redis://...``, ``postgresql://...``; default ``memory://``,
or ``$CHATSTATE_STORE``), a user ``--user ID``, a page size ``--limit N``. Each answers a bad URL,
an unreachable server or an unknown session with one clear line on stderr, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from chatstate._checks import redact_url
from chatstate.errors import ChatStateError, ConfigurationError, InvalidInputError
from chatstate.messages import Message
from chatstate.middleware import ProviderMiddleware, StateMiddleware, StateMiddlewareConfig
from chatstate.pipeline import Pipeline
from chatstate.providers.scripted import ScriptedProvider
from chatstate.stores.base import SessionHistory, StateStore
from chatstate.stores.urls import open_store

DEFAULT_STORE = "memory://"
_PERCENT = {"0.5": "50", "0.95": "95", "0.99": "99"}


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        default=os.environ.get("CHATSTATE_STORE", DEFAULT_STORE),
        help="memory://, sqlite:///chat.db (a file, no server), redis://host:port/db, "
        "rediss://..., redis+cluster://host:port, redis+sentinel://host:port/service or "
        "postgresql://user@host:port/db (default: $CHATSTATE_STORE or memory://, which keeps "
        "nothing after the command)",
    )
    parser.add_argument("--prefix", default="chatstate", help="the Redis key prefix")
    parser.add_argument(
        "--schema", default="chatstate", help="the PostgreSQL schema of the store's tables"
    )


def add_session_argument(parser: argparse.ArgumentParser, help: str = "the session id") -> None:
    """The positional ``SESSION``, and ``--session ID`` as its alias."""
    parser.add_argument("session", metavar="SESSION", nargs="?", help=help)
    parser.add_argument(
        "--session",
        dest="session_option",
        metavar="ID",
        help="the same as SESSION (the form `chat` used to take)",
    )


def resolve_session(args: argparse.Namespace) -> str | None:
    """Settle ``args.session`` from ``SESSION`` or ``--session``; the usage error, if any."""
    if not hasattr(args, "session_option"):
        return None  # a command without a session
    option = args.session_option
    if option is not None and args.session is not None and option != args.session:
        return f"SESSION {args.session!r} and --session {option!r} differ: give one"
    if args.session is None:
        args.session = option
    if args.session is None:
        return "the following arguments are required: SESSION"
    return None


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://", "redis+", "rediss+"))


def _run(args: argparse.Namespace, work: Callable[[StateStore], Awaitable[int]]) -> int:
    """Open the store, run ``work``, close; errors as one line and a status."""

    async def main() -> int:
        options: dict[str, Any] = {}
        if _is_redis(args.store):
            options["prefix"] = args.prefix
        elif args.store.startswith(("postgresql://", "postgres://")):
            options["schema"] = args.schema
        async with open_store(args.store, **options) as store:
            return await work(store)

    try:
        return asyncio.run(main())
    except ImportError as exc:  # an extra this command needs is not installed
        print(f"chatstate {args.command}: {exc}", file=sys.stderr)
        return 2
    except InvalidInputError as exc:
        print(f"chatstate {args.command}: {exc}", file=sys.stderr)
        return 2
    except ChatStateError as exc:
        print(f"chatstate {args.command}: {exc}", file=sys.stderr)
        return 1


# chat ------------------------------------------------------------------------------------------

CHAT_HELP = """talk in a session, a line a turn (an offline scripted model unless --provider)

  chatstate chat me                                        in memory: forgotten at the end
  chatstate chat me --store sqlite:///chat.db              remembered across restarts
  chatstate chat me --provider http://localhost:11434/v1 --model llama3.2   a real model"""


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    add_session_argument(parser, "the session to talk in")
    add_store_argument(parser)
    parser.add_argument(
        "--provider",
        metavar="URL",
        help="an OpenAI-compatible endpoint (http://localhost:11434/v1); key in $OPENAI_API_KEY",
    )
    parser.add_argument("--model", default="gpt-4o-mini", help="the model, with --provider")
    parser.add_argument("--max-messages", type=int, default=20, help="history kept and sent")


def run_chat(args: argparse.Namespace, *, stdin: TextIO | None = None) -> int:
    """A read-eval-print loop: each line is a turn; an empty line, EOF or /quit ends it."""
    lines = stdin if stdin is not None else sys.stdin

    async def chat(store: StateStore) -> int:
        if args.provider:
            from chatstate.providers.openai import OpenAICompatibleProvider

            provider: Any = OpenAICompatibleProvider(
                base_url=args.provider, model=args.model, api_key=os.environ.get("OPENAI_API_KEY")
            )
        else:
            provider = ScriptedProvider()
        history = await store.load(args.session)
        print(f"session {args.session!r}: {len(history)} messages so far. /quit to leave.")
        async with Pipeline(
            StateMiddleware(store, StateMiddlewareConfig(max_messages=args.max_messages)),
            ProviderMiddleware(provider),
        ) as pipe:
            for line in lines:
                text = line.strip()
                if not text or text == "/quit":
                    break
                result = await pipe.execute_with_session(args.session, "user", text)
                print(f"assistant: {result.response.text}", flush=True)
        if args.provider:
            await provider.aclose()
        return 0

    return _run(args, chat)


# inspect ---------------------------------------------------------------------------------------

INSPECT_HELP = """print the history of a session as a table (`history` adds the message ids)

  chatstate inspect me --store redis://localhost:6379/0             every message
  chatstate inspect me --store sqlite:///chat.db --limit 10         the newest 10"""


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    add_session_argument(parser)
    parser.add_argument("--limit", type=int, default=None, help="only the newest N messages")


def run_inspect(args: argparse.Namespace) -> int:
    async def inspect(store: StateStore) -> int:
        messages = await store.load(args.session, limit=args.limit)
        if not messages:
            print(
                f"chatstate inspect: no session {args.session!r} in {args.store}", file=sys.stderr
            )
            return 1
        print(_table(messages))
        return 0

    return _run(args, inspect)


def _table(messages: list[Message], ids: list[str] | None = None) -> str:
    """The messages as text, a row each: their place (or, given, their ids), role and text."""
    rows = [("#" if ids is None else "id", "role", "content")]
    labels = ids if ids is not None else [str(index) for index in range(1, len(messages) + 1)]
    for label, message in zip(labels, messages, strict=True):
        text = message.text.replace("\n", " ")
        if message.tool_calls:
            calls = ", ".join(f"{call.name}({call.arguments})" for call in message.tool_calls)
            text = f"{text} [calls {calls}]".strip()
        if message.tool_call_id:
            text = f"[result of {message.tool_call_id}] {text}"
        rows.append((label, message.role, text if len(text) <= 100 else text[:97] + "..."))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    return "\n".join(f"{row[0]:>{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}" for row in rows)


# history, undo ---------------------------------------------------------------------------------

HISTORY_HELP = """print a page of a session's history with its message ids

  chatstate history me --store sqlite:///chat.db             the newest 20 messages
  chatstate history me --store ... --before 41 --limit 50     the 50 before message 41
  chatstate history me --store ... --after 41                 the 20 after it"""


def add_history_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    add_session_argument(parser)
    parser.add_argument("--limit", type=int, default=20, help="messages a page (default 20)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--before", metavar="ID", help="the messages before this message id")
    where.add_argument("--after", metavar="ID", help="the messages after this message id")


def run_history(args: argparse.Namespace) -> int:
    async def history(store: StateStore) -> int:
        page = await _with_history(store).history(
            args.session, limit=args.limit, before=args.before, after=args.after
        )
        if not page.messages:
            print(f"chatstate history: no messages of {args.session!r} there", file=sys.stderr)
            return 1
        print(_table([each.message for each in page.messages], page.ids))
        if page.has_more:
            side = f"--after {page.newest_id}" if args.after else f"--before {page.oldest_id}"
            print(f"(more: chatstate history {args.session} {side})")
        return 0

    return _run(args, history)


UNDO_HELP = """remove the last whole turn of a session (its newest user message and what follows)

  chatstate undo me --store redis://localhost:6379/0"""


def add_undo_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    add_session_argument(parser)


def run_undo(args: argparse.Namespace) -> int:
    async def undo(store: StateStore) -> int:
        removed = await _with_history(store).undo(args.session)
        if not removed:
            print(f"chatstate undo: {args.session!r} has no turn to undo", file=sys.stderr)
            return 1
        print(f"removed {len(removed)} message{'s' if len(removed) != 1 else ''}:")
        print(_table(removed))
        return 0

    return _run(args, undo)


def _with_history(store: StateStore) -> SessionHistory:
    if not isinstance(store, SessionHistory):
        raise ConfigurationError(f"{type(store).__name__} has no history operations")
    return store


# sessions --------------------------------------------------------------------------------------

SESSIONS_HELP = """list the sessions of a store (by SCAN, never KEYS), or a user's, newest first

  chatstate sessions --store redis://localhost:6379/0               every session id
  chatstate sessions --store sqlite:///chat.db --user 42            user 42's, with titles
  chatstate sessions --store ... --user 42 --cursor CURSOR          the next page"""


def add_sessions_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    parser.add_argument(
        "--user", metavar="ID", help="the sessions of this user (conversations, forks, others)"
    )
    parser.add_argument(
        "--limit",
        "--max",
        dest="limit",
        type=int,
        default=None,
        help="sessions a page with --user (default 20); else stop after this many (1000)",
    )
    parser.add_argument("--cursor", help="with --user: the page after this one's end")


def run_sessions(args: argparse.Namespace) -> int:
    async def sessions(store: StateStore) -> int:
        if args.user is not None:
            return await _user_sessions(store, args)
        if args.cursor is not None:
            raise ConfigurationError("--cursor pages the sessions of a --user")
        listing = getattr(store, "session_ids", None)
        if listing is None:
            print(f"chatstate sessions: {args.store} cannot list its sessions", file=sys.stderr)
            return 1
        limit = 1000 if args.limit is None else args.limit
        count = 0
        async for session_id in listing():
            print(session_id)
            count += 1
            if count >= limit:
                print(f"... (stopped at --limit {limit})", file=sys.stderr)
                break
        return 0

    return _run(args, sessions)


async def _user_sessions(store: StateStore, args: argparse.Namespace) -> int:
    from chatstate.sessions import Conversations

    page = await Conversations(store).page(
        args.user, limit=20 if args.limit is None else args.limit, cursor=args.cursor
    )
    rows = [("session", "title", "updated")]
    for each in page.conversations:
        when = each.updated_at or each.last_active
        rows.append((each.session_id, each.title or "", when.strftime("%Y-%m-%d %H:%M:%S UTC")))
    if len(rows) == 1 and page.next_cursor is None:
        print(f"chatstate sessions: user {args.user!r} has no sessions there", file=sys.stderr)
        return 1
    # A page may be empty and have a next one: its sessions were deleted, their entries kept.
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for row in rows if len(rows) > 1 else ():
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
    if page.next_cursor is not None:
        print(f"(more: chatstate sessions --user {args.user} --cursor {page.next_cursor})")
    return 0


# stats -----------------------------------------------------------------------------------------

STATS_HELP = """print what a store holds (its census) and the calls this command made

  chatstate stats --store redis://localhost:6379/0
  chatstate stats --store sqlite:///chat.db

The census (sessions, messages, bytes) counts what the store holds, whoever wrote it. Calls,
errors, trims and latencies are counted in the process that makes them: here, this command's
own, not your app's (read those in the app, `await store.metrics()`, or export them with
chatstate.prometheus or chatstate.otel)."""

_CENSUS = ("active_sessions", "avg_history_size", "storage_used")
_SERVER_COUNTERS = ("expirations", "evictions")  # Redis: the server's INFO stats


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)


def run_stats(args: argparse.Namespace) -> int:
    async def stats(store: StateStore) -> int:
        metrics = await store.metrics()  # type: ignore[attr-defined]
        census = _CENSUS + (_SERVER_COUNTERS if _is_redis(args.store) else ())
        where = redact_url(args.store)
        kept = " (memory:// keeps nothing after the command)" if where == DEFAULT_STORE else ""
        print(f"what {where} holds now, whoever wrote it (a census){kept}:")
        for name in census:
            print(f"  {name:<18} {getattr(metrics, name)}")
        print("calls by this command's own process (an app counts its own: store.metrics()):")
        for name in metrics.__dataclass_fields__:
            if name in census:
                continue
            value = getattr(metrics, name)
            if hasattr(value, "quantiles"):
                shown = ", ".join(
                    f"p{_PERCENT[quantile]}={seconds * 1000:.3f} ms"
                    for quantile, seconds in value.quantiles()
                )
                value = shown or "no calls"
            print(f"  {name:<18} {value}")
        return 0

    return _run(args, stats)
