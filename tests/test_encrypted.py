"""Encryption at rest: round trips, nothing readable in the store, tampering, rotation, and the
optional protocols through the wrapper (the conformance suite over memory and a real Redis)."""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from chatstate import (
    ConfigurationError,
    InMemoryStateStore,
    InvalidMessageError,
    Message,
    Pipeline,
    ProviderMiddleware,
    RedisStateStore,
    ScriptedProvider,
    StateMiddleware,
    StateSaveError,
    StateStore,
)
from chatstate.errors import DecryptionError, UnknownKeyError
from chatstate.messages import ImagePart, TextPart, ToolCall, cached_token_count
from chatstate.stores._codec import decode_entry
from chatstate.stores.base import (
    SessionLeases,
    SessionSnapshot,
    SessionSummaries,
    SessionTransfer,
    VersionedStore,
    check_snapshot,
)
from chatstate.stores.cached import CachedStore
from chatstate.stores.encrypted import PREFIX, EncryptedStore
from chatstate.stores.sqlite import SQLiteStateStore
from chatstate.testing.conformance import sample_conversation
from chatstate.testing.redis_server import RedisServer
from chatstate.tokens import ESTIMATE, count_tokens, fingerprint

from .conftest import kinds
from .plain_store import PlainStore

KEY_A = secrets.token_bytes(32)
KEY_B = secrets.token_bytes(32)

# Text no ciphertext may contain: each is long enough that its base64 has a long stable core.
SECRET_TEXT = "the launch code is TANGERINE-4417-OSPREY"
SECRET_NAME = "agent_bartholomew_quill"
SECRET_TOOL = "transfer_funds_to_cayman"
SECRET_ARGUMENT = "account-NL91ABNA0417164300"
SECRET_METADATA = "customer-ssn-078-05-1120-xyz"
SECRET_IMAGE = "https://example.com/private/xray-of-patient-7731.png"
SECRET_SUMMARY = "summary mentions the diagnosis HYPOTHYROIDISM-SEVERE"
DISTINCTIVE = [
    SECRET_TEXT,
    SECRET_NAME,
    SECRET_TOOL,
    SECRET_ARGUMENT,
    SECRET_METADATA,
    SECRET_IMAGE,
    SECRET_SUMMARY,
]


def _user(text: str) -> Message:
    return Message(role="user", content=text)


def _secret_conversation() -> list[Message]:
    """Every kind of message, each field holding something distinctive."""
    return [
        Message(role="system", content=f"system prompt: {SECRET_TEXT}"),
        Message(
            role="user",
            content=(TextPart(text=SECRET_TEXT), ImagePart(url=SECRET_IMAGE, detail="low")),
            name=SECRET_NAME,
            metadata={"ssn": SECRET_METADATA, "nested": {"list": [SECRET_METADATA, 1, True]}},
        ),
        Message(
            role="assistant",
            content=None,
            tool_calls=(
                ToolCall(id="call_1", name=SECRET_TOOL, arguments={"to": SECRET_ARGUMENT}),
            ),
        ),
        Message(role="tool", content=f"done: {SECRET_ARGUMENT}", tool_call_id="call_1"),
        Message(role="assistant", content=f"Noted: {SECRET_TEXT} ünïcödé 🌍"),
    ]


def _forms(text: str) -> set[str]:
    """``text``, and the parts of its base64 (both alphabets, every alignment) that do not depend
    on the bytes around it."""
    raw = text.encode()
    forms = {text}
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            core = encode(b"\0" * shift + raw).decode()[4:-4]
            assert len(core) >= 16
            forms.add(core)
    return forms


def _assert_nothing_readable(dumped: str) -> None:
    for text in DISTINCTIVE:
        for form in _forms(text):
            assert form not in dumped, f"{form!r} (from {text!r}) is readable in the store"


def _envelope(stored: Message) -> bytes:
    assert isinstance(stored.content, str)
    assert stored.content.startswith(PREFIX)
    return base64.urlsafe_b64decode(stored.content[len(PREFIX) :])


def _key_id(stored: Message) -> str:
    envelope = _envelope(stored)
    assert envelope[0] == 1
    return envelope[2 : 2 + envelope[1]].decode()


def _rewrap(envelope: bytes) -> Message:
    return Message(role="user", content=PREFIX + base64.urlsafe_b64encode(envelope).decode())


