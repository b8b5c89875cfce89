"""Streamed turns (``Pipeline.stream``), on asyncio and on trio: the chunks, the one append at the
end, the lock held until the end, and what each ``on_interrupt`` policy stores when the consumer
leaves early, is cancelled, or the provider fails mid-stream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import anyio
import pytest

from chatstate import (
    CallNext,
    ChunkFilter,
    ConfigurationError,
    InMemoryStateStore,
    InvalidMessageError,
    InvalidSessionIdError,
    Message,
    Pipeline,
    PipelineError,
    ProviderError,
    ProviderMiddleware,
    RequestContext,
    ScriptedProvider,
    StateMiddleware,
    StateMiddlewareConfig,
    StateSaveError,
    StreamChunk,
    ToolCall,
)
from chatstate.window import is_valid_window

from .test_pipeline import SpyStore

pytestmark = pytest.mark.anyio  # on asyncio and on trio

WORDS = ["The ", "quick ", "brown ", "fox ", "jumps."]
INTERRUPTED = {"interrupted": True}


class Gated:
    """Streams WORDS; before chunk ``pause_at`` it sets ``reached`` and waits for ``go``, or
    raises ``fail`` there. ``closed`` tells whether its stream was closed."""

    def __init__(
        self, *, pause_at: int | None = None, fail: Exception | None = None, words: Any = WORDS
    ) -> None:
        self.pause_at = pause_at
        self.fail = fail
        self.words = list(words)
        self.reached = anyio.Event()
        self.go = anyio.Event()
        self.closed = False
        self.calls = 0

    async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
        raise AssertionError("a streamed turn streams")

    async def stream(
        self, messages: Sequence[Message], **options: Any
    ) -> AsyncIterator[StreamChunk]:
        self.calls += 1
        try:
            for index, word in enumerate(self.words):
                if index == self.pause_at:
                    self.reached.set()
                    if self.fail is not None:
                        raise self.fail
                    await self.go.wait()
                yield StreamChunk(word)
            yield StreamChunk("", Message(role="assistant", content="".join(self.words)))
        finally:
            self.closed = True


class StreamingCompleter(Gated):
    """Gated, and it answers when not streamed too."""

    async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
        return Message(role="assistant", content="".join(self.words))


def _pipe(provider: Any, store: Any = None, **config: Any) -> tuple[Pipeline, Any]:
    store = store if store is not None else SpyStore()
    state = StateMiddleware(store, StateMiddlewareConfig(**config))
    return Pipeline(state, ProviderMiddleware(provider)), store


def _user(text: str) -> Message:
    return Message(role="user", content=text)


async def test_a_streamed_turn_gives_the_chunks_and_stores_the_turn_in_one_append() -> None:
    pipe, store = _pipe(ScriptedProvider(["Hello there, Alice."]))
    async with pipe, pipe.stream_with_session("s", "user", "Hi, I am Alice") as turn:
        chunks = [chunk async for chunk in turn]
    reply = Message(role="assistant", content="Hello there, Alice.")
    assert [chunk.text for chunk in chunks] == ["Hello ", "there, ", "Alice.", ""]
    assert [chunk.message for chunk in chunks] == [None, None, None, reply]
    result = turn.result
    assert result.response == reply and not result.interrupted
    assert result.new_messages == [_user("Hi, I am Alice"), reply]
    assert await store.load("s") == result.new_messages
    assert store.calls["append"] == 1
    assert set(result.timings) == {"load", "provider", "save", "total"}


async def test_a_turn_streams_outside_the_pipelines_block_and_remembers() -> None:
    pipe, store = _pipe(ScriptedProvider())
    async with pipe.stream("s", _user("My name is Alice")) as turn:
        async for _ in turn:
            pass
    async with pipe.stream_with_session("s", "user", "What's my name?") as turn:
        text = "".join([chunk.text async for chunk in turn])
    assert text == "Your name is Alice." == turn.result.response.text
    assert len(await store.load("s")) == 4


async def test_a_provider_without_stream_is_streamed_as_one_chunk() -> None:
    class Plain:
        async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
            return Message(role="assistant", content="all at once")

    pipe, store = _pipe(Plain())
    async with pipe, pipe.stream_with_session("s", "user", "hi") as turn:
        chunks = [chunk async for chunk in turn]
    reply = Message(role="assistant", content="all at once")
    assert chunks == [StreamChunk("all at once", reply)]
    assert await store.load("s") == [_user("hi"), reply]


async def _stream_all(pipe: Pipeline, session_id: str, text: str, into: list[str]) -> None:
    async with pipe.stream_with_session(session_id, "user", text) as turn:
        async for chunk in turn:
            into.append(chunk.text)


async def test_the_session_stays_locked_until_the_stream_has_ended() -> None:
    provider = Gated(pause_at=2)
    seen: list[int] = []

    def count(messages: Sequence[Message]) -> str:
        seen.append(len(messages))
        return "second"

    pipe, store = _pipe(provider)
    other = Pipeline(pipe.middlewares[0], ProviderMiddleware(ScriptedProvider(count)))
    got: list[str] = []
    async with pipe, anyio.create_task_group() as group:
        group.start_soon(_stream_all, pipe, "s", "first", got)
        await provider.reached.wait()  # the consumer has read two chunks
        group.start_soon(other.execute_with_session, "s", "user", "next")
        await anyio.wait_all_tasks_blocked()
        assert seen == [] and got == WORDS[:2]  # the other turn of the session waits for the lock
        provider.go.set()
    assert "".join(got) == "".join(WORDS) and seen == [3]  # it saw the whole streamed turn
    assert [m.text for m in await store.load("s")] == ["first", "".join(WORDS), "next", "second"]


async def test_the_consumer_reads_the_providers_stream_at_its_own_pace() -> None:
    provider = StreamingCompleter(words=["a ", "b ", "c"])
    pulled: list[str] = []
    original = provider.stream

    async def counting(messages: Sequence[Message], **options: Any) -> AsyncIterator[StreamChunk]:
        async with contextlib.aclosing(original(messages, **options)) as chunks:
            async for chunk in chunks:
                pulled.append(chunk.text)
                yield chunk

    provider.stream = counting  # type: ignore[method-assign]
    pipe, _ = _pipe(provider)
    async with pipe, pipe.stream_with_session("s", "user", "hi") as turn:
        await anyio.wait_all_tasks_blocked()
        assert pulled == []  # nothing is read ahead of the consumer
        assert (await turn.__anext__()).text == "a "
        await anyio.wait_all_tasks_blocked()
        assert pulled == ["a "]
        assert [chunk.text async for chunk in turn] == ["b ", "c", ""]


@pytest.mark.parametrize("policy", ["discard", "keep_partial"])
async def test_a_consumer_that_stops_early_interrupts_the_turn(policy: str) -> None:
    provider = Gated(pause_at=2)
    pipe, store = _pipe(provider, on_interrupt=policy)
    async with pipe:
        async with pipe.stream_with_session("s", "user", "tell me") as turn:
            async for chunk in turn:
                if chunk.text == "quick ":
                    break
        assert provider.closed  # the provider's stream was closed, not left to the collector
        result = turn.result
        assert result.interrupted
        partial = Message(role="assistant", content="The quick ", metadata=INTERRUPTED)
        assert result.response == partial
        stored = await store.load("s")
        assert stored == ([] if policy == "discard" else [_user("tell me"), partial])
        assert store.calls["append"] == (0 if policy == "discard" else 1)
        # The lock is free: the next turn runs, and sends the partial reply when it was kept.
        pipe2 = Pipeline(pipe.middlewares[0], ProviderMiddleware(ScriptedProvider(["ok"])))
        again = await pipe2.execute_with_session("s", "user", "go on")
        assert again.messages == [*stored, _user("go on")]


@pytest.mark.parametrize("inside", [True, False], ids=["in the pipeline's block", "alone"])
@pytest.mark.parametrize("policy", ["discard", "keep_partial"])
async def test_a_consumer_cancelled_mid_stream_stores_what_the_policy_says(
    policy: str, inside: bool
) -> None:
    provider = Gated(pause_at=3)
    pipe, store = _pipe(provider, on_interrupt=policy)
    got: list[str] = []

    async def consume() -> None:
        async with pipe.stream_with_session("s", "user", "tell me") as turn:
            async for chunk in turn:
                got.append(chunk.text)

    async with contextlib.AsyncExitStack() as stack:
        if inside:
            await stack.enter_async_context(pipe)
        group = await stack.enter_async_context(anyio.create_task_group())
        group.start_soon(consume)
        await provider.reached.wait()
        await anyio.wait_all_tasks_blocked()
        group.cancel_scope.cancel()  # the client is gone
    assert got == WORDS[:3] and provider.closed
    partial = Message(role="assistant", content="".join(WORDS[:3]), metadata=INTERRUPTED)
    assert await store.load("s") == ([] if policy == "discard" else [_user("tell me"), partial])


async def test_a_cancel_scope_around_the_block_cuts_the_turn_where_the_consumer_was() -> None:
    provider = Gated(pause_at=4)
    pipe, store = _pipe(provider, on_interrupt="keep_partial")
    async with pipe:
        with anyio.CancelScope() as scope:
            async with pipe.stream_with_session("s", "user", "tell me") as turn:
                async for chunk in turn:
                    if chunk.text == "brown ":
                        scope.cancel()
        assert scope.cancelled_caught
    stored = await store.load("s")
    assert stored[-1].metadata == INTERRUPTED
    assert WORDS[2] in stored[-1].text and is_valid_window(stored)


@pytest.mark.parametrize("policy", ["discard", "keep_partial"])
async def test_a_provider_failing_mid_stream_raises_after_its_chunks_and_stores_nothing(
    policy: str,
) -> None:
    provider = Gated(pause_at=2, fail=ConnectionResetError("the model went away"))
    pipe, store = _pipe(provider, on_interrupt=policy)
    got: list[str] = []
    async with pipe:
        with pytest.raises(ProviderError, match="the model went away"):
            async with pipe.stream_with_session("s", "user", "tell me") as turn:
                async for chunk in turn:
                    got.append(chunk.text)
        assert got == WORDS[:2]
        with pytest.raises(ProviderError):
            turn.result  # noqa: B018
    assert await store.load("s") == [] and store.calls["append"] == 0


async def test_a_turn_interrupted_before_the_model_was_asked_stores_nothing() -> None:
    holder = Gated(pause_at=0)
    pipe, store = _pipe(holder, on_interrupt="keep_partial")
    async with pipe, anyio.create_task_group() as group:

        async def hold() -> None:
            async with pipe.stream_with_session("s", "user", "first") as turn:
                async for _ in turn:
                    pass

        group.start_soon(hold)
        await holder.reached.wait()  # the first turn holds the session's lock
        async with pipe.stream_with_session("s", "user", "second") as waiting:
            pass  # left while it waited for the lock
        with pytest.raises(PipelineError, match="before the model answered"):
            waiting.result  # noqa: B018
        holder.go.set()
    assert [m.text for m in await store.load("s")] == ["first", "".join(WORDS)]
    assert holder.calls == 1


async def test_a_turn_is_entered_once_and_read_after_its_end() -> None:
    pipe, _ = _pipe(ScriptedProvider(["a", "b"]))
    turn = pipe.stream_with_session("s", "user", "hi")
    with pytest.raises(PipelineError, match="enter the turn first"):
        await turn.__anext__()
    with pytest.raises(PipelineError, match="has not ended"):
        turn.result  # noqa: B018
    async with turn:
        assert [chunk.text async for chunk in turn] == ["a", ""]
        assert [chunk async for chunk in turn] == []  # the end is the end
    with pytest.raises(PipelineError, match="runs once"):
        async with turn:
            pass
    assert "ended" in repr(turn)


async def test_bad_input_is_refused_when_the_turn_is_made() -> None:
    pipe, store = _pipe(ScriptedProvider())
    with pytest.raises(InvalidSessionIdError):
        pipe.stream_with_session("", "user", "hi")
    with pytest.raises(InvalidMessageError):
        pipe.stream_with_session("s", "wizard", "hi")
    with pytest.raises(InvalidMessageError):
        pipe.stream("s", [])
    with pytest.raises(ConfigurationError, match="on_interrupt"):
        StateMiddlewareConfig(on_interrupt="keep")  # type: ignore[arg-type]
    assert store.calls["load"] == 0


class Shouting:
    """A middleware that upper-cases the chunks the consumer gets."""

    async def __call__(self, context: RequestContext, call_next: CallNext) -> None:
        def shout(chunk: StreamChunk) -> StreamChunk:
            return StreamChunk(chunk.text.upper(), chunk.message)

        context.chunk_filters.append(shout)
        await call_next(context)


class NoSpaces:
    """Drops the chunks that are only spaces after stripping one word ("quick "), and records
    the order in which it sees chunks."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    async def __call__(self, context: RequestContext, call_next: CallNext) -> None:
        def drop(chunk: StreamChunk) -> StreamChunk | None:
            self.seen.append(chunk.text)
            return None if chunk.text == "quick " else chunk

        hook: ChunkFilter = drop
        context.chunk_filters.append(hook)
        await call_next(context)


