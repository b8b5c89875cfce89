"""Session-id patterns and the conversations of a user, on every built-in store."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import RedisCluster

from chatstate import (
    ConfigurationError,
    InMemoryStateStore,
    InvalidInputError,
    InvalidSessionIdError,
    Message,
    Pipeline,
    ProviderMiddleware,
    RedisStateStore,
    ScriptedProvider,
    SessionNotFoundError,
    StateMiddleware,
    StateMiddlewareConfig,
    StateStore,
    StoreError,
)
from chatstate.pipeline import CallNext, RequestContext
from chatstate.sessions import Conversations, temporary_session
from chatstate.testing import FakeClock
from chatstate.testing.redis_server import LocalRedisCluster
from chatstate.transfer import fork_session

from .conftest import kinds, store_of_kind
from .redis_wire import WRITE_IDS_FIELDS


class Clock:
    """Wall-clock seconds that the test moves (starting from now: Redis expires by its own)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=kinds("memory", "sqlite", "redis", "redis-cluster", "postgres"))
async def store(
    request: pytest.FixtureRequest, key_prefix: str, tmp_path: Path
) -> AsyncIterator[StateStore]:
    if request.param != "redis-cluster":
        async with store_of_kind(request.param, request, tmp_path) as made:
            yield made
        return
    cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
    client = RedisCluster.from_url(cluster.url)
    async with RedisStateStore(client, prefix=key_prefix) as redis_store:
        yield redis_store
    await client.aclose()


def test_the_three_id_patterns() -> None:
    assert Conversations.user_session("42") == "user-42"
    conversations = Conversations(InMemoryStateStore())
    assert conversations.session_id("42", "trip") == "user-42-conv-trip"
    temporary = {temporary_session() for _ in range(1000)}
    assert len(temporary) == 1000 and all(len(t) >= 4 + 22 for t in temporary)
    for bad in ["", "a-conv-b", "tab\there"]:
        with pytest.raises(InvalidSessionIdError):
            conversations.session_id(bad, "c")
    with pytest.raises(InvalidSessionIdError, match="too long"):
        conversations.session_id("u" * 200, "c" * 100)
    with pytest.raises(ConfigurationError, match="cannot index"):
        Conversations(object())


async def test_a_user_s_conversations_list_most_recent_first_a_page_at_a_time(
    store: StateStore,
) -> None:
    clock = Clock()
    conversations = Conversations(store, ttl=timedelta(hours=1), clock=clock)
    for name in ["a", "b", "c", "d", "e"]:
        clock.now += 1
        session_id = await conversations.record("42", name)
        await store.append(session_id, [Message(role="user", content=name)])
    clock.now += 1
    await conversations.record("42", "b")  # b is active again: first now
    pages = [
        [c.conversation_id for c in await conversations.list("42", limit=2, offset=offset)]
        for offset in (0, 2, 4, 6)
    ]
    assert pages == [["b", "e"], ["d", "c"], ["a"], []]
    first = (await conversations.list("42", limit=1))[0]
    assert first.session_id == "user-42-conv-b"
    assert abs(first.last_active.timestamp() - clock.now) < 0.01
    assert await conversations.list("someone else") == []
    with pytest.raises(ConfigurationError):
        await conversations.list("42", limit=0)


async def test_no_index_entry_outlives_its_conversation(store: StateStore) -> None:
    clock = Clock()
    short = Conversations(store, ttl=timedelta(seconds=30), clock=clock)
    await short.record("7", "old")
    clock.now += 20
    await short.record("7", "new")
    clock.now += 15  # "old" is past its 30 s, "new" is not
    assert [c.conversation_id for c in await short.list("7")] == ["new"]
    if isinstance(store, RedisStateStore):  # the index itself expires with its last entry
        client = store.client
        for kind in ("conversations", "deadlines"):
            ttl_ms = await client.pttl(store.key("user-7", kind))
            assert 49_000 < ttl_ms <= 50_000  # "new": recorded 20 s on, for 30 s
        await Conversations(store, clock=clock).record("7", "forever")  # no ttl: kept
        assert await client.pttl(store.key("user-7", "conversations")) == -1


