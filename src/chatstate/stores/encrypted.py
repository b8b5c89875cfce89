"""Encryption at rest around any store: the store keeps only ciphertext.

``EncryptedStore(store, keys={"2025-06": secret})`` encrypts each message before it reaches
``store`` and decrypts it on the way back, so neither the store nor whoever reads its backend
(a Redis dump, a replica, a backup) sees any of the history: text, roles, names, tool calls and
metadata alike. Every message is sealed on its own with AES-256-GCM under a key derived
(HKDF-SHA256) from the secret and the session id, so an entry moved to another session, edited, or
put in the place of the summary fails to decrypt and is never returned.

What the store keeps is an ordinary :class:`~chatstate.Message`, which every store can hold::

    Message(role="user", content="chatstate-encrypted:" + base64url(envelope))

    envelope   byte 0: format version (1); byte 1: length n of the key id;
               n bytes: the key id (UTF-8); 12 bytes: a random nonce;
               then the ciphertext of the message's entry (the codec's encode_entry, so a
               token count travels with it) and the 16-byte tag
    associated the envelope's first 2 + n bytes and one byte telling a history message (0) from
    data       the session's summary (1)

What stays visible: session ids, key ids, how many messages a session holds and roughly how long
each is, and when it was written. Within its own session an entry can still be dropped, repeated or
moved by someone who can write to the store (the order is not sealed); it cannot be read, changed,
forged or carried to another session or role.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, Literal, cast

from chatstate._checks import check_count, check_session_id
from chatstate.errors import (
    ConfigurationError,
    CorruptEntryError,
    DecryptionError,
    StateSaveError,
    UnknownKeyError,
)
from chatstate.messages import Message, as_messages
from chatstate.metrics import StoreWrapper
from chatstate.stores._codec import decode_entries, decode_entry, encode_entry
from chatstate.stores._encryption import _checked_keys
from chatstate.stores.base import (
    TTL,
    Fold,
    SessionSnapshot,
    StateStore,
    check_snapshot,
    run_fold,
)

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "EncryptedStore needs the cryptography package: pip install 'chatstate[encryption]'"
    ) from exc

__all__ = ["EncryptedStore"]

logger = logging.getLogger("chatstate.encrypted")

PREFIX: Final = "chatstate-encrypted:"
"""What the content of every message an EncryptedStore stores starts with."""

_VERSION = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
_LABEL = b"chatstate/session-key/v1\x00"
_MESSAGE = b"\x00"
_SUMMARY = b"\x01"
_MIN_SECRET_BYTES = 32
_MAX_KEY_ID_BYTES = 255
_KEYS_KEPT = 4096
"""Derived (key id, session) keys kept at hand: deriving one costs a few microseconds."""

# What the wrapped store offers, wrapped: each of these takes or returns messages, so the
# wrapper has them only where the store does, and never lends the store's own through.
_WRAPPED: Final = {
    "load_with_summary": "_load_with_summary",
    "compact": "_compact",
    "load_versioned": "_load_versioned",
    "append_versioned": "_append_versioned",
    "snapshot": "_snapshot",
    "restore": "_restore",
}
# What the wrapped store offers that never sees a message: lent through as it is.
_FORWARDED: Final = frozenset(
    {
        "version",
        "versioned",
        "lease",
        "session_ids",
        "metrics",
        "exists",
        "ttl",
        "sweep",
        "index_conversation",
        "list_conversations",
        "drop_conversations",
    }
)


class EncryptedStore(StoreWrapper):
    """``EncryptedStore(store, keys={key_id: secret, ...})``: ``store`` (any
    :class:`~chatstate.StateStore`) with every message encrypted before it is stored.

    - ``keys``: key ids (non-empty str, at most 255 bytes as UTF-8; each stored entry names its
      key by id, in the clear) and their secrets (bytes, at least 32 of them, random: for example
      ``secrets.token_bytes(32)``; keep them out of the code). The first key encrypts what is
      written; every key decrypts. To rotate, put a new key first and keep the old ones until
      nothing written with them is left (sessions expire, are saved anew, or trim their old
      messages away; :meth:`key_id_of` tells which key wrote a stored message); an entry whose
      key was dropped raises :class:`~chatstate.errors.UnknownKeyError`.
    - ``on_tamper``: an entry that fails to decrypt (changed, moved from another session, not
      written by this class, or encrypted under another secret of the same id) ``"raise"``-s
      :class:`~chatstate.errors.DecryptionError` (the default), or is ``"skip"``-ped: left out of
      what a load returns, logged (logger ``chatstate.encrypted``) and counted in
      ``tampered_entries``. Nothing that fails is ever returned.
    - ``message_cache_bytes``: the messages of recently written and read entries are kept, by
      their ciphertext, so a load decrypts only what it has not seen (about two messages a
      turn) instead of its whole window; this bounds the estimated memory they hold (default
      16 MiB; 0 turns it off, and keeps no plaintext in memory beyond what a call returns).
      Every load still reads the stored entries: it never serves an old history.

    It has the optional abilities of ``store`` and only those (summaries, versions, leases,
    snapshots, listings, metrics), each working on decrypted messages. Put a
    :class:`~chatstate.stores.cached.CachedStore` outside it (``CachedStore(EncryptedStore(...))``)
    to keep decrypted histories in memory, or inside to keep only ciphertext there.

    Encryption makes each stored message about 4/3 of its size as JSON plus 100 bytes, which
    counts against a store's ``max_message_bytes`` (and compresses poorly).
    """

    def __init__(
        self,
        inner: StateStore,
        *,
        keys: Mapping[str, bytes],
        on_tamper: Literal["raise", "skip"] = "raise",
        message_cache_bytes: int = 16 << 20,
    ) -> None:
        if not isinstance(inner, StateStore):
            raise ConfigurationError(
                f"EncryptedStore wraps a StateStore; {type(inner).__name__} is not one"
            )
        if on_tamper not in ("raise", "skip"):
            raise ConfigurationError(f'on_tamper must be "raise" or "skip", got {on_tamper!r}')
        super().__init__(inner)
        self._secrets = _checked_keys(keys)
        write_id = next(iter(self._secrets))
        self._write_id = write_id
        encoded = write_id.encode("utf-8")
        self._write_header = bytes((_VERSION, len(encoded))) + encoded
        self._raise = on_tamper == "raise"
        self._aeads: OrderedDict[tuple[str, str], AESGCM] = OrderedDict()
        self._cache_bytes = check_count(message_cache_bytes, name="message_cache_bytes", minimum=0)
        # ciphertext -> (session id, kind, message), least recently used first
        self._opened: OrderedDict[str, tuple[str, bytes, Message]] = OrderedDict()
        self._held = 0
        self.on_tamper = on_tamper
        self.tampered_entries = 0
        """Stored entries that failed to decrypt and were skipped (``on_tamper="skip"``)."""

    def __repr__(self) -> str:
        return f"EncryptedStore({self.store!r}, keys={list(self._secrets)!r})"

    def __getattr__(self, name: str) -> Any:
        store = self.__dict__.get("store")
        if store is not None and hasattr(store, name):
            wrapped = _WRAPPED.get(name)
            if wrapped is not None:
                return getattr(self, wrapped)
            if name in _FORWARDED:
                return getattr(store, name)
            raise AttributeError(
                f"EncryptedStore does not lend {name!r} of the store it wraps through (it may "
                "see encrypted messages); use .store for the store itself",
                name=name,
                obj=self,
            )
        raise AttributeError(
            f"EncryptedStore (over {type(store).__name__}) has no attribute {name!r}",
            name=name,
            obj=self,
        )

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys, the one that encrypts first."""
        return tuple(self._secrets)

    @staticmethod
    def key_id_of(stored: Message) -> str:
        """The id of the key that encrypted ``stored``, a message as the wrapped store holds it;
        raises DecryptionError if it is not an encrypted message."""
        return _unpack(stored, None)[0]

    # -- the StateStore protocol -------------------------------------------------------------

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        session_id = check_session_id(session_id)
        stored: list[Message] = await self.store.load(session_id, limit=limit)
        return self._open(session_id, stored, _MESSAGE)[0] if stored else stored

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        session_id = check_session_id(session_id)
        new = as_messages(messages)
        with _plaintext_on_failure(new):
            await self.store.save(session_id, self._seal(session_id, new), ttl=ttl)

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        session_id = check_session_id(session_id)
        new = as_messages(messages)
        with _plaintext_on_failure(new):
            length: int = await self.store.append(
                session_id, self._seal(session_id, new), max_messages=max_messages, ttl=ttl
            )
        return length

    async def delete(self, session_id: str) -> bool:
        existed: bool = await self.store.delete(session_id)
        return existed

    async def aclose(self) -> None:
        """Close the wrapped store, and forget the derived keys and the remembered messages."""
        self._aeads.clear()
        self._opened.clear()
        self._held = 0
        await self.store.aclose()

    # -- the optional protocols, where the wrapped store has them (see __getattr__) --------

    async def _load_with_summary(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], Message | None]:
        stored, summary = await self.store.load_with_summary(session_id, limit=limit)
        messages = self._open(session_id, stored, _MESSAGE)[0] if stored else []
        return messages, self._open_summary(session_id, summary)

    async def _compact(self, session_id: str, fold: Fold) -> bool:
        session_id = check_session_id(session_id)

        async def sealed_fold(
            history: list[Message], summary: Message | None
        ) -> tuple[int, Message] | None:
            # The wrapped store gets back its own stored history's count, so it knows which
            # entries to remove; skipped entries before the first message kept go with them.
            messages, positions = self._open(session_id, history, _MESSAGE)
            if not messages:
                return None
            result = await run_fold(fold, messages, self._open_summary(session_id, summary))
            if result is None:
                return None
            count, new_summary = result
            return positions[count], self._seal(session_id, [new_summary], _SUMMARY)[0]

        done: bool = await self.store.compact(session_id, sealed_fold)
        return done

    async def _load_versioned(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], int]:
        stored, version = await self.store.load_versioned(session_id, limit=limit)
        return (self._open(session_id, stored, _MESSAGE)[0] if stored else []), version

    async def _append_versioned(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> tuple[int, int]:
        session_id = check_session_id(session_id)
        new = as_messages(messages)
        with _plaintext_on_failure(new):
            appended: tuple[int, int] = await self.store.append_versioned(
                session_id, self._seal(session_id, new), max_messages=max_messages, ttl=ttl
            )
        return appended

    async def _snapshot(self, session_id: str) -> SessionSnapshot | None:
        snapshot: SessionSnapshot | None = await self.store.snapshot(session_id)
        if snapshot is None:
            return None
        return SessionSnapshot(
            messages=self._open(session_id, snapshot.messages, _MESSAGE)[0],
            summary=self._open_summary(session_id, snapshot.summary),
            ttl=snapshot.ttl,
        )

    async def _restore(
        self, session_id: str, snapshot: SessionSnapshot, *, overwrite: bool = False
    ) -> bool:
        session_id = check_session_id(session_id)
        messages, summary, ttl = check_snapshot(snapshot)
        sealed = SessionSnapshot(
            messages=self._seal(session_id, messages),
            summary=None if summary is None else self._seal(session_id, [summary], _SUMMARY)[0],
            ttl=ttl,
        )
        with _plaintext_on_failure(messages):
            done: bool = await self.store.restore(session_id, sealed, overwrite=overwrite)
        return done

    # -- sealing and opening -------------------------------------------------------------------

    def _aead(self, key_id: str, session_id: str) -> AESGCM:
        cache = self._aeads
        aead = cache.get((key_id, session_id))
        if aead is not None:
            cache.move_to_end((key_id, session_id))
            return aead
        hkdf = HKDF(algorithm=SHA256(), length=32, salt=None, info=_LABEL + session_id.encode())
        aead = cache[key_id, session_id] = AESGCM(hkdf.derive(self._secrets[key_id]))
        if len(cache) > _KEYS_KEPT:
            cache.popitem(last=False)
        return aead

    def _seal(
        self, session_id: str, messages: Sequence[Message], kind: bytes = _MESSAGE
    ) -> list[Message]:
        if not messages:
            return []
        header = self._write_header
        associated = header + kind
        encrypt = self._aead(self._write_id, session_id).encrypt
        sealed = []
        for message in messages:
            nonce = os.urandom(_NONCE_BYTES)
            envelope = header + nonce + encrypt(nonce, encode_entry(message), associated)
            content = PREFIX + base64.urlsafe_b64encode(envelope).decode("ascii")
            sealed.append(Message(role="user", content=content))
            if self._cache_bytes:
                self._remember(content, session_id, kind, message)
        return sealed

    def _open(
        self, session_id: str, stored: Sequence[Message], kind: bytes
    ) -> tuple[list[Message], list[int]]:
        """The messages of stored ones that decrypt, and their positions in ``stored``; those
        that do not are raised or skipped, as ``on_tamper`` says."""
        cache = self._opened if self._cache_bytes else None
        opened: list[Message | None] = []
        positions: list[int] = []
        unseen: list[tuple[int, str]] = []  # where in `opened` each of `entries` goes, its text
        entries: list[bytes] = []
        skipped = 0
        for position, message in enumerate(stored):
            content = message.content
            text = content if type(content) is str else ""
            if cache is not None:
                # A ciphertext opens to one message, and only in its own session and place.
                hit = cache.get(text)
                if hit is not None and hit[0] == session_id and hit[1] == kind:
                    cache.move_to_end(text)
                    opened.append(hit[2])
                    positions.append(position)
                    continue
            try:
                entries.append(self._decrypt(session_id, message, kind))
            except DecryptionError:
                if self._raise:
                    raise
                skipped += 1
                continue
            unseen.append((len(opened), text))
            opened.append(None)
            positions.append(position)
        if entries:
            decoded: Sequence[Message | None]
            try:
                decoded, _ = decode_entries(entries, on_corrupt="raise", session_id=session_id)
            except CorruptEntryError:
                # Authentic, yet not a message this chatstate reads (a newer format).
                if self._raise:
                    raise
                decoded = [_decoded_or_none(entry) for entry in entries]
            for (index, text), found in zip(unseen, decoded, strict=True):
                opened[index] = found
                if found is None:
                    skipped += 1
                elif cache is not None:
                    self._remember(text, session_id, kind, found)
        if skipped:
            self.tampered_entries += skipped
            logger.warning(
                "skipped %d entries of session %r that failed to decrypt", skipped, session_id
            )
            if None in opened:
                kept = [(m, p) for m, p in zip(opened, positions, strict=True) if m is not None]
                return [m for m, _ in kept], [p for _, p in kept]
        return cast("list[Message]", opened), positions  # every None was left out above

    def _remember(self, content: str, session_id: str, kind: bytes, message: Message) -> None:
        cache = self._opened
        if content in cache:
            return
        cache[content] = (session_id, kind, message)
        self._held += _cost(content)
        while self._held > self._cache_bytes and cache:
            oldest, _ = cache.popitem(last=False)
            self._held -= _cost(oldest)

    def _open_summary(self, session_id: str, summary: Message | None) -> Message | None:
        if summary is None:
            return None
        opened = self._open(session_id, [summary], _SUMMARY)[0]
        return opened[0] if opened else None

    def _decrypt(self, session_id: str, stored: Message, kind: bytes) -> bytes:
        key_id, header, nonce, sealed = _unpack(stored, session_id)
        if key_id not in self._secrets:
            raise UnknownKeyError(
                f"an encrypted entry of session {session_id!r} names the key {key_id!r}, which "
                "this EncryptedStore was not given (was it rotated out too early?)",
                session_id=session_id,
                key_id=key_id,
            )
        try:
            return self._aead(key_id, session_id).decrypt(nonce, sealed, header + kind)
        except InvalidTag:
            raise DecryptionError(
                f"an encrypted entry of session {session_id!r} failed authentication: it was "
                "changed, moved from another session or from the summary's place, or encrypted "
                f"under another secret of the key id {key_id!r}",
                session_id=session_id,
            ) from None


@contextlib.contextmanager
def _plaintext_on_failure(messages: Sequence[Message]) -> Iterator[None]:
    """A failed write's StateSaveError carries the caller's messages to retry, not their
    ciphertext."""
    try:
        yield
    except StateSaveError as exc:
        exc.messages = tuple(messages)
        raise


def _decoded_or_none(entry: bytes) -> Message | None:
    try:
        return decode_entry(entry)
    except CorruptEntryError:
        return None


def _cost(content: str) -> int:
    """Estimated bytes that remembering an opened message holds: its ciphertext, the message
    (about 3/4 of it) and about 1 KiB of objects around them."""
    return 2 * len(content) + 1024


def _unpack(stored: Message, session_id: str | None) -> tuple[str, bytes, bytes, bytes]:
    """The key id, the header (associated data), the nonce and the sealed entry of a stored
    message; DecryptionError if it is not an envelope."""
    content = stored.content
    if (
        type(content) is not str
        or not content.startswith(PREFIX)
        or stored.role != "user"
        or stored.name is not None
        or stored.metadata
    ):
        raise _not_encrypted(session_id, "it is not an encrypted message")
    try:
        envelope = base64.b64decode(content[len(PREFIX) :], altchars=b"-_", validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise _not_encrypted(session_id, "it is not valid base64") from None
    if len(envelope) < 2 or envelope[0] != _VERSION:
        raise _not_encrypted(
            session_id,
            f"its envelope version is {envelope[0]}, not {_VERSION}" if envelope else "it is empty",
        )
    end = 2 + envelope[1]
    if envelope[1] == 0 or len(envelope) < end + _NONCE_BYTES + _TAG_BYTES:
        raise _not_encrypted(session_id, "it is truncated")
    try:
        key_id = envelope[2:end].decode("utf-8")
    except UnicodeDecodeError:
        raise _not_encrypted(session_id, "its key id is not UTF-8") from None
    return (
        key_id,
        envelope[:end],
        envelope[end : end + _NONCE_BYTES],
        envelope[end + _NONCE_BYTES :],
    )


def _not_encrypted(session_id: str | None, why: str) -> DecryptionError:
    where = "" if session_id is None else f" of session {session_id!r}"
    return DecryptionError(
        f"a stored entry{where} cannot be decrypted: {why}", session_id=session_id
    )