async def test_middlewares_observe_and_transform_the_chunks_innermost_first() -> None:
    seen: list[str] = []
    store = InMemoryStateStore()
    pipe = Pipeline(
        StateMiddleware(store), Shouting(), NoSpaces(seen), ProviderMiddleware(StreamingCompleter())
    )
    async with pipe, pipe.stream_with_session("s", "user", "hi") as turn:
        texts = [chunk.text async for chunk in turn]
    assert seen == [*WORDS, ""]  # the inner filter saw the provider's own chunks
    assert texts == ["THE ", "BROWN ", "FOX ", "JUMPS.", ""]
    assert (await store.load("s"))[-1].text == "".join(WORDS)  # the stored reply is the model's
    # Filters run only when a turn streams.
    assert (await pipe.execute_with_session("s2", "user", "hi")).response.text == "".join(WORDS)


async def test_a_middleware_answering_early_streams_its_answer_as_nothing() -> None:
    class Canned:
        async def __call__(self, context: RequestContext, call_next: CallNext) -> None:
            context.response = Message(role="assistant", content="pong")
            context.new_messages.append(context.response)

    store = InMemoryStateStore()
    pipe = Pipeline(StateMiddleware(store), Canned(), ProviderMiddleware(StreamingCompleter()))
    async with pipe, pipe.stream_with_session("s", "user", "ping") as turn:
        assert [chunk async for chunk in turn] == []
    assert turn.result.response.text == "pong"
    assert [m.text for m in await store.load("s")] == ["ping", "pong"]


