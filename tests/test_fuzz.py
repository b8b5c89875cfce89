"""Fuzzing (hypothesis) every store with any valid message and any valid session id: what goes in
comes out equal, and no session id reaches another session's history."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatstate import ImagePart, Message, TextPart, ToolCall

from .conftest import kinds
from .test_stateful import KINDS, server_url

T = TypeVar("T")

# Every character a session id may hold: no control characters (C0, DEL, C1), no surrogates.
session_ids = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=256
) | st.sampled_from(["*", "?", "[a-z]", "{", "}", "}{", "%7B", "a:b", "chatstate:{x}:messages"])

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)  # fmt: skip

_parts = st.lists(
    st.builds(TextPart, text=st.text())
    | st.builds(ImagePart, url=st.text(min_size=1), detail=st.sampled_from([None, "low", "high"])),
    min_size=1,
    max_size=3,
)

_plain = st.builds(
    Message,
    role=st.sampled_from(["system", "user", "assistant"]),
    content=st.text() | _parts,
    name=st.none() | st.text(min_size=1, max_size=20),
    metadata=st.dictionaries(st.text(max_size=8), _json, max_size=3),
)
_call_ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
_tool_call = st.builds(
    ToolCall,
    id=_call_ids,
    name=st.text(min_size=1, max_size=12),
    arguments=st.dictionaries(st.text(max_size=5), _json, max_size=3),
)
_calling = st.builds(
    Message,
    role=st.just("assistant"),
    content=st.none() | st.text(),
    tool_calls=st.lists(_tool_call, min_size=1, max_size=3, unique_by=lambda call: call.id),
)
_result = st.builds(Message, role=st.just("tool"), content=st.text(), tool_call_id=_call_ids)
messages = st.lists(_plain | _calling | _result, max_size=6)


@pytest.mark.slow  # hypothesis: hundreds of examples per store
@pytest.mark.parametrize("kind", kinds(*KINDS))
def test_anything_valid_round_trips_on_every_store(
    kind: str, request: pytest.FixtureRequest
) -> None:
    make, server, examples = KINDS[kind]
    url = server_url(request, server)
    loop = asyncio.new_event_loop()

    def run(awaitable: Awaitable[T]) -> T:
        return loop.run_until_complete(awaitable)  # type: ignore[arg-type]

    backend = run(make(url))
    store = backend.store
    sentinel = [Message(role="user", content="another session's history")]
    run(store.save("sentinel", sentinel))

    @settings(
        max_examples=examples * 2,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(session_id=session_ids, history=messages, more=messages)
    def check(session_id: str, history: list[Message], more: list[Message]) -> None:
        if session_id == "sentinel":
            return
        run(store.save(session_id, history))
        assert run(store.load(session_id)) == history
        length: Any = run(store.append(session_id, more, max_messages=-1))
        assert length == len(history) + len(more)
        assert run(store.load(session_id)) == history + more
        assert run(store.load(session_id, limit=2)) == (history + more)[-2:]
        assert run(store.delete(session_id)) is bool(history or more)
        assert run(store.load("sentinel")) == sentinel

    try:
        check()
    finally:
        run(backend.close())
        loop.close()
