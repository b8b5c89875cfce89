"""Turn-aware windows: whatever cuts a history, what the provider gets never splits a tool call
from its results, and is the longest such suffix."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chatstate import (
    InMemoryStateStore,
    Message,
    Pipeline,
    ProviderMiddleware,
    ScriptedProvider,
    StateMiddleware,
    StateMiddlewareConfig,
    ToolCall,
)
from chatstate.window import is_valid_window, valid_window


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


@settings(max_examples=500)
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