def _flipped(stored: Message, index: int) -> Message:
    envelope = bytearray(_envelope(stored))
    envelope[index] ^= 0x01
    return _rewrap(bytes(envelope))


def _fold_with(summary: Message, count: int = 1) -> Any:
    async def fold(history: list[Message], previous: Message | None) -> tuple[int, Message]:
        return count, summary

    return fold


@pytest.fixture(params=["cache", "no-cache"])
def cache_bytes(request: pytest.FixtureRequest) -> int:
    """Each test runs with the message cache on and off: the cache must never hide a failure."""
    return 16 << 20 if request.param == "cache" else 0


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_server.url) as client:
        yield client


# -- round trips ---------------------------------------------------------------------------------


async def test_every_kind_of_message_round_trips_in_memory(cache_bytes: int) -> None:
    inner = InMemoryStateStore()
    conversation = _secret_conversation()
    async with EncryptedStore(inner, keys={"k1": KEY_A}, message_cache_bytes=cache_bytes) as store:
        await store.save("s", conversation)
        assert await store.load("s") == conversation
        assert await store.load("s", limit=2) == conversation[-2:]
        assert await store.append("s", sample_conversation(), max_messages=8) == 8
        assert await store.load("s") == [*conversation, *sample_conversation()][-8:]
    # Another instance, with nothing remembered, decrypts what the first one wrote.
    other = EncryptedStore(inner, keys={"k1": KEY_A}, message_cache_bytes=cache_bytes)
    loaded = await other.load("s")
    assert loaded == [*conversation, *sample_conversation()][-8:]
    assert [m.model_dump() for m in loaded] == [
        m.model_dump() for m in [*conversation, *sample_conversation()][-8:]
    ]


async def test_every_kind_of_message_round_trips_through_redis(
    redis_client: Redis, key_prefix: str, cache_bytes: int
) -> None:
    conversation = _secret_conversation()
    writer = EncryptedStore(
        RedisStateStore(redis_client, prefix=key_prefix),
        keys={"k1": KEY_A},
        message_cache_bytes=cache_bytes,
    )
    await writer.append("s", conversation[:2])
    assert await writer.append("s", conversation[2:]) == len(conversation)
    assert await writer.load("s") == conversation
    reader = EncryptedStore(
        RedisStateStore(redis_client, prefix=key_prefix),
        keys={"k1": KEY_A},
        message_cache_bytes=cache_bytes,
    )
    assert await reader.load("s") == conversation
    assert await reader.load("s", limit=1) == conversation[-1:]


@pytest.mark.parametrize("backend", kinds("memory", "redis"))
async def test_token_counts_survive_encryption(
    backend: str, request: pytest.FixtureRequest, key_prefix: str
) -> None:
    conversation = _secret_conversation()
    counts = [count_tokens(message) for message in conversation]  # kept with each message
    if backend == "memory":
        inner: StateStore = InMemoryStateStore()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        inner = RedisStateStore.from_url(server.url, prefix=key_prefix)
    async with inner:
        await EncryptedStore(inner, keys={"k1": KEY_A}).append("s", conversation)
        # A fresh wrapper remembers nothing: the counts come out of the decrypted entries.
        loaded = await EncryptedStore(inner, keys={"k1": KEY_A}, message_cache_bytes=0).load("s")
    assert loaded == conversation
    assert [cached_token_count(m, fingerprint(ESTIMATE)) for m in loaded] == counts
    assert all(count is not None and count > 0 for count in counts)


# -- nothing readable in the store ---------------------------------------------------------------


async def test_the_memory_store_holds_nothing_readable() -> None:
    inner = InMemoryStateStore()
    store = EncryptedStore(inner, keys={"k1": KEY_A})
    await store.save("s", _secret_conversation())
    await store.append("s", [_user(SECRET_TEXT)])
    assert await store.compact("s", _fold_with(_user(SECRET_SUMMARY), count=2)) is True
    assert (await store.load_with_summary("s"))[1] == _user(SECRET_SUMMARY)

    stored, summary = await inner.load_with_summary("s")
    assert len(stored) == 4 and summary is not None
    for message in [*stored, summary]:
        assert message.role == "user" and message.name is None and not message.metadata
        assert isinstance(message.content, str) and message.content.startswith(PREFIX)
    _assert_nothing_readable("\n".join(m.model_dump_json() for m in [*stored, summary]))
    _assert_nothing_readable(repr([*stored, summary]))


