"""Turn-aware windows: whatever cuts a history, what the provider gets never splits a tool call
from its results, and is the longest such suffix."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatstate import (
    ConfigurationError,
    InMemoryStateStore,
    Message,
    Pipeline,
    ProviderMiddleware,
    ScriptedProvider,
    StateMiddleware,
    StateMiddlewareConfig,
    ToolCall,
)
from chatstate.tokens import Tally
from chatstate.window import fit_window, is_valid_window, valid_window

from .conftest import examples


def _user(text: str) -> Message:
    return Message(role="user", content=text)


def _calls(*ids: str) -> Message:
    return Message(
        role="assistant", content=None, tool_calls=tuple(ToolCall(id=i, name="f") for i in ids)
    )


def _result(call_id: str) -> Message:
    return Message(role="tool", content=f"result {call_id}", tool_call_id=call_id)


def _reference_valid(messages: list[Message]) -> bool:
    """The rules, checked another way: walk with the set of calls still owed."""
    owed: set[str] = set()
    for message in messages:
        if message.role == "tool":
            if message.tool_call_id not in owed:
                return False
            owed.remove(message.tool_call_id)  # type: ignore[arg-type]
            continue
        if owed:  # something else came before every result was in
            return False
        owed = {call.id for call in message.tool_calls}
    return not owed


@st.composite
def conversations(draw: Any) -> list[Message]:
    messages: list[Message] = []
    for block in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["user", "assistant", "tools"]))
        if kind == "user":
            messages.append(_user(f"u{block}"))
        elif kind == "assistant":
            messages.append(Message(role="assistant", content=f"a{block}"))
        else:
            ids = [f"c{block}-{n}" for n in range(draw(st.integers(1, 3)))]  # parallel calls
            messages.append(_calls(*ids))
            messages.extend(_result(i) for i in draw(st.permutations(ids)))
    return messages


@settings(max_examples=examples(500))
@given(conversation=conversations(), data=st.data())
def test_the_window_is_the_longest_valid_suffix_of_any_cut(
    conversation: list[Message], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(conversation)))  # where a trim or a limit fell
    window = conversation[cut:]
    repaired = valid_window(window)
    assert _reference_valid(repaired) and is_valid_window(repaired)
    longest = next(s for s in range(len(window) + 1) if _reference_valid(window[s:]))
    assert repaired == window[longest:]


def test_a_cut_through_an_exchange_drops_its_orphans_and_keeps_the_rest() -> None:
    full = [_user("q"), _calls("a", "b"), _result("a"), _result("b"), _user("thanks")]
    assert valid_window(full[2:]) == [_user("thanks")]  # the results lost their call
    assert valid_window(full) == full
    assert valid_window([_user("q"), _calls("a")]) == [_user("q")]  # a call without its result
    # ... unless the turn's own messages are its results:
    assert valid_window([_user("q"), _calls("a")], [_result("a")]) == [_user("q"), _calls("a")]
    both = [_result("a"), _result("b")]
    assert valid_window([_user("q"), _calls("a", "b")], both) == [_user("q"), _calls("a", "b")]
    assert valid_window([_user("q"), _calls("a", "b")], both[:1]) == [_user("q")]
    # ... or a result stored before them, with the others in the turn:
    history = [_user("q"), _calls("a", "b"), _result("a")]
    assert valid_window(history, both[1:]) == history


def test_an_orphan_anywhere_is_dropped_and_the_history_around_it_kept() -> None:
    before = [_user("My name is Alice"), Message(role="assistant", content="Hello, Alice.")]
    after = [_user("hi"), Message(role="assistant", content="hello")]
    for orphans in (
        [_calls("x")],  # a call that never got its result
        [_calls("x", "y"), _result("y")],  # one of two parallel calls answered
        [_result("z")],  # a result whose call was never stored
        [_calls("x"), _user("?"), _result("x")],  # the result came too late
        [Message(role="assistant", content="thinking", tool_calls=(ToolCall(id="x", name="f"),))],
    ):
        kept = [message for message in orphans if message.role == "user"]
        assert valid_window([*before, *orphans, *after]) == [*before, *kept, *after]
    exchange = [_calls("a", "b"), _result("b"), _result("a")]
    noisy = [*exchange[:2], _result("z"), _result("a"), _result("b")]  # a stray and a repeat
    assert valid_window([*before, *noisy, *after]) == [*before, *exchange[:2], _result("a"), *after]


async def test_the_provider_never_gets_a_split_exchange() -> None:
    store = InMemoryStateStore()
    seen: list[list[Message]] = []

    def reply(messages: Any) -> str:
        seen.append(list(messages))
        return "ok"

    pipe = Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(max_messages=3)),
        ProviderMiddleware(ScriptedProvider(reply)),
    )
    # What a trim left: the results of a call that is gone.
    await store.save("s", [_calls("a", "b"), _result("a"), _result("b"), _user("next")])
    await pipe.execute_with_session("s", "user", "hello")
    assert seen[-1] == [_user("next"), _user("hello")]
    assert is_valid_window(seen[-1])


# --- histories with orphans ----------------------------------------------------------------------


_KINDS = ["user", "assistant", "tools", "unanswered", "partial", "stray", "late"]


@st.composite
def broken_conversations(draw: Any) -> list[tuple[Message, bool]]:
    """Histories with orphans anywhere, each message with whether it is valid: part of no
    exchange, or of a whole one. Ids are unique per block, so no orphan answers another's call."""
    flagged: list[tuple[Message, bool]] = []
    for block in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(_KINDS))
        ids = [f"c{block}-{n}" for n in range(draw(st.integers(1, 3)))]
        if kind == "user":
            flagged.append((_user(f"u{block}"), True))
        elif kind == "assistant":
            flagged.append((Message(role="assistant", content=f"a{block}"), True))
        elif kind == "tools":
            flagged.append((_calls(*ids), True))
            flagged.extend((_result(i), True) for i in draw(st.permutations(ids)))
        elif kind == "unanswered":  # the app stopped between the call and its results
            flagged.append((_calls(*ids), False))
        elif kind == "partial":  # some of the parallel calls answered
            answered = draw(st.lists(st.sampled_from(ids), unique=True, max_size=len(ids) - 1))
            flagged.append((_calls(*ids, f"c{block}-extra"), False))
            flagged.extend((_result(i), False) for i in answered)
        elif kind == "stray":  # a result whose call was never stored
            flagged.append((_result(f"s{block}"), False))
        else:  # a message came between the call and its result
            flagged.extend([(_calls(ids[0]), False), (_user(f"late{block}"), True)])
            flagged.append((_result(ids[0]), False))
    cut = draw(st.integers(0, len(flagged)))  # where a trim fell: results may lose their call
    kept = flagged[cut:]
    calls = {call.id for message, _ in kept for call in message.tool_calls}
    # A result of a whole exchange whose call the cut took is an orphan now.
    return [
        (message, valid and (message.role != "tool" or message.tool_call_id in calls))
        for message, valid in kept
    ]