async def test_erasing_a_user_deletes_every_conversation_and_the_index(
    store: StateStore,
) -> None:
    conversations = Conversations(store, ttl=timedelta(hours=1))
    await store.append(Conversations.user_session("9"), [Message(role="user", content="me")])
    for name in ["x", "y", "z"]:
        session_id = await conversations.record("9", name)
        await store.append(session_id, [Message(role="user", content=name)])
    await store.append("user-10-conv-x", [Message(role="user", content="another user")])
    erased = await conversations.erase("9")
    assert sorted(erased.sessions) == ["user-9", "user-9-conv-x", "user-9-conv-y", "user-9-conv-z"]
    for session_id in ["user-9", "user-9-conv-x", "user-9-conv-y", "user-9-conv-z"]:
        assert await store.load(session_id) == []
    assert await conversations.list("9") == []
    assert len(await conversations.erase("9")) == 0  # again: nothing left, no error
    assert await store.load("user-10-conv-x") != []  # nobody else's
    if isinstance(store, RedisStateStore):
        left = [key async for key in store.client.scan_iter(match=f"{store.prefix}:{{user-9*")]
        # Nothing but the write ids of the deletes, expiring in 10 minutes.
        assert all(key.endswith(b":meta") for key in left)
        for key in left:
            assert set(await store.client.hkeys(key)) <= WRITE_IDS_FIELDS
            assert 0 < await store.client.pttl(key) <= 600_000


async def test_a_failed_delete_of_an_erase_raises_the_store_s_error_and_a_retry_finishes() -> None:
    class Failing(InMemoryStateStore):
        failing: str | None = "user-9-conv-y"

        async def delete(self, session_id: str) -> bool:
            if session_id == self.failing:
                raise StoreError("the store is down")
            return await super().delete(session_id)

    store = Failing()
    conversations = Conversations(store)
    for name in ["x", "y", "z"]:
        await store.append(
            await conversations.record("9", name), [Message(role="user", content=name)]
        )
    with pytest.raises(StoreError, match="the store is down"):  # not an ExceptionGroup
        await conversations.erase("9")
    store.failing = None
    # The index went last: nothing was lost (x and z went at the first try).
    assert (await conversations.erase("9")).sessions == ["user-9-conv-y"]
    assert [await store.load(f"user-9-conv-{name}") for name in "xyz"] == [[], [], []]


async def test_a_turn_that_lands_during_an_erase_is_erased_too() -> None:
    # A turn of the user's conversation writes it again just after the erase deleted it, and
    # registers it before the erase drops the index: the drop must not leave it unlisted.
    class Racing(InMemoryStateStore):
        turn: Any = None

        async def delete(self, session_id: str) -> bool:
            deleted = await super().delete(session_id)
            if self.turn is not None and session_id == "user-9-conv-x":
                turn, self.turn = self.turn, None
                await turn()
            return deleted

    store = Racing()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(ScriptedProvider()))
    await pipe.execute_with_session("user-9-conv-x", "user", "hello")
    await pipe.execute_with_session("user-9-conv-y", "user", "hello")

    async def turn() -> None:
        await pipe.execute_with_session("user-9-conv-x", "user", "one more")

    store.turn = turn
    conversations = Conversations(store)
    erased = await conversations.erase("9")
    assert sorted(erased.sessions) == ["user-9-conv-x", "user-9-conv-y"]  # each once
    assert await store.load("user-9-conv-x") == []


# -- pages by cursor, metadata, registration, forks, complete erasure -----------------------------