async def test_redis_holds_nothing_readable(redis_client: Redis, key_prefix: str) -> None:
    store = EncryptedStore(RedisStateStore(redis_client, prefix=key_prefix), keys={"k1": KEY_A})
    await store.save("s", _secret_conversation())
    await store.append("s", [_user(SECRET_TEXT)], ttl=60)
    assert await store.compact("s", _fold_with(_user(SECRET_SUMMARY), count=2)) is True
    assert await store.load_with_summary("s") == (
        [*_secret_conversation()[2:], _user(SECRET_TEXT)],
        _user(SECRET_SUMMARY),
    )

    raw: list[bytes] = []
    entries: list[bytes] = []
    async for key in redis_client.scan_iter(match=f"{key_prefix}:*"):
        kind = (await redis_client.type(key)).decode()
        if kind == "list":
            values = await redis_client.lrange(key, 0, -1)
            entries.extend(values)
        elif kind == "string":
            values = [await redis_client.get(key)]
            entries.extend(value for value in values if not value.isdigit())  # the version
        else:
            values = [await redis_client.dump(key)]
        raw.extend(values)
    # As the store reads them (it may have compressed some): envelopes, and only envelopes.
    opened = [decode_entry(entry) for entry in entries]
    assert len(opened) == 5  # four messages and the summary
    for message in opened:
        assert message.role == "user" and message.text.startswith(PREFIX)
    _assert_nothing_readable(
        b"\n".join(raw).decode("utf-8", "replace") + repr(opened) + repr(entries)
    )