@settings(max_examples=800)
@given(flagged=broken_conversations())
def test_orphans_anywhere_are_dropped_and_every_valid_message_is_sent(
    flagged: list[tuple[Message, bool]],
) -> None:
    history = [message for message, _ in flagged]
    expected = [message for message, valid in flagged if valid]
    window = valid_window(history)
    assert _reference_valid(window) and is_valid_window(window)
    assert window == expected


@settings(max_examples=800)
@given(flagged=broken_conversations(), data=st.data())
def test_a_budget_window_with_orphans_keeps_every_valid_message_that_fits(
    flagged: list[tuple[Message, bool]], data: st.DataObject
) -> None:
    history = [message for message, _ in flagged]
    valid = [message for message, ok in flagged if ok]
    budget = data.draw(st.integers(0, _tokens(valid) + 5))
    tally = Tally(_Lengths())
    window = fit_window(history, (), budget, tally)
    assert _reference_valid(window) and _tokens(window) <= budget
    longest = next(  # the longest suffix of the valid messages that is whole and fits
        s
        for s in range(len(valid) + 1)
        if _reference_valid(valid[s:]) and _tokens(valid[s:]) <= budget
    )
    assert window == valid[longest:]


async def test_a_call_that_never_got_its_result_does_not_make_the_model_forget() -> None:
    # The report: "My name is Alice", a tool call whose result never came (the app
    # crashed before the tool ran), then "What's my name?": the model was sent that question alone.
    store = InMemoryStateStore()
    weather = Message(
        role="assistant", content=None, tool_calls=(ToolCall(id="w1", name="weather"),)
    )
    provider = ScriptedProvider()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    await pipe.execute_with_session("s", "user", "My name is Alice")
    await store.append("s", [_user("What's the weather?"), weather])  # ... and nothing more
    for _ in range(3):  # on every later turn, not only the next
        result = await pipe.execute_with_session("s", "user", "What's my name?")
        assert result.response.text == "Your name is Alice."
        assert weather not in result.messages and is_valid_window(result.messages)
    assert len(await store.load("s")) == 10
    assert (await store.load("s"))[3] == weather  # the store keeps what it was given