async def test_pages_by_cursor_walk_every_session_once_ties_included(store: StateStore) -> None:
    clock = Clock()
    conversations = Conversations(store, ttl=timedelta(hours=1), clock=clock)
    names = ["a", "b", "c", "d", "e", "f", "g"]
    for index, name in enumerate(names):
        if index % 3 == 0:
            clock.now += 1  # three at a time share their last activity: ties for the cursor
        await store.append(
            await conversations.record("42", name), [Message(role="user", content=name)]
        )
    seen: list[str | None] = []
    cursor = None
    for _ in range(10):
        page = await conversations.page("42", limit=2, cursor=cursor)
        seen += [c.conversation_id for c in page.conversations]
        cursor = page.next_cursor
        if cursor is None:
            break
    # Newest first; within one instant, by id, descending.
    assert seen == ["g", "f", "e", "d", "c", "b", "a"]
    one = await conversations.page("42", limit=7)
    assert [c.conversation_id for c in one.conversations] == seen and one.next_cursor is None


async def test_a_session_active_again_moves_to_the_top_and_is_not_repeated(
    store: StateStore,
) -> None:
    clock = Clock()
    conversations = Conversations(store, ttl=timedelta(hours=1), clock=clock)
    for name in ["a", "b", "c", "d"]:
        clock.now += 1
        await store.append(
            await conversations.record("42", name), [Message(role="user", content=name)]
        )
    first = await conversations.page("42", limit=2)
    assert [c.conversation_id for c in first.conversations] == ["d", "c"]
    clock.now += 1
    await conversations.record("42", "b")  # active again while the user pages
    second = await conversations.page("42", limit=2, cursor=first.next_cursor)
    assert [c.conversation_id for c in second.conversations] == ["a"]
    assert second.next_cursor is None
    top = await conversations.page("42", limit=1)
    assert [c.conversation_id for c in top.conversations] == ["b"]


async def test_pages_carry_metadata_and_leave_out_sessions_that_are_gone(
    store: StateStore,
) -> None:
    conversations = Conversations(store, ttl=timedelta(hours=1))
    trip = await conversations.record("42", "trip")
    await store.append(trip, [Message(role="user", content="hi")], metadata={"title": "Trip"})  # type: ignore[call-arg]
    await conversations.record("42", "never-written")
    page = await conversations.page("42")
    (only,) = page.conversations
    assert (only.session_id, only.title, only.metadata) == (trip, "Trip", {"title": "Trip"})
    assert only.created_at is not None and only.updated_at is not None
    # By offset, as before: every indexed conversation, written or not.
    listed = await conversations.list("42")
    assert sorted(c.conversation_id or "" for c in listed) == ["never-written", "trip"]


async def test_a_bad_cursor_or_limit_is_refused(store: StateStore) -> None:
    conversations = Conversations(store)
    for cursor in ["", "not base64!", "bm90IGpzb24", "WzEsIDJd"]:  # the last: [1, 2]
        with pytest.raises(InvalidInputError, match="cursor"):
            await conversations.page("42", cursor=cursor)
    for limit in [0, 1001, 2.0]:
        with pytest.raises(ConfigurationError):
            await conversations.page("42", limit=limit)  # type: ignore[arg-type]


async def test_a_forged_cursor_is_refused_before_the_store_sees_it(store: StateStore) -> None:
    # A cursor comes back from a client: a time that no backend can convert (NaN, inf, 1e308:
    # ValueError, OverflowError from Redis's ms), or a member no store can take (a surrogate:
    # UnicodeEncodeError; NUL: PostgreSQL's error, reported as the store failing).
    conversations = Conversations(store, ttl=timedelta(hours=1))
    await store.append(await conversations.record("42", "x"), [Message(role="user", content="x")])
    forged = ['[NaN, "x"]', '[Infinity, "x"]', '[1e308, "x"]', '[-1e308, "x"]', '[1, "a\\u0000b"]',
              '[1, "\\ud800"]', '[1, ""]', '[true, "x"]']  # fmt: skip
    for raw in forged:
        cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        with pytest.raises(InvalidInputError, match="cursor"):
            await conversations.page("42", cursor=cursor)
    page = await conversations.page("42", limit=1, cursor=_a_cursor(time.time() + 60, "x"))
    assert [c.conversation_id for c in page.conversations] == ["x"]