async def test_the_sqlite_file_holds_nothing_readable(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    # compress_over=None: nothing in the file is compressed, so a plaintext would show as is.
    inner = SQLiteStateStore(path, compress_over=None)
    async with EncryptedStore(inner, keys={"k1": KEY_A}) as store:
        await store.save("s", _secret_conversation())
        await store.append("s", [_user(SECRET_TEXT)], ttl=60)
        assert await store.compact("s", _fold_with(_user(SECRET_SUMMARY), count=2)) is True
        assert await store.load_with_summary("s") == (
            [*_secret_conversation()[2:], _user(SECRET_TEXT)],
            _user(SECRET_SUMMARY),
        )
        files = sorted(tmp_path.iterdir())
        assert path in files
        # The database and its write-ahead log, byte for byte, while the store is open.
        _assert_nothing_readable(
            "\n".join(file.read_bytes().decode("utf-8", "replace") for file in files)
        )
    # The same conversation, unencrypted, is readable in such a file: the check can fail.
    async with SQLiteStateStore(tmp_path / "plain.db", compress_over=None) as plain:
        await plain.save("s", _secret_conversation())
    with pytest.raises(AssertionError, match="readable"):
        _assert_nothing_readable(
            "\n".join(
                file.read_bytes().decode("utf-8", "replace")
                for file in tmp_path.iterdir()
                if file.name.startswith("plain")
            )
        )


async def test_sealing_the_same_message_twice_gives_different_ciphertexts() -> None:
    inner = InMemoryStateStore()
    store = EncryptedStore(inner, keys={"k1": KEY_A})
    await store.append("s", [_user("same"), _user("same")])
    first, second = await inner.load("s")
    assert first.content != second.content  # a fresh nonce each time
    assert await store.load("s") == [_user("same"), _user("same")]


# -- keys ----------------------------------------------------------------------------------------


async def test_a_wrong_secret_cannot_read(cache_bytes: int) -> None:
    inner = InMemoryStateStore()
    await EncryptedStore(inner, keys={"k1": KEY_A}).append("s", _secret_conversation())
    thief = EncryptedStore(inner, keys={"k1": KEY_B}, message_cache_bytes=cache_bytes)
    with pytest.raises(DecryptionError) as caught:
        await thief.load("s")
    assert not isinstance(caught.value, UnknownKeyError)
    assert caught.value.session_id == "s"
    assert "'s'" in str(caught.value)
    for secret in (KEY_A, KEY_B):
        for form in (repr(secret), secret.hex(), base64.b64encode(secret).decode()):
            assert form not in str(caught.value)


async def test_an_unknown_key_id_is_named() -> None:
    inner = InMemoryStateStore()
    await EncryptedStore(inner, keys={"k1": KEY_A}).append("s", [_user("hi")])
    with pytest.raises(UnknownKeyError) as caught:
        await EncryptedStore(inner, keys={"k2": KEY_B}).load("s")
    assert caught.value.key_id == "k1"
    assert caught.value.session_id == "s"
    assert isinstance(caught.value, DecryptionError)


async def test_rotation_reads_old_entries_writes_with_the_new_key() -> None:
    inner = InMemoryStateStore()
    old = EncryptedStore(inner, keys={"k1": KEY_A})
    await old.append("s", [_user("written with k1")])
    await old.append("other", [_user("only k1 here")])

    rotated = EncryptedStore(inner, keys={"k2": KEY_B, "k1": KEY_A})
    assert rotated.key_ids == ("k2", "k1")
    assert await rotated.load("s") == [_user("written with k1")]
    await rotated.append("s", [_user("written with k2")])
    assert await rotated.load("s") == [_user("written with k1"), _user("written with k2")]
    stored = await inner.load("s")
    assert [_key_id(m) for m in stored] == ["k1", "k2"]
    assert [EncryptedStore.key_id_of(m) for m in stored] == ["k1", "k2"]

    # The old key gone: entries it wrote can no longer be read, the new ones can.
    retired = EncryptedStore(inner, keys={"k2": KEY_B})
    with pytest.raises(UnknownKeyError) as caught:
        await retired.load("s")
    assert caught.value.key_id == "k1"
    assert await retired.load("s", limit=1) == [_user("written with k2")]
    # Saved anew, a session holds only entries of the new key.
    await rotated.save("other", await rotated.load("other"))
    assert [_key_id(m) for m in await inner.load("other")] == ["k2"]
    assert await retired.load("other") == [_user("only k1 here")]


async def test_a_key_id_in_another_writer_order_still_decrypts() -> None:
    inner = InMemoryStateStore()
    await EncryptedStore(inner, keys={"a": KEY_A, "b": KEY_B}).append("s", [_user("x")])
    await EncryptedStore(inner, keys={"b": KEY_B, "a": KEY_A}).append("s", [_user("y")])
    assert [_key_id(m) for m in await inner.load("s")] == ["a", "b"]
    assert await EncryptedStore(inner, keys={"b": KEY_B, "a": KEY_A}).load("s") == [
        _user("x"),
        _user("y"),
    ]


# -- tampering -----------------------------------------------------------------------------------


async def test_every_flipped_byte_of_an_entry_fails(cache_bytes: int) -> None:
    inner = InMemoryStateStore()
    store = EncryptedStore(inner, keys={"k1": KEY_A}, message_cache_bytes=cache_bytes)
    await store.append("s", [_user("short and sweet")])
    (stored,) = await inner.load("s")
    size = len(_envelope(stored))
    assert (
        size == 2 + 2 + 12 + len(b"\x01\x00" + b'{"role":"user","content":"short and sweet"}') + 16
    )
    for index in range(size):
        await inner.save("s", [_flipped(stored, index)])
        with pytest.raises(DecryptionError) as caught:
            await store.load("s")
        assert caught.value.session_id == "s"
    await inner.save("s", [stored])
    assert await store.load("s") == [_user("short and sweet")]


@pytest.mark.parametrize(
    "stored",
    [
        Message(role="user", content="plain text, never encrypted"),
        Message(role="user", content=PREFIX),
        Message(role="user", content=PREFIX + "not base64!"),
        Message(role="user", content=PREFIX + "AQJrMQ=="),  # a header and nothing more
        Message(role="user", content=PREFIX + "ÄÖÜ"),
        Message(role="user", content=(TextPart(text=PREFIX + "AAAA"),)),
        _rewrap(b"\x02\x02k1" + bytes(40)),  # an envelope version this one does not know
        _rewrap(b"\x01\x00" + bytes(40)),  # an empty key id
        _rewrap(b"\x01\x02\xff\xfe" + bytes(40)),  # a key id that is not UTF-8
    ],
    ids=repr,
)
async def test_what_is_not_an_envelope_is_refused(stored: Message) -> None:
    inner = InMemoryStateStore()
    store = EncryptedStore(inner, keys={"k1": KEY_A})
    await inner.append("s", [stored])
    with pytest.raises(DecryptionError, match="session 's'"):
        await store.load("s")


async def test_a_valid_envelope_dressed_up_is_refused() -> None:
    inner = InMemoryStateStore()
    store = EncryptedStore(inner, keys={"k1": KEY_A}, message_cache_bytes=0)
    await store.append("s", [_user("x")])
    (stored,) = await inner.load("s")
    for dressed in (
        Message(role="assistant", content=stored.content),
        Message(role="user", content=stored.content, name="mallory"),
        Message(role="user", content=stored.content, metadata={"injected": True}),
    ):
        await inner.save("s", [dressed])
        with pytest.raises(DecryptionError):
            await store.load("s")


async def test_skip_drops_counts_and_logs_a_tampered_entry(
    cache_bytes: int, caplog: pytest.LogCaptureFixture
) -> None:
    inner = InMemoryStateStore()
    writer = EncryptedStore(inner, keys={"k1": KEY_A}, message_cache_bytes=cache_bytes)
    await writer.append("s", [_user("one"), _user("two"), _user("three")])
    one, two, three = await inner.load("s")
    await inner.save("s", [one, _flipped(two, len(_envelope(two)) - 20), three])

    with pytest.raises(DecryptionError):
        await writer.load("s")
    skipping = EncryptedStore(
        inner, keys={"k1": KEY_A}, on_tamper="skip", message_cache_bytes=cache_bytes
    )
    with caplog.at_level(logging.WARNING, logger="chatstate.encrypted"):
        assert await skipping.load("s") == [_user("one"), _user("three")]
    assert skipping.tampered_entries == 1
    assert [r.name for r in caplog.records] == ["chatstate.encrypted"]
    assert "'s'" in caplog.records[0].getMessage()
    assert await skipping.load("s", limit=1) == [_user("three")]
    assert skipping.tampered_entries == 1  # the limit left it out
    assert await skipping.load("s") == [_user("one"), _user("three")]
    assert skipping.tampered_entries == 2  # counted each time it is met


async def test_an_entry_moved_to_another_session_fails(cache_bytes: int) -> None:
    inner = InMemoryStateStore()
    store = EncryptedStore(inner, keys={"k1": KEY_A}, message_cache_bytes=cache_bytes)
    await store.append("alice", [_user("alice's secret")])
    assert await store.load("alice") == [_user("alice's secret")]  # remembered, if caching
    await store.append("mallory", [_user("hello")])
    await inner.append("mallory", await inner.load("alice"))
    with pytest.raises(DecryptionError) as caught:
        await store.load("mallory")
    assert caught.value.session_id == "mallory"
    fresh = EncryptedStore(inner, keys={"k1": KEY_A}, on_tamper="skip")
    assert await fresh.load("mallory") == [_user("hello")]
    assert fresh.tampered_entries == 1


async def test_a_summary_and_a_message_cannot_swap_places(cache_bytes: int) -> None:
    inner = InMemoryStateStore()
    store = EncryptedStore(inner, keys={"k1": KEY_A}, message_cache_bytes=cache_bytes)
    await store.append("s", [_user("m0"), _user("m1"), _user("m2")])
    assert await store.compact("s", _fold_with(_user("the summary"))) is True
    assert await store.load_with_summary("s") == ([_user("m1"), _user("m2")], _user("the summary"))
    history, summary = await inner.load_with_summary("s")
    assert summary is not None

    # The summary's ciphertext put into the history.
    await inner.append("s", [summary])
    with pytest.raises(DecryptionError):
        await store.load("s")

    # A message's ciphertext put in the summary's place.
    await inner.save("s", history)
    assert await inner.compact("s", _fold_with(history[0])) is True
    with pytest.raises(DecryptionError):
        await store.load_with_summary("s")
    skipping = EncryptedStore(inner, keys={"k1": KEY_A}, on_tamper="skip")
    assert await skipping.load_with_summary("s") == ([_user("m2")], None)
    assert skipping.tampered_entries == 1


async def test_a_fold_over_a_tampered_entry_removes_it_with_the_folded_ones() -> None:
    inner = InMemoryStateStore()
    writer = EncryptedStore(inner, keys={"k1": KEY_A})
    await writer.append("s", [_user(f"m{i}") for i in range(4)])
    m0, m1, m2, m3 = await inner.load("s")
    await inner.save("s", [m0, _flipped(m1, 30), m2, m3])
    with pytest.raises(DecryptionError):
        await writer.compact("s", _fold_with(_user("sum")))

    store = EncryptedStore(inner, keys={"k1": KEY_A}, on_tamper="skip")
    seen: list[list[Message]] = []

    async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
        seen.append(history)
        return 1, _user("sum of m0")

    assert await store.compact("s", fold) is True
    assert seen == [[_user("m0"), _user("m2"), _user("m3")]]
    # m0 folded, and the broken entry after it went with it: m2 is the first message kept.
    assert await store.load_with_summary("s") == ([_user("m2"), _user("m3")], _user("sum of m0"))
    assert len(await inner.load("s")) == 2


# -- the optional protocols ----------------------------------------------------------------------


class _PlainStore:
    """A third-party store with the StateStore methods and nothing more."""

    def __init__(self) -> None:
        self.sessions: dict[str, list[Message]] = {}
        self.ttls: dict[str, float | None] = {}
        self.closed = 0

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        messages = self.sessions.get(session_id, [])
        return messages[-limit:] if limit else ([] if limit == 0 else messages[:])

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: Any = None) -> None:
        self.sessions[session_id] = list(messages)
        self.ttls[session_id] = ttl

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: Any = None,
    ) -> int:
        stored = self.sessions.setdefault(session_id, [])
        stored.extend(messages)
        if max_messages:
            del stored[:-max_messages]
        return len(stored)

    async def delete(self, session_id: str) -> bool:
        return self.sessions.pop(session_id, None) is not None

    async def aclose(self) -> None:
        self.closed += 1

    async def __aenter__(self) -> _PlainStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _TransferStore(_PlainStore):
    """A store that can snapshot and restore whole sessions (SessionTransfer)."""

    def __init__(self) -> None:
        super().__init__()
        self.summaries: dict[str, Message | None] = {}

    async def snapshot(self, session_id: str) -> SessionSnapshot | None:
        if session_id not in self.sessions:
            return None
        return SessionSnapshot(
            self.sessions[session_id][:], self.summaries.get(session_id), self.ttls.get(session_id)
        )

    async def restore(
        self, session_id: str, snapshot: SessionSnapshot, *, overwrite: bool = False
    ) -> bool:
        messages, summary, ttl = check_snapshot(snapshot)
        if session_id in self.sessions and not overwrite:
            return False
        self.sessions[session_id] = messages
        self.summaries[session_id] = summary
        self.ttls[session_id] = ttl
        return True