@pytest.mark.parametrize("policy", ["discard", "keep_partial"])
async def test_a_cancelled_turn_that_is_not_streamed_follows_the_policy(policy: str) -> None:
    reached = anyio.Event()

    async def slow(messages: Sequence[Message]) -> str:
        reached.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    pipe, store = _pipe(ScriptedProvider(slow), on_interrupt=policy)
    async with anyio.create_task_group() as group:
        group.start_soon(pipe.execute_with_session, "s", "user", "hello")
        await reached.wait()
        group.cancel_scope.cancel()
    partial = Message(role="assistant", content="", metadata=INTERRUPTED)
    assert await store.load("s") == ([] if policy == "discard" else [_user("hello"), partial])


async def test_results_of_parallel_calls_that_ran_in_the_client_are_one_turn() -> None:
    calls = (ToolCall(id="a", name="clock"), ToolCall(id="b", name="weather"))
    asking = Message(role="assistant", content=None, tool_calls=calls)
    provider = ScriptedProvider([asking, "It is noon and sunny."])
    pipe, store = _pipe(provider)
    first = await pipe.execute_with_session("s", "user", "time and weather?")
    assert first.response == asking  # no tools here: the caller runs them
    results = [
        Message(role="tool", content="12:00", tool_call_id="a"),
        Message(role="tool", content="sunny", tool_call_id="b"),
    ]
    second = await pipe.execute("s", results)
    assert provider.calls[-1][-3:] == [asking, *results]  # both results, after their call
    assert is_valid_window(provider.calls[-1])
    assert second.new_messages == [*results, second.response]
    assert store.calls["append"] == 2
    assert await store.load("s") == [_user("time and weather?"), asking, *results, second.response]
    with pytest.raises(InvalidMessageError, match=r"messages\[1\]"):
        await pipe.execute("s", [results[0], "sunny"])  # type: ignore[list-item]