def _a_cursor(at: float, member: str) -> str:
    raw = json.dumps([at, member]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_the_middleware_registers_each_turn_s_conversation(store: StateStore) -> None:
    ttl = timedelta(hours=1)
    pipe = Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(ttl=ttl)),
        ProviderMiddleware(ScriptedProvider()),
    )
    conversations = Conversations(store, ttl=ttl)
    await pipe.execute_with_session("user-5-conv-a", "user", "first")
    await pipe.execute_with_session("user-5-conv-b", "user", "second")
    await pipe.execute_with_session("user-5", "user", "the per-user history")
    await pipe.execute_with_session("plain", "user", "nobody's")
    page = await conversations.page("5")
    assert [c.conversation_id for c in page.conversations] == ["b", "a"]
    await pipe.execute_with_session("user-5-conv-a", "user", "again")
    assert [c.conversation_id for c in (await conversations.page("5")).conversations] == ["a", "b"]
    quiet = Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(index_conversations=False)),
        ProviderMiddleware(ScriptedProvider()),
    )
    await quiet.execute_with_session("user-6-conv-a", "user", "unlisted")
    assert (await conversations.page("6")).conversations == []


async def test_forks_and_registered_sessions_are_listed_and_erased(store: StateStore) -> None:
    conversations = Conversations(store, ttl=timedelta(hours=1))
    source = await conversations.record("5", "a")
    await store.append(source, [Message(role="user", content="hi")])
    await fork_session(store, source, "draft-of-a")  # registered under user 5 by its source
    await fork_session(store, "draft-of-a", "user-5-conv-copy")  # by its own id
    visitor = temporary_session()
    await store.append(visitor, [Message(role="user", content="before sign-in")], ttl=600)
    await conversations.register("5", visitor)
    await store.append("user-5-conv-hidden", [Message(role="user", content="never registered")])
    await store.append("user-50-conv-a", [Message(role="user", content="another user")])
    listed = await conversations.page("5")
    assert {c.session_id for c in listed.conversations} == {
        source, "draft-of-a", "user-5-conv-copy", visitor,
    }  # fmt: skip
    by_id = {c.session_id: c.conversation_id for c in listed.conversations}
    assert (by_id["draft-of-a"], by_id[visitor], by_id["user-5-conv-copy"]) == (None, None, "copy")
    assert set(await conversations.session_ids("5")) == {*by_id, "user-5"}
    erased = await conversations.erase("5")
    assert sorted(erased.sessions) == sorted(by_id)
    assert await store.load("user-5-conv-hidden") != []  # not registered: a scan finds it
    assert (await conversations.erase("5", scan=True)).sessions == ["user-5-conv-hidden"]
    for session_id in [*by_id, "user-5-conv-hidden"]:
        assert await store.load(session_id) == []
    assert await store.load("user-50-conv-a") != []  # another user's: left alone


async def test_register_refuses_what_is_not_the_user_s(store: StateStore) -> None:
    conversations = Conversations(store)
    with pytest.raises(InvalidInputError, match="another user"):
        await conversations.register("5", "user-6-conv-a")
    with pytest.raises(InvalidInputError, match="own session"):
        await conversations.register("5", "user-5")
    with pytest.raises(InvalidSessionIdError):
        await conversations.register("5", "bad\nid")


async def test_a_failed_registration_is_counted_and_the_turn_stands() -> None:
    class IndexDown(InMemoryStateStore):
        async def index_conversation(self, *args: Any, **kwargs: Any) -> None:
            raise StoreError("the index is down")

    store = IndexDown()
    state = StateMiddleware(store)
    pipe = Pipeline(state, ProviderMiddleware(ScriptedProvider()))
    await pipe.execute_with_session("user-5-conv-a", "user", "hello")
    assert state.index_errors == 1
    assert len(await store.load("user-5-conv-a")) == 2