async def test_the_optional_protocols_follow_the_wrapped_store() -> None:
    memory = InMemoryStateStore()
    over_memory = EncryptedStore(memory, keys={"k1": KEY_A})
    plain = EncryptedStore(_PlainStore(), keys={"k1": KEY_A})
    transfer = EncryptedStore(_TransferStore(), keys={"k1": KEY_A})
    for protocol in (SessionSummaries, VersionedStore, SessionLeases, SessionTransfer):
        assert isinstance(over_memory, protocol) is isinstance(memory, protocol)
        assert not isinstance(plain, protocol)
    assert isinstance(transfer, SessionTransfer)
    assert not isinstance(transfer, SessionSummaries)
    for store in (over_memory, plain, transfer):
        assert isinstance(store, StateStore)

    for name in ("session_ids", "metrics", "sweep", "version", "lease", "index_conversation"):
        assert hasattr(over_memory, name)
        assert not hasattr(plain, name)
    # Nothing else of the wrapped store is lent through: it could hand out ciphertext.
    for name in ("_sessions", "sessions_in_memory", "evictions", "_live", "nonexistent"):
        with pytest.raises(AttributeError):
            getattr(over_memory, name)
    with pytest.raises(AttributeError, match=r"use \.store"):
        _ = over_memory.sessions_in_memory
    with pytest.raises(AttributeError):
        _ = plain.compact
    assert repr(KEY_A) not in repr(over_memory) and KEY_A.hex() not in repr(over_memory)
    assert repr(over_memory).startswith("EncryptedStore(InMemoryStateStore(")


