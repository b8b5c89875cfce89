"""Token counting: the offline estimate, counters of a text function, and counts made once per
message and kept with its stored entry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis

from chatstate import (
    ConfigurationError,
    ImagePart,
    InMemoryStateStore,
    Message,
    Pipeline,
    ProviderMiddleware,
    RedisStateStore,
    ScriptedProvider,
    StateMiddleware,
    StateMiddlewareConfig,
    TextPart,
    ToolCall,
)
from chatstate.testing import RedisServer
from chatstate.tokens import ESTIMATE, TextTokenCounter, count_tokens, estimate_tokens

from .conftest import kinds


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("abcd", 1),
        ("abcde", 2),
        ("The quick brown fox jumps over the lazy dog.", 11),  # 44 chars
        ("日本語のテキスト", 10),  # 8 characters of 3 bytes: 1.25 a character
        ("Привет", 5),  # 6 characters of 2 bytes
        ("🙂", 2),
    ],
)
def test_the_estimate_is_about_four_ascii_characters_a_token(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_a_text_counter_counts_every_part_of_a_message() -> None:
    words = TextTokenCounter(lambda text: len(text.split()), name="words")
    assert words.count(Message(role="user", content="one two three")) == 4 + 3
    assert words.count(Message(role="user", content="a b", name="ann")) == 4 + 2 + 1 + 1
    parts = (
        TextPart(text="look at this"),
        ImagePart(url="https://example.com/a.png"),
        ImagePart(url="https://example.com/b.png", detail="low"),
    )
    assert words.count(Message(role="user", content=parts)) == 4 + 3 + 765 + 85
    call = ToolCall(id="c1", name="lookup", arguments={"q": "x y"})
    assert words.count(Message(role="assistant", tool_calls=(call,))) == 4 + 4 + 1 + 2
    assert (
        count_tokens(Message(role="user", content="abcd"))
        == ESTIMATE.count(Message(role="user", content="abcd"))
        == 4 + 1
    )


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: TextTokenCounter("no", name="x"), "count_text must be a function"),  # type: ignore[arg-type]
        (lambda: TextTokenCounter(len, name=""), "name must be a non-empty str"),
        (lambda: TextTokenCounter(len, name="x", per_image=-1), "per_image must be an int >= 0"),
    ],
)
def test_a_bad_counter_is_refused(make: Callable[[], Any], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        make()


async def test_a_counter_returning_a_non_count_fails_clearly() -> None:
    class Broken:
        name = "broken"

        def count(self, message: Message) -> Any:
            return 1.5

    pipe = Pipeline(
        StateMiddleware(
            InMemoryStateStore(), StateMiddlewareConfig(max_tokens=1000, token_counter=Broken())
        ),
        ProviderMiddleware(ScriptedProvider()),
    )
    with pytest.raises(ConfigurationError, match=r"Broken.count returned 1.5, not an int >= 0"):
        await pipe.execute_with_session("s", "user", "hi")


class _Counting:
    """The estimate, recording every message it is asked to count."""

    def __init__(self, name: str = "test/counting") -> None:
        self.name = name
        self.counted: list[Message] = []

    def count(self, message: Message) -> int:
        self.counted.append(message)
        return ESTIMATE.count(message)


@pytest.fixture(params=kinds("memory", "fakeredis", "redis"))
async def store_factory(
    request: pytest.FixtureRequest, key_prefix: str
) -> AsyncIterator[Callable[[], Any]]:
    """Makes stores on one backend: a second store shares the first one's data, not its caches."""
    if request.param == "memory":
        memory = InMemoryStateStore()
        yield lambda: memory
        return
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()

        def client() -> Any:
            return fakeredis.FakeAsyncRedis(server=server)
    else:
        url = request.getfixturevalue("redis_server").url

        def client() -> Any:
            return Redis.from_url(url)

    made: list[RedisStateStore] = []

    def make() -> RedisStateStore:
        made.append(RedisStateStore(client(), prefix=key_prefix, owns_client=True))
        return made[-1]

    yield make
    for store in made:
        await store.aclose()


def _pipeline(store: Any, counter: Any) -> Pipeline:
    config = StateMiddlewareConfig(max_messages=50, max_tokens=400, token_counter=counter)
    return Pipeline(StateMiddleware(store, config), ProviderMiddleware(ScriptedProvider()))


async def test_each_message_is_counted_once_and_its_count_is_stored_with_it(
    store_factory: Callable[[], Any],
) -> None:
    counter = _Counting()
    pipe = _pipeline(store_factory(), counter)
    for turn in range(10):
        await pipe.execute_with_session("s", "user", f"turn {turn}: my number is {turn}")
    # Ten turns loaded and windowed the history ten times: each message was counted once.
    assert len(counter.counted) == 20
    assert len({id(message) for message in counter.counted}) == 20

    # Another instance (no cache shared) reads the counts from the stored entries.
    again = _Counting()
    await _pipeline(store_factory(), again).execute_with_session("s", "user", "one more")
    assert [message.text for message in again.counted] == ["one more", "You said: one more"]

    # A counter of another name counts every message it windows, once.
    other = _Counting("test/another")
    other_pipe = _pipeline(store_factory(), other)
    await other_pipe.execute_with_session("s", "user", "first")
    first = len(other.counted)
    assert first > 2
    await other_pipe.execute_with_session("s", "user", "second")
    assert len(other.counted) == first + 2


async def test_counted_entries_are_version_2_and_others_stay_version_1(
    redis_server: RedisServer, key_prefix: str
) -> None:
    client = Redis.from_url(redis_server.url)
    async with RedisStateStore(client, prefix=key_prefix, owns_client=True) as store:
        plain = Pipeline(StateMiddleware(store), ProviderMiddleware(ScriptedProvider()))
        await plain.execute_with_session("plain", "user", "hello")
        await _pipeline(store, _Counting()).execute_with_session("counted", "user", "hello")
        assert {entry[0] for entry in await client.lrange(store.key("plain"), 0, -1)} == {1}
        assert {entry[0] for entry in await client.lrange(store.key("counted"), 0, -1)} == {2}
