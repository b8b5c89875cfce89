from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from chatstate import (
    CallNext,
    ChatStateError,
    ConfigurationError,
    CorruptEntryError,
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
    StateLoadError,
    StateMiddleware,
    StateMiddlewareConfig,
    StateSaveError,
    StateStore,
)
from chatstate.stores.base import TTL

from .conftest import FakeClock


class SpyStore(InMemoryStateStore):
    """Counts calls, runs ``during[name]()`` inside them, and fails them on demand."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: Counter[str] = Counter()
        self.during: dict[str, Callable[[], object]] = {}
        self.fail_load: Exception | None = None
        self.fail_append: Exception | None = None

    def _called(self, name: str, failure: Exception | None) -> None:
        self.calls[name] += 1
        if name in self.during:
            self.during[name]()
        if failure is not None:
            raise failure

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        self._called("load", self.fail_load)
        return await super().load(session_id, limit=limit)

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        self._called("append", self.fail_append)
        return await super().append(session_id, messages, max_messages=max_messages, ttl=ttl)


def make_pipeline(
    store: StateStore | None = None, provider: Any = None, **config: Any
) -> tuple[Pipeline, StateStore]:
    store = store if store is not None else InMemoryStateStore()
    pipe = Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(**config)),
        ProviderMiddleware(provider if provider is not None else ScriptedProvider()),
    )
    return pipe, store


async def test_the_second_turn_remembers_the_first_and_other_sessions_do_not() -> None:
    pipe, _ = make_pipeline(max_messages=10, ttl=timedelta(hours=24))
    await pipe.execute_with_session("user-123", "user", "My name is Alice")
    result = await pipe.execute_with_session("user-123", "user", "What's my name?")
    assert "Alice" in (result.response.text)
    other = await pipe.execute_with_session("user-456", "user", "What's my name?")
    assert "Alice" not in other.response.text


async def test_a_turn_sends_system_prompt_history_and_message_and_stores_the_turn() -> None:
    store = InMemoryStateStore()
    provider = ScriptedProvider(["first", "second"])
    pipe = Pipeline(
        StateMiddleware(store),
        ProviderMiddleware(provider, system_prompt="Be brief."),
    )
    await pipe.execute_with_session("s", "user", "one")
    result = await pipe.execute_with_session("s", "user", "two", temperature=0)
    system = Message(role="system", content="Be brief.")
    turn1 = [Message(role="user", content="one"), Message(role="assistant", content="first")]
    turn2 = [Message(role="user", content="two"), Message(role="assistant", content="second")]
    assert result.messages == [system, *turn1, turn2[0]]
    assert provider.calls[-1] == result.messages
    assert result.new_messages == turn2
    assert result.response == turn2[1]
    assert await store.load("s") == turn1 + turn2  # the system prompt is not stored
    assert set(result.timings) == {"load", "provider", "save", "total"}


async def test_timings_measure_each_stage_and_the_whole_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()  # the stages are timed with perf_counter: here, a clock moved by hand
    for module in ("pipeline", "middleware.state", "middleware.provider"):
        monkeypatch.setattr(f"chatstate.{module}.time", SimpleNamespace(perf_counter=clock))
    store = SpyStore()
    store.during = {"load": lambda: clock.advance(0.5), "append": lambda: clock.advance(0.25)}

    def answer(messages: list[Message]) -> str:
        clock.advance(2.0)
        return "ok"

    pipe, _ = make_pipeline(store, ScriptedProvider(answer))
    result = await pipe.execute_with_session("s", "user", "hi")
    assert result.timings == {"load": 0.5, "provider": 2.0, "save": 0.25, "total": 2.75}


async def test_history_is_bounded_on_write_and_on_read() -> None:
    provider = ScriptedProvider(lambda messages: "ok")
    pipe, store = make_pipeline(provider=provider, max_messages=4)
    for index in range(10):
        await pipe.execute_with_session("s", "user", f"q{index}")
    stored = await store.load("s")
    assert [m.text for m in stored] == ["q8", "ok", "q9", "ok"]
    assert len(provider.calls[-1]) == 5  # four of history and the new message


async def test_unlimited_history_keeps_and_sends_everything() -> None:
    provider = ScriptedProvider(lambda messages: "ok")
    pipe, store = make_pipeline(provider=provider, max_messages=-1)
    for index in range(30):
        await pipe.execute_with_session("s", "user", f"q{index}")
    assert len(await store.load("s")) == 60
    assert len(provider.calls[-1]) == 59


async def test_the_ttl_is_applied_to_every_turn(clock: FakeClock) -> None:
    pipe, _ = make_pipeline(InMemoryStateStore(clock=clock), ttl=timedelta(minutes=1))
    await pipe.execute_with_session("s", "user", "My name is Alice")
    clock.advance(50)
    await pipe.execute_with_session("s", "user", "hello")
    clock.advance(50)  # 100 s after the first turn, 50 after the last
    result = await pipe.execute_with_session("s", "user", "What's my name?")
    assert "Alice" in result.response.text
    clock.advance(61)
    assert "Alice" not in (await pipe.execute_with_session("s", "user", "Who am I?")).response.text


async def test_a_thousand_concurrent_turns_over_a_hundred_sessions() -> None:
    provider = ScriptedProvider(lambda messages: f"reply to {messages[-1].text}", latency=0)
    pipe, store = make_pipeline(provider=provider, max_messages=8)
    async with anyio.create_task_group() as group:
        for turn in range(1000):
            session = turn % 100
            group.start_soon(
                pipe.execute_with_session, f"session-{session}", "user", f"{session}:{turn}"
            )
    for session in range(100):
        history = await store.load(f"session-{session}")
        assert len(history) == 8
        for question, answer in zip(history[::2], history[1::2], strict=True):
            assert question.role == "user" and answer.role == "assistant"
            assert question.text.split(":")[0] == str(session)  # nothing of another session
            assert answer.text == f"reply to {question.text}"  # whole turns, never interleaved


async def _racing_turns(lock: bool) -> list[int]:
    """Runs 20 concurrent turns on one session; returns how much history each turn saw."""
    seen: list[int] = []

    async def reply(messages: Sequence[Message]) -> str:
        seen.append(len(messages) - 1)
        await anyio.lowlevel.checkpoint()
        return "ok"

    pipe, _ = make_pipeline(provider=ScriptedProvider(reply), max_messages=-1, lock=lock)
    async with anyio.create_task_group() as group:
        for index in range(20):
            group.start_soon(pipe.execute_with_session, "s", "user", str(index))
    return seen


async def test_turns_of_one_session_are_serialised() -> None:
    assert await _racing_turns(lock=True) == list(range(0, 40, 2))


async def test_without_the_lock_turns_of_one_session_race() -> None:
    # The same workload without the lock: every turn sees a stale history. This is what the lock
    # prevents, and proves the test above can fail.
    assert await _racing_turns(lock=False) != list(range(0, 40, 2))


async def test_turns_of_different_sessions_run_concurrently() -> None:
    all_in = anyio.Event()
    inside = 0

    async def reply(messages: Sequence[Message]) -> str:
        nonlocal inside
        inside += 1
        if inside == 10:
            all_in.set()
        with anyio.fail_after(5):  # times out if sessions were serialised
            await all_in.wait()
        return "ok"

    pipe, _ = make_pipeline(provider=ScriptedProvider(reply))
    async with anyio.create_task_group() as group:
        for index in range(10):
            group.start_soon(pipe.execute_with_session, f"s{index}", "user", "hi")


async def test_session_locks_do_not_pile_up() -> None:
    state = StateMiddleware(InMemoryStateStore())
    pipe = Pipeline(state, ProviderMiddleware(ScriptedProvider(lambda messages: "ok")))
    for index in range(1_000):  # a lock left behind would show at any count
        await pipe.execute_with_session(f"session-{index}", "user", "hi")
    assert state._locks is not None and len(state._locks) == 0


async def test_a_failed_load_continues_with_empty_history_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = SpyStore()
    await store.append("s", [Message(role="user", content="My name is Alice")])
    store.fail_load = ConnectionError("redis is down")
    state = StateMiddleware(store)
    pipe = Pipeline(state, ProviderMiddleware(ScriptedProvider()))
    with caplog.at_level(logging.WARNING, logger="chatstate"):
        result = await pipe.execute_with_session("s", "user", "What's my name?")
    assert "Alice" not in result.response.text
    assert state.load_errors == 1
    assert "'s'" in caplog.text and "redis is down" in caplog.text
    store.fail_load = None
    assert len(await store.load("s")) == 3  # the turn was still stored


async def test_a_failed_load_raises_when_configured() -> None:
    store = SpyStore()
    store.fail_load = ConnectionError("redis is down")
    pipe, _ = make_pipeline(store, on_load_error="raise")
    with pytest.raises(StateLoadError, match="redis is down") as caught:
        await pipe.execute_with_session("s", "user", "hi")
    assert caught.value.session_id == "s"
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert store.calls["append"] == 0
    store.fail_load = CorruptEntryError("bad entry")
    with pytest.raises(CorruptEntryError):  # our own typed errors pass through unchanged
        await pipe.execute_with_session("s", "user", "hi")


async def test_a_failed_save_raises_with_the_unsaved_messages() -> None:
    store = SpyStore()
    store.fail_append = TimeoutError("too slow")
    pipe, _ = make_pipeline(store, provider=ScriptedProvider(["the reply"]))
    with pytest.raises(StateSaveError, match="too slow") as caught:
        await pipe.execute_with_session("s", "user", "hello")
    assert caught.value.session_id == "s"
    assert caught.value.messages == (
        Message(role="user", content="hello"),
        Message(role="assistant", content="the reply"),
    )


async def test_a_failed_provider_raises_and_stores_nothing() -> None:
    async def broken(messages: Sequence[Message]) -> str:
        raise RuntimeError("model overloaded")

    store = SpyStore()
    pipe, _ = make_pipeline(store, provider=ScriptedProvider(broken))
    with pytest.raises(ProviderError, match="model overloaded"):
        await pipe.execute_with_session("s", "user", "hello")
    assert store.calls["append"] == 0 and await store.load("s") == []


@pytest.mark.parametrize(
    "reply",
    [Message(role="user", content="not a reply"), "text"],
    ids=["user message", "plain string"],
)
async def test_a_provider_answering_with_no_assistant_message_is_an_error(reply: Any) -> None:
    class Odd:
        async def complete(self, messages: Sequence[Message], **options: Any) -> Any:
            return reply

    pipe, store = make_pipeline(provider=Odd())
    with pytest.raises(ProviderError, match="not an assistant Message"):
        await pipe.execute_with_session("s", "user", "hello")
    assert await store.load("s") == []


@pytest.mark.parametrize(
    ("session_id", "role", "content", "error"),
    [
        ("", "user", "hi", InvalidSessionIdError),
        ("x" * 257, "user", "hi", InvalidSessionIdError),
        ("a\x00b", "user", "hi", InvalidSessionIdError),
        (None, "user", "hi", InvalidSessionIdError),
        ("s", "wizard", "hi", InvalidMessageError),
        ("s", "user", None, InvalidMessageError),
        ("s", "user", 42, InvalidMessageError),
        ("s", "tool", "result without a call id", InvalidMessageError),
    ],
)
async def test_bad_input_is_rejected_before_anything_is_loaded_or_stored(
    session_id: Any, role: Any, content: Any, error: type[Exception]
) -> None:
    store = SpyStore()
    provider = ScriptedProvider()
    pipe, _ = make_pipeline(store, provider=provider)
    with pytest.raises(error):
        await pipe.execute_with_session(session_id, role, content)
    assert store.calls == Counter() and provider.call_count == 0


async def test_execute_takes_a_ready_message_and_rejects_anything_else() -> None:
    pipe, store = make_pipeline()
    result = await pipe.execute("s", Message(role="user", content="My name is Bob", name="bob"))
    assert result.response.text == "Nice to meet you, Bob!"
    with pytest.raises(InvalidMessageError):
        await pipe.execute("s", "hello")  # type: ignore[arg-type]
    assert len(await store.load("s")) == 2


@pytest.mark.parametrize(
    "config",
    [
        {"max_messages": 0},
        {"max_messages": -5},
        {"ttl": 60},
        {"ttl": timedelta(0)},
        {"on_load_error": "ignore"},
        {"lock": "yes"},
        {"lazy": 1},
    ],
    ids=repr,
)
def test_bad_state_config_is_rejected(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        StateMiddlewareConfig(**config)


def test_bad_chains_are_rejected() -> None:
    with pytest.raises(ConfigurationError):
        Pipeline()
    with pytest.raises(ConfigurationError, match="not callable"):
        Pipeline(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="StateStore"):
        StateMiddleware(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="complete"):
        ProviderMiddleware(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="system"):
        ProviderMiddleware(ScriptedProvider(), system_prompt=Message(role="user", content="x"))


async def test_a_chain_without_a_provider_fails_and_stores_nothing() -> None:
    store = SpyStore()
    pipe = Pipeline(StateMiddleware(store))
    with pytest.raises(PipelineError, match="ProviderMiddleware"):
        await pipe.execute_with_session("s", "user", "hi")
    assert store.calls["append"] == 0


async def test_a_middleware_can_answer_without_calling_the_rest() -> None:
    provider = ScriptedProvider()
    store = InMemoryStateStore()
    pipe = Pipeline(StateMiddleware(store), Canned(), ProviderMiddleware(provider))
    assert (await pipe.execute_with_session("s", "user", "ping")).response.text == "pong"
    assert provider.call_count == 0
    assert [m.text for m in await store.load("s")] == ["ping", "pong"]
    assert repr(pipe) == "Pipeline(StateMiddleware, Canned, ProviderMiddleware)"


async def test_provider_options_merge_defaults_with_per_request_ones() -> None:
    received: list[dict[str, Any]] = []

    class Recorder:
        async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
            received.append(options)
            return Message(role="assistant", content="ok")

    pipe = Pipeline(ProviderMiddleware(Recorder(), options={"temperature": 0.2, "seed": 1}))
    await pipe.execute_with_session("s", "user", "hi", temperature=0.9)
    await pipe.execute_with_session("s", "user", "hi")
    assert received == [{"temperature": 0.9, "seed": 1}, {"temperature": 0.2, "seed": 1}]


async def test_every_error_is_a_chatstate_error() -> None:
    pipe, _ = make_pipeline()
    with pytest.raises(ChatStateError):
        await pipe.execute_with_session("", "user", "hi")
    with pytest.raises(ValueError):  # bad input is also a ValueError
        await pipe.execute_with_session("s", "nobody", "hi")


class Canned:
    """Answers "ping" itself, without the history; passes anything else on."""

    async def __call__(self, context: RequestContext, call_next: CallNext) -> None:
        if context.message.text == "ping":
            context.response = Message(role="assistant", content="pong")
            context.new_messages.append(context.response)
            return
        await call_next(context)


async def test_lazy_loading_loads_only_when_the_history_is_asked_for() -> None:
    store = SpyStore()
    pipe = Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(lazy=True)),
        Canned(),
        ProviderMiddleware(ScriptedProvider()),
    )
    await pipe.execute_with_session("s", "user", "My name is Alice")
    assert store.calls == {"load": 1, "append": 1}  # the provider asked for the history
    result = await pipe.execute_with_session("s", "user", "ping")
    assert result.response.text == "pong"
    assert store.calls == {"load": 1, "append": 2}  # no load, and the turn is stored
    assert "load" not in result.timings
    result = await pipe.execute_with_session("s", "user", "What's my name?")
    assert "Alice" in result.response.text  # the history, loaded when needed, holds every turn
    assert store.calls == {"load": 2, "append": 3}


async def test_a_lazy_load_happens_once_and_follows_the_load_error_policy() -> None:
    class AsksTwice:
        async def __call__(self, context: RequestContext, call_next: CallNext) -> None:
            first = await context.get_history()
            assert await context.get_history() is first
            await call_next(context)

    store = SpyStore()
    pipe = Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(lazy=True)),
        AsksTwice(),
        ProviderMiddleware(ScriptedProvider()),
    )
    await pipe.execute_with_session("s", "user", "hi")
    assert store.calls["load"] == 1
    store.fail_load = ConnectionError("down")
    result = await pipe.execute_with_session("s", "user", "hi again")  # continue: empty history
    assert result.messages == [Message(role="user", content="hi again")]
    strict = Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(lazy=True, on_load_error="raise")),
        ProviderMiddleware(ScriptedProvider()),
    )
    with pytest.raises(StateLoadError):
        await strict.execute_with_session("s", "user", "hi")