async def test_versions_leases_and_listings_pass_through() -> None:
    memory = InMemoryStateStore()
    store = EncryptedStore(memory, keys={"k1": KEY_A})
    assert await store.version("s") == 0
    length, version = await store.append_versioned("s", [_user("a"), _user("b")])
    assert length == 2 and version == await store.version("s") == await memory.version("s")
    assert await store.load_versioned("s") == ([_user("a"), _user("b")], version)
    assert await store.load_versioned("s", limit=1) == ([_user("b")], version)
    async with store.lease("s", ttl=5, timeout=1):
        pass
    assert [sid async for sid in store.session_ids()] == ["s"]
    assert (await store.metrics()).active_sessions == 1


async def test_a_near_cache_over_the_encrypted_store(redis_client: Redis, key_prefix: str) -> None:
    inner = RedisStateStore(redis_client, prefix=key_prefix)
    cached = CachedStore(EncryptedStore(inner, keys={"k1": KEY_A}), max_staleness=timedelta(0))
    await cached.append("s", _secret_conversation())
    assert await cached.load("s") == _secret_conversation()
    assert await cached.load("s") == _secret_conversation()
    assert cached.hits == 1
    stored = await inner.load("s")
    assert len(stored) == len(_secret_conversation())
    assert all(m.text.startswith(PREFIX) for m in stored)
    unversioned = EncryptedStore(PlainStore(), keys={"k": KEY_A})
    with pytest.raises(ConfigurationError, match="numbers its writes"):
        CachedStore(EncryptedStore(unversioned, keys={"k1": KEY_A}))