# --- token budgets -------------------------------------------------------------------------------


class _Lengths:
    """A counter by text length, which records what it counts."""

    name = "test/lengths"

    def __init__(self) -> None:
        self.counted: list[Message] = []

    def count(self, message: Message) -> int:
        self.counted.append(message)
        return 1 + len(message.text) + sum(len(call.id) for call in message.tool_calls)


def _tokens(messages: list[Message]) -> int:
    return sum(_Lengths().count(message) for message in messages)


@st.composite
def wordy_conversations(draw: Any) -> list[Message]:
    """Conversations whose messages differ in length, so a budget can fall anywhere."""
    messages = draw(conversations())
    return [
        message.model_copy(update={"content": message.content + "x" * draw(st.integers(0, 30))})
        if isinstance(message.content, str)
        else message
        for message in messages
    ]


@settings(max_examples=examples(500))
@given(conversation=wordy_conversations(), data=st.data())
def test_the_budget_window_is_the_longest_valid_suffix_that_fits(
    conversation: list[Message], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(conversation)))
    window = conversation[cut:]
    budget = data.draw(st.integers(0, _tokens(window) + 5))
    fitted = fit_window(window, (), budget, Tally(_Lengths()))
    assert _reference_valid(fitted) and _tokens(fitted) <= budget
    longest = next(
        s
        for s in range(len(window) + 1)
        if _reference_valid(window[s:]) and _tokens(window[s:]) <= budget
    )
    assert fitted == window[longest:]


def test_the_turns_own_tool_result_keeps_its_call_in_a_budget_window() -> None:
    history = [_user("question"), _calls("a")]
    tally = Tally(_Lengths())
    assert fit_window(history, [_result("a")], 100, tally) == history
    # The call alone does not fit: then nothing of the history does (the result would be orphaned).
    assert fit_window(history, [_result("a")], 1, tally) == []


@settings(max_examples=examples(150), deadline=None)
@given(conversation=wordy_conversations(), data=st.data())
async def test_the_provider_gets_the_longest_valid_suffix_within_every_bound(
    conversation: list[Message], data: st.DataObject
) -> None:
    max_messages = data.draw(st.integers(1, 20))
    system = Message(role="system", content="be brief")
    pinned = [
        Message(role="user", content="example question"),
        Message(role="assistant", content="example answer"),
    ]
    fixed = [system, *pinned]
    new = _user("and now?")
    least = _tokens([*fixed, new])
    reply = data.draw(st.integers(0, 10))
    max_tokens = data.draw(st.integers(least + reply + 1, least + reply + 200))
    store = InMemoryStateStore()
    await store.save("s", conversation)
    provider = ScriptedProvider(lambda messages: "ok")
    config = StateMiddlewareConfig(
        max_messages=max_messages,
        max_tokens=max_tokens,
        reply_tokens=reply,
        token_counter=_Lengths(),
    )
    pipe = Pipeline(
        StateMiddleware(store, config),
        ProviderMiddleware(provider, system_prompt=system, pinned=pinned),
    )
    await pipe.execute("s", new)
    sent = provider.calls[-1]
    assert sent[: len(fixed)] == fixed and sent[-1] == new
    window = sent[len(fixed) : -1]
    loaded = conversation[-max_messages:]
    budget = max_tokens - reply - least
    longest = next(
        s
        for s in range(len(loaded) + 1)
        if _reference_valid(loaded[s:]) and _tokens(loaded[s:]) <= budget
    )
    assert window == loaded[longest:]
    assert _reference_valid(sent[len(fixed) :])


def test_a_budget_is_checked_when_it_is_configured() -> None:
    with pytest.raises(ConfigurationError, match=r"reply_tokens .* less than max_tokens"):
        StateMiddlewareConfig(max_tokens=100, reply_tokens=100)
    with pytest.raises(ConfigurationError, match="reply_tokens needs max_tokens"):
        StateMiddlewareConfig(reply_tokens=10)
    with pytest.raises(ConfigurationError, match="max_tokens must be an int >= 1"):
        StateMiddlewareConfig(max_tokens=0)
    with pytest.raises(ConfigurationError, match="count"):
        StateMiddlewareConfig(max_tokens=100, token_counter=object())  # type: ignore[arg-type]
    assert StateMiddlewareConfig(max_tokens=100_000).budget().reply_tokens == 4096  # type: ignore[union-attr]
    assert StateMiddlewareConfig(max_tokens=1000).budget().reply_tokens == 250  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="pinned"):
        ProviderMiddleware(ScriptedProvider(), pinned=["not a message"])  # type: ignore[list-item]
