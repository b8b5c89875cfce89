"""The history operations end to end: the pipeline's regenerate, and undo, pop and edits racing
the turns of a session on every kind of store (none interleaves with a turn: each turn stays
whole, nothing acknowledged is lost but what an undo or pop reported removing)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from chatstate import (
    InMemoryStateStore,
    InvalidInputError,
    Message,
    Pipeline,
    PipelineError,
    ProviderError,
    ProviderMiddleware,
    ScriptedProvider,
    StateMiddleware,
    StateMiddlewareConfig,
    ToolCall,
)
from chatstate.stores import BackendStore
from chatstate.testing._samples import _assistant, _user

from .conftest import BACKEND_KINDS, store_of_kind


def _counting() -> ScriptedProvider:
    count = 0

    def reply(messages: Sequence[Message]) -> str:
        nonlocal count
        count += 1
        return f"reply {count} to {messages[-1].content}"

    return ScriptedProvider(reply)


async def test_regenerate_replaces_the_last_reply_and_keeps_the_question() -> None:
    store = InMemoryStateStore()
    provider = _counting()
    async with Pipeline(StateMiddleware(store), ProviderMiddleware(provider)) as pipe:
        await pipe.execute_with_session("s", "user", "first")
        await pipe.execute_with_session("s", "user", "second")
        before = await store.history("s")
        result = await pipe.regenerate("s")
    assert result.response.content == "reply 3 to second"
    assert await store.load("s") == [
        _user("first"),
        _assistant("reply 1 to first"),
        _user("second"),
        _assistant("reply 3 to second"),
    ]
    after = await store.history("s")
    assert after.ids[:3] == before.ids[:3] and after.ids[3] not in before.ids
    # The model saw the history before the question, and the question, once.
    assert [m.content for m in provider.calls[-1]] == ["first", "reply 1 to first", "second"]


async def test_regenerate_replaces_a_whole_tool_exchange() -> None:
    store = InMemoryStateStore()
    call = Message(role="assistant", tool_calls=(ToolCall(id="c1", name="lookup", arguments="{}"),))
    await store.append(
        "s",
        [
            _user("q"),
            call,
            Message(role="tool", content="r", tool_call_id="c1"),
            _assistant("old answer"),
        ],
    )
    async with Pipeline(
        StateMiddleware(store), ProviderMiddleware(ScriptedProvider(["new answer"]))
    ) as pipe:
        await pipe.regenerate("s")
    assert await store.load("s") == [_user("q"), _assistant("new answer")]


async def test_regenerate_answers_a_question_left_without_a_reply() -> None:
    store = InMemoryStateStore()
    await store.append("s", [_user("q")])
    async with Pipeline(
        StateMiddleware(store), ProviderMiddleware(ScriptedProvider(["a"]))
    ) as pipe:
        await pipe.regenerate("s")
    assert await store.load("s") == [_user("q"), _assistant("a")]


async def test_a_failed_regenerate_leaves_the_old_reply() -> None:
    store = InMemoryStateStore()
    await store.append("s", [_user("q"), _assistant("old")])
    async with Pipeline(
        StateMiddleware(store),
        ProviderMiddleware(ScriptedProvider([])),  # raises
    ) as pipe:
        with pytest.raises(ProviderError):
            await pipe.regenerate("s")
    assert await store.load("s") == [_user("q"), _assistant("old")]


async def test_regenerate_needs_a_question_and_a_state_middleware() -> None:
    store = InMemoryStateStore()
    await store.append("s", [_assistant("a greeting")])
    async with Pipeline(StateMiddleware(store), ProviderMiddleware(_counting())) as pipe:
        with pytest.raises(InvalidInputError, match="no user message"):
            await pipe.regenerate("s")
        with pytest.raises(InvalidInputError):
            await pipe.regenerate("nobody")
    async with Pipeline(ProviderMiddleware(_counting())) as bare:
        with pytest.raises(PipelineError, match="StateMiddleware"):
            await bare.regenerate("s")
    assert await store.load("s") == [_assistant("a greeting")]


async def test_a_turn_waits_for_a_regenerate_of_its_session() -> None:
    store = InMemoryStateStore()
    await store.append("s", [_user("q"), _assistant("old")])
    entered, release = anyio.Event(), anyio.Event()
    seen: list[list[Any]] = []

    async def slow(messages: Sequence[Message]) -> str:
        seen.append([m.content for m in messages])
        if messages[-1].content == "q":
            entered.set()
            await release.wait()
            return "new"
        return "after"

    config = StateMiddlewareConfig(lock=True)
    async with (
        Pipeline(
            StateMiddleware(store, config), ProviderMiddleware(ScriptedProvider(slow))
        ) as pipe,
        anyio.create_task_group() as group,
    ):
        group.start_soon(pipe.regenerate, "s")
        await entered.wait()
        group.start_soon(pipe.execute_with_session, "s", "user", "next")
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert seen == [["q"]]  # the turn waits for the session's lock
        release.set()
    # The turn ran after the regenerate had stored its reply.
    assert seen == [["q"], ["q", "new", "next"]]
    assert await store.load("s") == [
        _user("q"),
        _assistant("new"),
        _user("next"),
        _assistant("after"),
    ]


@pytest.fixture(params=BACKEND_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BackendStore[Any]]:
    async with store_of_kind(request.param, request, tmp_path) as made:
        yield made


def _turn(i: int) -> list[Message]:
    return [_user(f"q{i}"), _assistant(f"a{i}")]


async def test_undo_and_pop_never_cut_a_turn_racing_them(store: BackendStore[Any]) -> None:
    turns, undos = 40, 10
    removed: list[Message] = []

    async def writer(i: int) -> None:
        await store.append("s", _turn(i))

    async def undoer() -> None:
        for _ in range(undos):
            removed.extend(await store.undo("s"))
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(undoer)
        for i in range(turns):
            group.start_soon(writer, i)
    stored = await store.load("s")
    assert len(removed) % 2 == 0 and len(stored) % 2 == 0
    # Every turn whole, in the store or among what the undos reported, and never both.
    for i in range(turns):
        inside = [m for m in stored if m.content in (f"q{i}", f"a{i}")]
        out = [m for m in removed if m.content in (f"q{i}", f"a{i}")]
        assert (inside, out) in ((_turn(i), []), ([], _turn(i))), i
    for at in range(0, len(stored), 2):
        assert stored[at].role == "user" and stored[at + 1].content == f"a{stored[at].content[1:]}"


async def test_an_edit_racing_turns_loses_none_of_them(store: BackendStore[Any]) -> None:
    await store.append("s", [_user("edit me")])
    first = (await store.history("s")).ids[0]

    async def editor() -> None:
        for n in range(10):
            await store.edit_message("s", first, _user(f"edited {n}"))
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(editor)
        for i in range(30):
            group.start_soon(store.append, "s", _turn(i))
    stored = await store.load("s")
    assert stored[0] == _user("edited 9")
    assert sorted(m.content for m in stored[1:] if m.role == "user") == sorted(
        f"q{i}" for i in range(30)
    )
    assert len(stored) == 61


async def test_a_regenerated_reply_can_be_streamed() -> None:
    store = InMemoryStateStore()
    await store.append("s", [_user("q"), _assistant("old")])
    async with Pipeline(
        StateMiddleware(store), ProviderMiddleware(ScriptedProvider(["a new answer"]))
    ) as pipe:
        async with pipe.stream_regenerate("s") as turn:
            chunks = [chunk.text async for chunk in turn]
        assert "".join(chunks) == "a new answer" and len(chunks) > 1
        assert turn.result is not None and turn.result.response.text == "a new answer"
    assert await store.load("s") == [_user("q"), _assistant("a new answer")]


async def test_a_regenerate_stream_cut_off_leaves_the_old_reply() -> None:
    store = InMemoryStateStore()
    await store.append("s", [_user("q"), _assistant("old")])
    async with Pipeline(
        StateMiddleware(store), ProviderMiddleware(ScriptedProvider(["one two three four"]))
    ) as pipe:
        async with pipe.stream_regenerate("s") as turn:
            async for _ in turn:
                break  # the reader leaves after the first chunk
    assert await store.load("s") == [_user("q"), _assistant("old")]