async def _check_transfer(inner: Any) -> None:
    store = EncryptedStore(inner, keys={"k1": KEY_A})
    conversation = _secret_conversation()
    await store.save("s", conversation, ttl=300)
    if isinstance(store, SessionSummaries):
        assert await store.compact("s", _fold_with(_user(SECRET_SUMMARY))) is True
        expected_summary: Message | None = _user(SECRET_SUMMARY)
        expected = conversation[1:]
    else:
        expected_summary, expected = None, conversation

    snapshot = await store.snapshot("s")
    assert snapshot is not None
    assert snapshot.messages == expected
    assert snapshot.summary == expected_summary
    assert snapshot.ttl is not None and 0 < snapshot.ttl <= 300
    raw = await inner.snapshot("s")
    _assert_nothing_readable(repr(raw))
    assert await store.snapshot("nobody") is None

    # A fork: another session, its own key; the copy reads back, the original is untouched.
    assert await store.restore("fork", snapshot) is True
    assert await store.restore("fork", SessionSnapshot([_user("x")])) is False
    forked = await store.snapshot("fork")
    assert forked is not None
    assert (forked.messages, forked.summary) == (expected, expected_summary)
    assert forked.ttl is not None and 0 < forked.ttl <= 300
    assert await store.load("fork") == expected
    _assert_nothing_readable(repr(await inner.snapshot("fork")))
    assert await store.restore("fork", SessionSnapshot([_user("over")]), overwrite=True) is True
    assert await store.load("fork") == [_user("over")]
    assert await store.load("s") == expected
    with pytest.raises(InvalidMessageError):
        await store.restore("s", SessionSnapshot(["not a message"]), overwrite=True)  # type: ignore[list-item]
    assert await store.load("s") == expected


async def test_snapshot_and_restore_through_the_wrapper() -> None:
    await _check_transfer(_TransferStore())


async def test_snapshot_and_restore_through_the_wrapper_over_memory() -> None:
    inner = InMemoryStateStore()
    if not isinstance(inner, SessionTransfer):
        pytest.skip("InMemoryStateStore has no snapshot/restore yet")
    await _check_transfer(inner)


async def test_snapshot_and_restore_through_the_wrapper_over_redis(
    redis_client: Redis, key_prefix: str
) -> None:
    inner = RedisStateStore(redis_client, prefix=key_prefix)
    if not isinstance(inner, SessionTransfer):
        pytest.skip("RedisStateStore has no snapshot/restore yet")
    await _check_transfer(inner)


# -- writes --------------------------------------------------------------------------------------


async def test_bad_input_is_refused_before_anything_is_stored() -> None:
    inner = _PlainStore()
    store = EncryptedStore(inner, keys={"k1": KEY_A})
    await store.save("s", [_user("kept")])
    before = inner.sessions["s"][:]
    for bad in ("text", [_user("ok"), "not a message"], [{"role": "user"}], None):
        with pytest.raises(InvalidMessageError):
            await store.append("s", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidMessageError):
            await store.save("s", bad)  # type: ignore[arg-type]
    assert inner.sessions["s"] == before