async def test_a_middleware_s_metadata_is_stored_with_the_turn(store: StateStore) -> None:
    async def titles(context: RequestContext, call_next: CallNext) -> None:
        await call_next(context)
        if not context.history:  # the conversation's first turn
            context.metadata = {"title": context.message.text[:20]}

    pipe = Pipeline(StateMiddleware(store), titles, ProviderMiddleware(ScriptedProvider()))
    await pipe.execute_with_session("s", "user", "Plan a trip to Lisbon in May")
    await pipe.execute_with_session("s", "user", "And Porto?")
    messages, info = await store.load_with_metadata("s")  # type: ignore[attr-defined]
    assert len(messages) == 4 and info.title == "Plan a trip to Lisbo"


async def test_forks_of_any_of_a_user_s_sessions_are_erased_with_them() -> None:
    store = InMemoryStateStore()
    conversations = Conversations(store)
    source = await conversations.record("5", "a")
    await store.append(source, [Message(role="user", content="hi")])
    visitor = temporary_session()
    await store.append(visitor, [Message(role="user", content="before sign-in")])
    await conversations.register("5", visitor)
    await fork_session(store, source, "draft")  # registered: its source is a conversation
    await conversations.fork("5", "draft", "draft-2")  # a fork of a fork
    await conversations.fork("5", visitor, "visitor-copy")  # a fork of a temporary session
    with pytest.raises(InvalidInputError, match="another user"):
        await conversations.fork("5", source, "user-6-conv-x")
    assert await store.load("user-6-conv-x") == []  # refused before anything was written
    erased = await conversations.erase("5")
    assert sorted(erased.sessions) == sorted([source, visitor, "draft", "draft-2", "visitor-copy"])


async def test_a_session_registered_by_its_id_stays_listed_while_its_turns_keep_it_alive() -> None:
    clock = FakeClock()
    store = InMemoryStateStore(clock=clock)
    wall = Clock()
    conversations = Conversations(store, clock=wall)
    await store.append("tmp-x", [Message(role="user", content="hi")], ttl=100)
    await conversations.register("5", "tmp-x")
    for _ in range(3):  # 270 s: well past the 100 s the session had when it was registered
        clock.advance(90)
        wall.now += 90
        await store.append("tmp-x", [Message(role="user", content="still here")], ttl=100)
    listed = await conversations.page("5")
    assert [c.session_id for c in listed.conversations] == ["tmp-x"]
    assert (await conversations.erase("5")).sessions == ["tmp-x"]


async def test_on_a_sliding_expiry_the_middleware_registers_for_as_long_as_loads_go_on() -> None:
    deadlines: list[float | None] = []

    class Recording(InMemoryStateStore):
        async def index_conversation(self, *args: Any, ttl: float | None, **kwargs: Any) -> None:
            deadlines.append(ttl)
            await super().index_conversation(*args, ttl=ttl, **kwargs)

    for store in [Recording(), Recording(sliding_ttl=timedelta(hours=1))]:
        config = StateMiddlewareConfig(ttl=timedelta(hours=1))
        pipe = Pipeline(StateMiddleware(store, config), ProviderMiddleware(ScriptedProvider()))
        await pipe.execute_with_session("user-5-conv-a", "user", "hello")
    assert deadlines == [3600.0, None]


async def test_register_refuses_another_user_s_own_session() -> None:
    conversations = Conversations(InMemoryStateStore())
    with pytest.raises(InvalidInputError, match="another user's own session"):
        await conversations.register("5", "user-6")


async def test_metadata_without_messages_needs_a_session() -> None:
    store = InMemoryStateStore()
    with pytest.raises(SessionNotFoundError):
        await store.append("nobody", [], metadata={"title": "lost"})
    await store.append("s", [Message(role="user", content="hi")])
    assert await store.append("s", [], metadata={"title": "kept"}) == 1
    assert (await store.metadata("s")).metadata == {"title": "kept"}  # type: ignore[union-attr]