@pytest.mark.parametrize("inside", [True, False], ids=["in the pipeline's block", "alone"])
async def test_an_error_in_the_consumers_block_interrupts_the_turn_and_is_raised_as_it_is(
    inside: bool,
) -> None:
    provider = Gated(pause_at=1)
    pipe, store = _pipe(provider, on_interrupt="keep_partial")

    async def consume() -> None:
        async with pipe.stream_with_session("s", "user", "hi") as turn:
            async for _ in turn:
                raise KeyError("the consumer's own bug")

    with pytest.raises(KeyError, match="own bug"):  # not wrapped in an ExceptionGroup
        if inside:
            async with pipe:
                await consume()
        else:
            await consume()
    assert provider.closed
    assert [m.metadata for m in await store.load("s")] == [{}, INTERRUPTED]


async def test_a_generator_closed_in_another_task_still_ends_the_turn() -> None:
    # A web framework may stop iterating a response's generator and close it later, elsewhere.
    provider = Gated(pause_at=2)
    pipe, store = _pipe(provider, on_interrupt="keep_partial")

    async def events() -> AsyncIterator[str]:
        async with pipe.stream_with_session("s", "user", "hi") as turn:
            async for chunk in turn:
                yield chunk.text

    async with pipe:
        stream = events()
        got: list[str] = []

        async def read_two() -> None:
            got.extend([await stream.__anext__(), await stream.__anext__()])

        async with anyio.create_task_group() as group:
            group.start_soon(read_two)
        await stream.aclose()  # in this task, not the one that entered the turn
    assert got == WORDS[:2] and provider.closed
    assert (await store.load("s"))[-1].text == "".join(WORDS[:2])


