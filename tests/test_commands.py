"""``chatstate chat``, ``inspect``, ``history``, ``undo``, ``sessions`` and ``stats``, run as a
user would."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import anyio
import pytest

from chatstate import Message, RedisStateStore
from chatstate.cli import main
from chatstate.sessions import Conversations
from chatstate.stores.sqlite import SQLiteStateStore
from chatstate.testing.redis_server import RedisServer, find_free_port


def _chat(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lines: str, *args: str
) -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    status = main(["chat", *args])
    return status, capsys.readouterr().out


def test_the_chat_remembers_across_restarts_with_a_persistent_store(
    redis_server: RedisServer,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = ["--store", redis_server.url, "--prefix", key_prefix]
    status, out = _chat(monkeypatch, capsys, "My name is Alice\n/quit\nignored\n", "me", *store)
    assert status == 0 and "0 messages so far" in out
    # A new process; `--session ID` is the alias of SESSION (the form `chat` used to take).
    status, out = _chat(monkeypatch, capsys, "What's my name?\n", *store, "--session", "me")
    assert status == 0 and "2 messages so far" in out and "Alice" in out
    # In memory, a new command starts afresh: nothing is kept after it.
    status, out = _chat(monkeypatch, capsys, "What's my name?\n", "me")
    assert "don't know your name" in out


@pytest.mark.parametrize("command", ["chat", "inspect", "history", "undo"])
def test_a_session_is_named_by_session_or_its_alias_session_option(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main([command]) == 2
    assert "required: SESSION" in capsys.readouterr().err
    assert main([command, "a", "--session", "b"]) == 2
    assert "SESSION 'a' and --session 'b' differ" in capsys.readouterr().err
    # The same session both ways is not a conflict; either form alone names it.
    expected = 0 if command == "chat" else 1  # an empty in-memory store has no session "a"
    for argv in (["a"], ["--session", "a"], ["a", "--session", "a"]):
        assert main([command, *argv]) == expected, argv
        captured = capsys.readouterr()
        assert "'a'" in captured.out + captured.err, argv


def test_inspect_sessions_and_stats_show_a_store(
    redis_server: RedisServer, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fill() -> None:
        async with RedisStateStore.from_url(redis_server.url, prefix=key_prefix) as store:
            await store.append("user-1", [Message(role="user", content="Hello there")])
            await store.append("odd {id}%", [Message(role="assistant", content="Hi")])

    asyncio.run(fill())
    store = ["--store", redis_server.url, "--prefix", key_prefix]
    assert main(["inspect", *store, "user-1"]) == 0
    out = capsys.readouterr().out
    assert "role" in out and "user" in out and "Hello there" in out
    assert main(["sessions", *store]) == 0
    assert sorted(capsys.readouterr().out.split("\n")[:-1]) == ["odd {id}%", "user-1"]
    assert main(["stats", *store]) == 0
    lines = capsys.readouterr().out.splitlines()
    # What each figure covers: the census (every instance's, with the server's own counters),
    # then this command's own calls, not those of the app that wrote the sessions.
    assert lines[0] == f"what {redis_server.url} holds now, whoever wrote it (a census):"
    assert lines[1].split() == ["active_sessions", "2"] and lines[4].split()[0] == "expirations"
    assert lines[6].startswith("calls by this command's own process")
    assert ["loads", "0"] in [line.split() for line in lines[7:]]
    assert "load_latency       no calls" in "\n".join(lines[7:])


def test_history_pages_by_id_and_undo_removes_a_turn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chat.db"

    async def fill() -> None:
        async with SQLiteStateStore(path) as store:
            for turn in range(3):
                await store.append(
                    "s",
                    [
                        Message(role="user", content=f"question {turn}"),
                        Message(role="assistant", content=f"answer {turn}"),
                    ],
                )

    asyncio.run(fill())
    store = ["--store", f"sqlite:///{path}"]
    assert main(["history", *store, "s", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "question 2" in out and "answer 2" in out and "answer 1" not in out
    more = out.splitlines()[-1]
    assert more.startswith("(more: chatstate history s --before ")
    before = more.split("--before ")[1].rstrip(")")
    assert main(["history", *store, "s", "--before", before, "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "answer 0" in out and "question 1" in out and "answer 1" in out
    assert "question 0" not in out and "question 2" not in out
    assert main(["undo", *store, "s"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 messages" in out and "question 2" in out and "answer 2" in out
    assert main(["history", *store, "s"]) == 0
    assert "question 2" not in capsys.readouterr().out
    assert main(["history", *store, "s", "--before", "x"]) == 2
    assert "message id" in capsys.readouterr().err
    assert main(["history", *store, "nobody"]) == 1
    assert main(["undo", *store, "nobody"]) == 1
    assert "no turn to undo" in capsys.readouterr().err


def test_errors_are_one_clear_line(
    redis_server: RedisServer, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (
            ["inspect", "--store", redis_server.url, "--prefix", key_prefix, "nobody"],
            1,
            "no session",
        ),
        (["inspect", "--store", "mysql://x", "s"], 2, "unknown store URL"),
        (["stats", "--store", f"redis://u:pw@127.0.0.1:{find_free_port()}/0"], 1, "failed"),
        (["inspect", "--store", "memory://", ""], 2, "session id"),
    ]
    for argv, status, message in cases:
        assert main(argv) == status, argv
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error and "pw@" not in error


@pytest.mark.parametrize(
    "command",
    ["chat", "inspect", "history", "undo", "sessions", "stats", "export", "import", "fork"],
)
def test_every_command_has_help_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--store" in out
    assert f"\n  chatstate {command} " in out, "an example, indented, after the summary"


def test_a_missing_extra_is_a_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "chatstate.providers.openai", raising=False)
    for name in ["httpx", *(name for name in sys.modules if name.startswith("httpx."))]:
        monkeypatch.setitem(sys.modules, name, None)  # `import httpx` fails
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    status = main(["chat", "--session", "s", "--provider", "http://x/v1"])
    error = capsys.readouterr().err
    assert status == 2, error
    assert "pip install 'chatstate[openai]'" in error and "Traceback" not in error


def test_export_import_and_fork_between_sqlite_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"

    async def fill() -> None:
        async with SQLiteStateStore(tmp_path / "a.db") as store:
            await store.append("s1", [Message(role="user", content="Hello")])
            await store.append("s2", [Message(role="user", content="Bonjour")], ttl=600)

    asyncio.run(fill())
    export = tmp_path / "export.jsonl"
    assert main(["export", "--store", first, "-o", str(export)]) == 0
    assert "exported 2 sessions" in capsys.readouterr().err
    assert len(export.read_text().splitlines()) == 2
    assert main(["import", "--store", second, str(export)]) == 0
    assert "imported 2" in capsys.readouterr().err
    assert main(["import", "--store", second, str(export)]) == 1
    assert "'s1' exists already" in capsys.readouterr().err
    assert main(["import", "--store", second, "--on-conflict", "skip", str(export)]) == 0
    assert "imported 0, skipped 2" in capsys.readouterr().err

    assert main(["fork", "--store", second, "s2", "s3"]) == 0
    assert "1 messages" in capsys.readouterr().out
    assert main(["fork", "--store", second, "s2", "s3"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert main(["fork", "--store", second, "nobody", "s4"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "--store", second, "s3"]) == 0
    assert '"content":"Bonjour"' in capsys.readouterr().out

    export.write_text('{"format": "chatstate.session/1"}\n')
    assert main(["import", "--store", second, str(export)]) == 2
    assert "line 1" in capsys.readouterr().err
    assert main(["import", "--store", second, str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_sessions_of_a_user_list_titles_newest_first_a_page_at_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chat.db"

    async def fill() -> None:
        async with SQLiteStateStore(path) as store:
            conversations = Conversations(store)
            for name in ["trip", "gifts", "recipes"]:
                session_id = await conversations.record("42", name)
                await store.append(
                    session_id,
                    [Message(role="user", content=name)],
                    metadata={"title": name.title()},
                )
                await anyio.sleep(0.01)

    asyncio.run(fill())
    store = ["--store", f"sqlite:///{path}"]
    assert main(["sessions", *store, "--user", "42", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["session", "title", "updated"]
    assert [line.split()[:2] for line in lines[1:3]] == [
        ["user-42-conv-recipes", "Recipes"],
        ["user-42-conv-gifts", "Gifts"],
    ]
    more = lines[3]
    assert more.startswith("(more: chatstate sessions --user 42 --cursor ")
    cursor = more.split("--cursor ")[1].rstrip(")")
    assert main(["sessions", *store, "--user", "42", "--cursor", cursor]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [["user-42-conv-trip", "Trip"]]
    assert main(["sessions", *store, "--user", "nobody"]) == 1
    assert "has no sessions" in capsys.readouterr().err
    assert main(["sessions", *store, "--limit", "1"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 and "stopped at --limit 1" in captured.err
    assert main(["sessions", *store, "--cursor", cursor]) == 2
    assert "--cursor pages the sessions of a --user" in capsys.readouterr().err


def test_a_page_of_a_user_s_sessions_that_are_all_gone_still_gives_the_next_cursor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Conversations.page leaves out sessions that no longer exist: a page of them is empty and
    # still has a next page, which the command must not hide behind "has no sessions".
    path = tmp_path / "chat.db"

    async def fill() -> None:
        async with SQLiteStateStore(path) as store:
            conversations = Conversations(store)
            kept = await conversations.record("42", "kept")
            await store.append(kept, [Message(role="user", content="hi")], metadata={"title": "K"})
            for name in ["deleted", "deleted-too"]:
                await anyio.sleep(0.01)
                session_id = await conversations.record("42", name)
                await store.append(session_id, [Message(role="user", content=name)])
                await store.delete(session_id)

    asyncio.run(fill())
    store = ["--store", f"sqlite:///{path}"]
    assert main(["sessions", *store, "--user", "42", "--limit", "2"]) == 0
    more = capsys.readouterr().out.splitlines()[-1]
    assert more.startswith("(more: chatstate sessions --user 42 --cursor ")
    cursor = more.split("--cursor ")[1].rstrip(")")
    assert main(["sessions", *store, "--user", "42", "--cursor", cursor]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [["user-42-conv-kept", "K"]]
