"""Summaries: folded in the background after a turn, never inside one; stored with the session;
sent before the window; failures logged, counted and retried, never failing a turn."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from chatstate import (
    ConfigurationError,
    InMemoryStateStore,
    Message,
    Pipeline,
    PipelineError,
    ProviderMiddleware,
    RedisStateStore,
    ScriptedProvider,
    StateMiddleware,
    StateMiddlewareConfig,
    ToolCall,
)
from chatstate.providers.scripted import summary_reply
from chatstate.summaries import ProviderSummarizer, SummaryConfig, fold_count, transcript
from chatstate.testing import FakeClock
from chatstate.window import is_valid_window

from .conftest import kinds


@pytest.fixture(params=kinds("memory", "redis"))
async def store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Any]:
    if request.param == "memory":
        async with InMemoryStateStore() as memory:
            yield memory
        return
    url = request.getfixturevalue("redis_server").url
    async with RedisStateStore(Redis.from_url(url), prefix=key_prefix, owns_client=True) as redis:
        yield redis


class _Turns:
    """Counts finished turns; a summary made with :meth:`slow` finishes only after another turn
    has finished (or the test ends): if any turn waited for a summary, the test would hang."""

    def __init__(self) -> None:
        self.done = 0
        self.ended = False
        self.changed = anyio.Condition()

    async def finished_one(self) -> None:
        async with self.changed:
            self.done += 1
            self.changed.notify_all()

    async def end(self) -> None:
        async with self.changed:
            self.ended = True
            self.changed.notify_all()

    async def slow(self, messages: Sequence[Message]) -> str:
        async with self.changed:
            started = self.done
            while self.done == started and not self.ended:
                await self.changed.wait()
        return summary_reply(messages)


async def test_a_fact_from_turn_1_is_recalled_at_turn_100_through_the_summary(store: Any) -> None:
    turns = _Turns()
    summarizer = ProviderSummarizer(ScriptedProvider(turns.slow))
    config = StateMiddlewareConfig(
        max_messages=10, summary=SummaryConfig(summarizer=summarizer, summarize_at=8, keep_recent=4)
    )
    state = StateMiddleware(store, config)
    provider = ScriptedProvider(latency=0)  # a provider awaits its network: the loop runs on
    pipe = Pipeline(state, ProviderMiddleware(provider, system_prompt="Be brief."))
    pending_after_turn = 0
    # fail_after: a turn that waited for a summary would hang here
    with anyio.fail_after(60):
        async with pipe:
            await pipe.execute_with_session("s", "user", "Hello! My name is Ada.")
            for turn in range(2, 100):
                await pipe.execute_with_session("s", "user", f"Note {turn}: nothing much today.")
                pending_after_turn += state.summaries.pending  # type: ignore[union-attr]
                await turns.finished_one()
            result = await pipe.execute_with_session("s", "user", "What's my name?")
            await turns.end()
    assert result.response.text == "Your name is Ada."
    sent = provider.calls[-1]
    assert sent[0] == Message(role="system", content="Be brief.")
    assert sent[1].role == "system" and "my name is Ada" in sent[1].text  # the summary
    assert "Ada" not in "".join(message.text for message in sent[2:])  # not from the history
    summaries = state.summaries
    assert summaries is not None
    assert summaries.made >= 20 and summaries.failed == 0
    assert pending_after_turn >= 20  # turns returned while summaries were still being written
    history, summary = await store.load_with_summary("s")
    assert len(history) <= 20 and summary is not None  # 2 x max_messages at most
    assert summary.metadata["chatstate.summarized"] + len(history) == 200


class _Flaky:
    def __init__(self, failures: int, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error or RuntimeError("the summary model is down")
        self.calls = 0

    async def summarize(self, summary: str | None, messages: Sequence[Message]) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return f"{len(messages)} messages"


async def test_a_failed_summary_never_fails_a_turn_and_is_retried_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    store = InMemoryStateStore()
    flaky = _Flaky(failures=2)
    summary = SummaryConfig(
        summarizer=flaky, summarize_at=4, keep_recent=2, retry_after=timedelta(seconds=30)
    )
    config = StateMiddlewareConfig(max_messages=20, summary=summary)
    state = StateMiddleware(store, config, clock=clock)
    pipe = Pipeline(state, ProviderMiddleware(ScriptedProvider()))
    counts = state.summaries
    assert counts is not None

    async def turn(text: str) -> None:
        async with pipe:  # the block's end waits for the summary the turn started
            await pipe.execute_with_session("s", "user", text)

    with caplog.at_level(logging.WARNING, logger="chatstate.summaries"):
        for index in range(2):
            await turn(f"turn {index}")
        assert (counts.failed, counts.made, flaky.calls) == (1, 0, 1)
        clock.advance(29.9)
        await turn("too soon to retry")
        assert flaky.calls == 1  # within retry_after: not tried again
        clock.advance(0.1)
        await turn("retried")
        assert (counts.failed, counts.made, flaky.calls) == (2, 0, 2)
        clock.advance(30)
        await turn("retried again")
    assert (counts.failed, counts.made, flaky.calls, counts.pending) == (2, 1, 3, 0)
    assert "summarising session 's' failed (RuntimeError: the summary model is down)" in caplog.text
    history, stored = await store.load_with_summary("s")
    assert stored is not None and stored.text == "8 messages" and len(history) == 2


async def test_a_slow_summary_times_out_on_the_clock_and_counts_as_failed() -> None:
    clock = FakeClock()

    async def never(messages: Sequence[Message]) -> str:
        await anyio.sleep_forever()
        return "unreachable"

    summary = SummaryConfig(
        summarizer=ProviderSummarizer(ScriptedProvider(never)),
        summarize_at=2,
        keep_recent=1,
        timeout=timedelta(seconds=20),
    )
    config = StateMiddlewareConfig(summary=summary)
    state = StateMiddleware(InMemoryStateStore(), config, clock=clock)
    pipe = Pipeline(state, ProviderMiddleware(ScriptedProvider()))
    async with pipe:
        result = await pipe.execute_with_session("s", "user", "hello")
        assert result.response.text
        await clock.sleeping()  # the summary runs, under its timeout
        clock.advance(19.9)
        assert clock.waiting == 1
        clock.advance(0.1)
    assert state.summaries is not None and state.summaries.failed == 1


def _hanging_summary() -> tuple[StateMiddleware, anyio.Event, list[str]]:
    """A state middleware whose summaries start (``started`` is set) and never finish; ``ended``
    records how each ended."""
    started, ended = anyio.Event(), []

    class Hanging:
        async def summarize(self, summary: str | None, messages: Sequence[Message]) -> str:
            started.set()
            try:
                await anyio.sleep_forever()
            except BaseException as exc:
                ended.append(type(exc).__name__)
                raise
            return "unreachable"

    summary = SummaryConfig(summarizer=Hanging(), summarize_at=2, keep_recent=1)
    config = StateMiddlewareConfig(summary=summary)
    return StateMiddleware(InMemoryStateStore(), config), started, ended


async def test_a_cancelled_pipeline_block_cancels_its_summaries() -> None:
    state, started, ended = _hanging_summary()
    pipe = Pipeline(state, ProviderMiddleware(ScriptedProvider()))
    with anyio.CancelScope() as scope:
        async with pipe:
            await pipe.execute_with_session("s", "user", "hello")
            await started.wait()
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert ended == [anyio.get_cancelled_exc_class().__name__]  # nothing outlived the block
    assert state.summaries is not None and state.summaries.pending == 0
    assert (state.summaries.made, state.summaries.failed) == (0, 0)
    store: Any = state.store
    assert await store.load_with_summary("s") == (await store.load("s"), None)


async def test_an_error_in_the_pipeline_block_cancels_its_summaries_and_leaves_as_raised() -> None:
    state, started, ended = _hanging_summary()
    pipe = Pipeline(state, ProviderMiddleware(ScriptedProvider()))
    with pytest.raises(KeyError, match="the application failed"):  # not an ExceptionGroup
        async with pipe:
            await pipe.execute_with_session("s", "user", "hello")
            await started.wait()
            raise KeyError("the application failed")
    assert ended == [anyio.get_cancelled_exc_class().__name__]
    assert state.summaries is not None and state.summaries.pending == 0


async def test_summaries_need_the_pipeline_block() -> None:
    state, _, _ = _hanging_summary()
    pipe = Pipeline(state, ProviderMiddleware(ScriptedProvider()))
    with pytest.raises(PipelineError, match=r"async with Pipeline\(\.\.\.\) as pipe"):
        await pipe.execute_with_session("s", "user", "hello")
    assert await state.store.load("s") == []  # refused before anything was stored
    async with pipe:
        with pytest.raises(RuntimeError, match="already running"):
            await pipe.__aenter__()


async def test_a_turn_that_ends_after_the_block_is_stored_without_its_summary() -> None:
    state, _, _ = _hanging_summary()
    answering, answer = anyio.Event(), anyio.Event()

    async def reply(messages: Sequence[Message]) -> str:
        answering.set()
        await answer.wait()
        return "late"

    pipe = Pipeline(state, ProviderMiddleware(ScriptedProvider(reply)))
    async with anyio.create_task_group() as requests:  # a server's, outliving the pipeline
        async with pipe:
            requests.start_soon(pipe.execute_with_session, "s", "user", "hello")
            await answering.wait()
        answer.set()  # the turn's summary finds the pipeline's task group closed
    assert len(await state.store.load("s")) == 2
    assert state.summaries is not None and state.summaries.pending == 0


async def test_a_token_budget_that_cuts_the_window_schedules_a_summary() -> None:
    done = []

    class Recording:
        async def summarize(self, summary: str | None, messages: Sequence[Message]) -> str:
            done.append(len(messages))
            return "earlier: " + ", ".join(message.text for message in messages)

    summarizer = Recording()
    store = InMemoryStateStore()
    await store.save("s", [Message(role="user", content="x" * 400) for _ in range(6)])
    config = StateMiddlewareConfig(
        max_messages=100,
        max_tokens=400,
        reply_tokens=50,
        summary=SummaryConfig(summarizer=summarizer),
    )
    state = StateMiddleware(store, config)
    pipe = Pipeline(state, ProviderMiddleware(ScriptedProvider()))
    async with pipe:
        await pipe.execute_with_session("s", "user", "hi")
    assert done and done[0] >= 5  # below summarize_at (75), but out of the window
    history, stored = await store.load_with_summary("s")
    assert stored is not None and len(history) < 8


def test_a_fold_never_parts_a_tool_call_from_its_results() -> None:
    user = Message(role="user", content="q")
    call = Message(
        role="assistant", tool_calls=(ToolCall(id="a", name="f"), ToolCall(id="b", name="f"))
    )
    results = [
        Message(role="tool", content="r", tool_call_id="a"),
        Message(role="tool", content="r", tool_call_id="b"),
    ]
    answer = Message(role="assistant", content="done")
    history = [user, user, call, *results, answer]
    for keep in range(1, len(history) + 1):
        count = fold_count(history, keep)
        assert 0 <= count < len(history)
        assert is_valid_window(history[count:])
    open_exchange = [user, user, call, results[0]]  # the last call still waits for a result
    assert fold_count(open_exchange, 1) == 2  # the whole exchange stays
    assert fold_count([user, user], 2) == 0


def test_a_transcript_shows_tool_calls_and_results() -> None:
    messages = [
        Message(role="user", content="weather?", name="ann"),
        Message(role="assistant", tool_calls=(ToolCall(id="a", name="weather", arguments={}),)),
        Message(role="tool", content="sunny", tool_call_id="a"),
    ]
    assert transcript(messages) == (
        "user (ann): weather?\nassistant calls weather({})\ntool: sunny"
    )


async def test_the_provider_summarizer_asks_with_the_previous_summary() -> None:
    provider = ScriptedProvider(["The user is Ada."])
    summarizer = ProviderSummarizer(provider, options={"temperature": 0})
    text = await summarizer.summarize("Earlier: hello.", [Message(role="user", content="I'm Ada")])
    assert text == "The user is Ada."
    system, request = provider.calls[-1]
    assert system.role == "system" and "summary" in system.text
    assert request.text == "Summary so far:\nEarlier: hello.\n\nNew messages:\nuser: I'm Ada"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (dict(max_messages=10, summary=dict(summarize_at=12)), r"summarize_at \(12\) must be at"),
        (dict(max_messages=10, summary=dict(keep_recent=8)), r"keep_recent \(8\) must be less"),
        (dict(max_messages=-1, summary={}), "needs summarize_at and keep_recent"),
        (dict(summary=dict(summarize_at=1)), "summarize_at must be an int >= 2"),
        (dict(summary=dict(timeout=5)), "timeout must be a timedelta"),
        (dict(summary="yes"), "summary must be a SummaryConfig"),
    ],
)
def test_bad_summary_settings_are_refused(config: dict[str, Any], problem: str) -> None:
    summarizer = ProviderSummarizer(ScriptedProvider())
    with pytest.raises(ConfigurationError, match=problem):
        if isinstance(config["summary"], dict):
            config["summary"] = SummaryConfig(summarizer=summarizer, **config["summary"])
        StateMiddlewareConfig(**config)


def test_summaries_need_a_store_that_keeps_them() -> None:
    class Plain:
        async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
            return []

        async def append(self, *args: Any, **kwargs: Any) -> int:
            return 0

    config = StateMiddlewareConfig(
        summary=SummaryConfig(summarizer=ProviderSummarizer(ScriptedProvider()))
    )
    with pytest.raises(ConfigurationError, match="Plain does not"):
        StateMiddleware(Plain(), config)  # type: ignore[arg-type]