async def test_a_failed_write_carries_the_callers_messages() -> None:
    class Failing(_PlainStore):
        async def append(self, session_id: str, messages: Sequence[Message], **_: Any) -> int:
            raise StateSaveError("down", session_id=session_id, messages=messages)

        async def save(self, session_id: str, messages: Sequence[Message], **_: Any) -> None:
            raise StateSaveError("down", session_id=session_id, messages=messages)

    store = EncryptedStore(Failing(), keys={"k1": KEY_A})
    conversation = _secret_conversation()
    with pytest.raises(StateSaveError) as caught:
        await store.append("s", conversation)
    assert caught.value.messages == tuple(conversation)  # to retry, not their ciphertext
    with pytest.raises(StateSaveError) as caught:
        await store.save("s", conversation)
    assert caught.value.messages == tuple(conversation)


async def test_closing_closes_the_wrapped_store() -> None:
    inner = _PlainStore()
    async with EncryptedStore(inner, keys={"k1": KEY_A}) as store:
        await store.append("s", [_user("x")])
    assert inner.closed == 1


async def test_a_pipeline_over_the_encrypted_store_remembers() -> None:
    inner = InMemoryStateStore()
    store = EncryptedStore(inner, keys={"k1": KEY_A})
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(ScriptedProvider()))
    await pipe.execute_with_session("s", "user", "My name is Bartholomew.")
    result = await pipe.execute_with_session("s", "user", "What is my name?")
    assert "Bartholomew" in result.response.text
    assert len(await store.load("s")) == 4
    assert not any("Bartholomew" in m.text for m in await inner.load("s"))


# -- configuration -------------------------------------------------------------------------------

SHORT_SECRET = b"S3cr3t-short-value-0123456789"  # 29 bytes


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({}, "at least one key"),
        ({"k1": SHORT_SECRET}, "29 bytes long"),
        ({"k1": SHORT_SECRET.decode() * 2}, "must be bytes, got str"),
        ({"k1": bytearray(KEY_A)}, "must be bytes, got bytearray"),
        ({"k1": KEY_A, "k2": SHORT_SECRET}, "'k2' is 29 bytes"),
        ({"": KEY_A}, "must not be empty"),
        ({"x" * 256: KEY_A}, "256 bytes as UTF-8"),
        ({"é" * 128: KEY_A}, "256 bytes as UTF-8"),
        ({"\ud800": KEY_A}, "lone surrogate"),
        ({SHORT_SECRET: KEY_A}, "must be str"),
        ([("k1", KEY_A)], "must be a mapping"),
        (SHORT_SECRET, "must be a mapping"),
    ],
    ids=repr,
)
def test_bad_keys_are_refused_without_showing_a_secret(keys: Any, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        EncryptedStore(InMemoryStateStore(), keys=keys)
    text = str(caught.value)
    for secret in (SHORT_SECRET, KEY_A):
        for form in (
            repr(secret),
            secret.hex(),
            secret.decode("latin-1"),
            base64.b64encode(secret).decode(),
            "S3cr3t",
        ):
            assert form not in text


def test_key_ids_up_to_255_bytes_are_taken() -> None:
    store = EncryptedStore(InMemoryStateStore(), keys={"x" * 255: KEY_A, "ü": KEY_B})
    assert store.key_ids == ("x" * 255, "ü")


@pytest.mark.parametrize(
    "options",
    [
        {"on_tamper": "ignore"},
        {"on_tamper": None},
        {"message_cache_bytes": -1},
        {"message_cache_bytes": 1.5},
    ],
    ids=repr,
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        EncryptedStore(InMemoryStateStore(), keys={"k1": KEY_A}, **options)


def test_only_a_store_is_wrapped() -> None:
    with pytest.raises(ConfigurationError, match="dict is not one"):
        EncryptedStore({}, keys={"k1": KEY_A})  # type: ignore[arg-type]


async def test_the_message_cache_is_bounded() -> None:
    store = EncryptedStore(InMemoryStateStore(), keys={"k1": KEY_A}, message_cache_bytes=20_000)
    for index in range(100):
        await store.append("s", [_user(f"message {index} " + "x" * 100)])
    assert 0 < len(store._opened) < 100
    assert store._held <= 20_000
    assert len(await store.load("s")) == 100
    await store.aclose()
    assert not store._opened and not store._aeads