async def test_a_lease_is_held_across_instances_until_the_stream_has_ended() -> None:
    store = InMemoryStateStore()
    provider = Gated(pause_at=1)
    config = StateMiddlewareConfig(lease_ttl=timedelta(seconds=30), lock=False)
    one = Pipeline(StateMiddleware(store, config), ProviderMiddleware(provider))
    seen: list[int] = []

    def count(messages: Sequence[Message]) -> str:
        seen.append(len(messages))
        return "ok"

    two = Pipeline(StateMiddleware(store, config), ProviderMiddleware(ScriptedProvider(count)))
    got: list[str] = []
    async with one, anyio.create_task_group() as group:
        group.start_soon(_stream_all, one, "s", "first", got)
        await provider.reached.wait()
        group.start_soon(two.execute_with_session, "s", "user", "second")
        await anyio.wait_all_tasks_blocked()
        assert seen == []  # the other instance waits for the lease
        provider.go.set()
    assert seen == [3] and "".join(got) == "".join(WORDS)


async def test_under_a_lease_a_cancelled_turn_and_a_left_stream_keep_their_part() -> None:
    reached = anyio.Event()

    async def slow(messages: Sequence[Message]) -> str:
        reached.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    store = InMemoryStateStore()
    config = StateMiddlewareConfig(lease_ttl=timedelta(seconds=30), on_interrupt="keep_partial")
    pipe = Pipeline(StateMiddleware(store, config), ProviderMiddleware(ScriptedProvider(slow)))
    async with anyio.create_task_group() as group:
        group.start_soon(pipe.execute_with_session, "s", "user", "hello")
        await reached.wait()
        group.cancel_scope.cancel()  # the caller is gone; the lease still holds
    assert [(m.text, m.metadata) for m in await store.load("s")] == [
        ("hello", {}),
        ("", INTERRUPTED),
    ]
    provider = Gated(pause_at=1)
    streaming = Pipeline(StateMiddleware(store, config), ProviderMiddleware(provider))
    async with streaming, streaming.stream_with_session("s", "user", "hi") as turn:
        async for _ in turn:
            break
    assert [m.text for m in await store.load("s")][2:] == ["hi", "The "]


async def test_a_kept_part_that_cannot_be_stored_does_not_hide_the_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reached = anyio.Event()

    async def slow(messages: Sequence[Message]) -> str:
        reached.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    store = SpyStore()
    store.fail_append = StateSaveError("the store is down", session_id="s")
    pipe, _ = _pipe(ScriptedProvider(slow), store, on_interrupt="keep_partial")
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(pipe.execute_with_session, "s", "user", "hello")
            await reached.wait()
            scope.cancel()
    assert scope.cancelled_caught  # cancelled, not failed with the store's error
    assert store.calls["append"] == 1 and "the store is down" in caplog.text


async def test_a_stream_that_ends_without_the_whole_message_is_a_provider_error() -> None:
    class Truncated(StreamingCompleter):
        async def stream(
            self, messages: Sequence[Message], **options: Any
        ) -> AsyncIterator[StreamChunk]:
            yield StreamChunk("half a ")

    pipe, store = _pipe(Truncated())
    got: list[str] = []
    async with pipe:
        with pytest.raises(ProviderError, match="without a chunk with the message"):
            await _stream_all(pipe, "s", "hi", got)
    assert got == ["half a "] and await store.load("s") == []
