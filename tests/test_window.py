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
    assert valid_window([_user("q"), _calls("a")]) == []  # a call without its result
    # ... unless the turn's own message is that result:
    assert valid_window([_user("q"), _calls("a")], [_result("a")]) == [_user("q"), _calls("a")]


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
