"""The codec's metadata stage: compressed like a message, sealed to its place with encryption,
and a damaged document skipped or raised as the store's ``on_corrupt`` says."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from chatstate import Message
from chatstate.errors import (
    ConfigurationError,
    CorruptEntryError,
    DecryptionError,
    UnknownKeyError,
)
from chatstate.stores import (
    BackendStore,
    Encryption,
    InMemoryStateStore,
    MemoryBackend,
    SessionInfo,
    check_metadata,
)
from chatstate.stores._codec import EntryCodec

from .dict_backend import DictBackend


def _codec(encryption: Encryption | None = None) -> EntryCodec:
    return EntryCodec.for_store(
        compress_over=1024,
        compression="auto",
        message_cache_bytes=0,
        max_message_bytes=1 << 20,
        encryption=encryption,
    )


def test_a_document_is_compressed_when_that_pays_and_reads_back() -> None:
    codec = _codec()
    small = check_metadata({"title": "Trip"})
    assert codec.decode_doc(codec.encode_doc(small, session_id="s"), session_id="s") == small
    big = check_metadata({"notes": "again and again " * 500})
    entry = codec.encode_doc(big, session_id="s")
    assert len(entry) < len(big) // 4
    assert codec.decode_doc(entry, session_id="s") == big


def test_sealed_metadata_opens_only_as_its_own_session_s_metadata() -> None:
    keys = Encryption(keys={"k1": secrets.token_bytes(32)})
    codec = _codec(keys)
    payload = check_metadata({"title": "private"})
    entry = codec.encode_doc(payload, session_id="a")
    assert b"private" not in entry
    assert codec.decode_doc(entry, session_id="a") == payload
    with pytest.raises(DecryptionError):
        codec.decode_doc(entry, session_id="b")  # moved to another session
    with pytest.raises(DecryptionError):
        codec.decode([entry], on_corrupt="raise", session_id="a")  # moved into the history
    (history,) = codec.encode([Message(role="user", content="hi")], session_id="a")
    with pytest.raises(DecryptionError):
        codec.decode_doc(history, session_id="a")  # a message moved into the metadata
    with pytest.raises(DecryptionError, match="not encrypted"):
        codec.decode_doc(_codec().encode_doc(payload, session_id="a"), session_id="a")
    with pytest.raises(UnknownKeyError):
        _codec().decode_doc(entry, session_id="a")


@pytest.mark.parametrize("on_corrupt", ["skip", "raise"])
async def test_damaged_metadata_is_skipped_or_raised(on_corrupt: Any) -> None:
    backend = MemoryBackend()
    async with BackendStore(backend, codec=_codec(), on_corrupt=on_corrupt) as store:
        await store.append("s", [Message(role="user", content="hi")], metadata={"title": "t"})
        for damage in [b"\x01\x00not json", b"\x01\x00[1, 2]", b"\x09\x00", b""]:
            backend._sessions["s"].meta = damage
            if on_corrupt == "raise":
                with pytest.raises(CorruptEntryError):
                    await store.metadata("s")
            else:
                skipped = store.corrupt_entries
                info = await store.metadata("s")
                assert info is not None and info.metadata == {}
                assert store.corrupt_entries == skipped + 1
        # The history is untouched, and a new document replaces the damaged one.
        assert await store.load("s") == [Message(role="user", content="hi")]
        assert await store.set_metadata("s", {"title": "again"})
        again = await store.metadata("s")
        assert isinstance(again, SessionInfo) and again.metadata == {"title": "again"}


async def test_the_in_memory_store_keeps_its_own_copy_of_the_document() -> None:
    async with InMemoryStateStore() as store:
        document = {"tags": ["a"]}
        await store.append("s", [Message(role="user", content="hi")], metadata=document)
        document["tags"].append("b")
        info = await store.metadata("s")
        assert info is not None and info.metadata == {"tags": ["a"]}
        info.metadata["tags"].append("c")
        assert (await store.metadata("s")).metadata == {"tags": ["a"]}  # type: ignore[union-attr]
        assert json.loads(check_metadata(info.metadata)) == {"tags": ["a", "c"]}


async def test_a_backend_without_metadata_says_so() -> None:
    async with BackendStore(DictBackend(clock=lambda: 0.0)) as store:
        with pytest.raises(ConfigurationError, match="Describing"):
            await store.metadata("s")
        with pytest.raises(ConfigurationError, match="Describing"):
            await store.append("s", [Message(role="user", content="hi")], metadata={"t": 1})
        assert await store.load("s") == []
        await store.append("s", [Message(role="user", content="hi")])
        snapshot = await store.snapshot("s")
        assert snapshot is not None and snapshot.metadata is None
        assert await store.restore("copy", snapshot)


def test_a_damaged_entry_skipped_once_is_read_again_and_raised_when_asked() -> None:
    # A load that skipped every entry it read leaves the session's window empty; the next load
    # (a snapshot, which raises) must decode again, not trip over the empty window.
    codec = EntryCodec.for_store(
        compress_over=1024,
        compression="auto",
        message_cache_bytes=1 << 20,
        max_message_bytes=1 << 20,
    )
    damaged = b"\x01\x00\xff"
    assert codec.decode([damaged], on_corrupt="skip", session_id="s", summary=True) == ([], 1)
    with pytest.raises(CorruptEntryError):
        codec.decode([damaged], on_corrupt="raise", session_id="s", summary=True)
    (good,) = codec.encode([Message(role="user", content="hi")], session_id="s")
    assert codec.decode([damaged, good], on_corrupt="skip", session_id="s") == (
        [Message(role="user", content="hi")],
        1,
    )
    assert codec.decode([good], on_corrupt="raise", session_id="s")[0][0].text == "hi"
