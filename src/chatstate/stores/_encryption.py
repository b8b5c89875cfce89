"""Encryption at rest, the codec's last stage: what a store keeps is ciphertext.

``InMemoryStateStore(encryption=Encryption(keys={"2025-06": secret}))`` (or the same option on any
store, or ``open_store(url, encryption=...)``) seals each entry after it is serialised and
compressed, so neither the store nor whoever reads its backend (a Redis dump, a replica, a backup,
the SQLite file) sees any of the history: text, roles, names, tool calls and metadata alike. Every
entry is sealed on its own with AES-256-GCM under a key derived (HKDF-SHA256) from the secret and
the session id, so an entry moved to another session, edited, or put in the place of the summary
fails to decrypt and is never returned.

An encrypted entry (format version 3)::

    byte 0     3
    byte 1     the length n of the key id
    n bytes    the key id (UTF-8)
    12 bytes   a random nonce
    then       the ciphertext of the plain entry (format 1 or 2, compressed or not) and the
               16-byte tag
    associated the first 2 + n bytes, and one byte telling a history entry (0) from the
    data       session's summary (1)

Entries written by chatstate 0.1.0's ``EncryptedStore`` (a plain entry holding a message whose
content is ``"chatstate-encrypted:" + base64url(envelope)``, the envelope as above but with
version byte 1 and the plain entry of the message inside) are read too, under the same keys.

What stays visible: session ids, key ids, how many messages a session holds and roughly how long
each is, and when it was written. Within its own session an entry can still be dropped, repeated
or moved by someone who can write to the store (the order is not sealed); it cannot be read,
changed, forged or carried to another session or role.
"""

from __future__ import annotations

import base64
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from chatstate.errors import ConfigurationError, DecryptionError, UnknownKeyError
from chatstate.stores._envelope import ENCRYPTED

if TYPE_CHECKING:
    from chatstate.messages import Message

__all__ = ["HISTORY", "LEGACY_PREFIX", "METADATA", "SUMMARY", "Encryption"]

LEGACY_PREFIX: Final = "chatstate-encrypted:"
"""What the content of a message sealed by 0.1.0's EncryptedStore starts with."""

_LEGACY_VERSION = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
_LABEL = b"chatstate/session-key/v1\x00"
_MIN_SECRET_BYTES = 32
_MAX_KEY_ID_BYTES = 255
_KEYS_KEPT = 4096
"""Derived (key id, session) keys kept at hand: deriving one costs a few microseconds."""

HISTORY: Final = b"\x00"
SUMMARY: Final = b"\x01"
METADATA: Final = b"\x02"


class Encryption:
    """The keys a store encrypts with, and what it does with an entry that fails to decrypt.

    - ``keys``: key ids (non-empty str, at most 255 bytes as UTF-8; each stored entry names its
      key by id, in the clear) and their secrets (bytes, at least 32 of them, random: for example
      ``secrets.token_bytes(32)``; keep them out of the code). The first key encrypts what is
      written; every key decrypts. To rotate, put a new key first and keep the old ones until
      nothing written with them is left; :meth:`key_id_of` tells which key wrote a stored entry.
      An entry whose key is not given raises :class:`~chatstate.errors.UnknownKeyError`, always
      (it is not damaged: a key is missing).
    - ``on_tamper``: an entry that fails authentication (changed, moved from another session or
      from the summary's place, or encrypted under another secret of the same id)
      ``"raise"``-s :class:`~chatstate.errors.DecryptionError` (the default) or is ``"skip"``-ped:
      left out of what a load returns, logged and counted in the store's ``corrupt_entries``. A
      fold or a snapshot never skips: nothing unread is ever summarised away or copied short.

    Needs the ``encryption`` extra (the cryptography package). Encryption adds 30 bytes and the
    key id to each entry; compression (the stage before) still works.
    """

    __slots__ = ("_aeads", "_header", "_secrets", "_write_id", "on_tamper")

    def __init__(
        self, *, keys: Mapping[str, bytes], on_tamper: Literal["raise", "skip"] = "raise"
    ) -> None:
        _crypto()  # a clear error now, not at the first write, without the extra
        if on_tamper not in ("raise", "skip"):
            raise ConfigurationError(f'on_tamper must be "raise" or "skip", got {on_tamper!r}')
        self._secrets = _checked_keys(keys)
        self._write_id = next(iter(self._secrets))
        encoded = self._write_id.encode("utf-8")
        self._header = bytes((ENCRYPTED, len(encoded))) + encoded
        self._aeads: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.on_tamper: Literal["raise", "skip"] = on_tamper

    def __repr__(self) -> str:
        return f"Encryption(keys={list(self._secrets)!r}, on_tamper={self.on_tamper!r})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys, the one that encrypts first."""
        return tuple(self._secrets)

    @staticmethod
    def key_id_of(entry: bytes) -> str:
        """The id of the key that sealed a stored entry; DecryptionError if it is not one."""
        return _split(entry, None)[0]

    def seal(self, entry: bytes, session_id: str, kind: bytes = HISTORY) -> bytes:
        """``entry`` (a plain entry), sealed for ``session_id`` as history or summary."""
        header = self._header
        nonce = os.urandom(_NONCE_BYTES)
        sealed: bytes = self._aead(self._write_id, session_id).encrypt(nonce, entry, header + kind)
        return header + nonce + sealed

    def open(self, entry: bytes, session_id: str, kind: bytes = HISTORY) -> bytes:
        """The plain entry sealed in ``entry``; DecryptionError (UnknownKeyError for a key not
        given) if it does not open in this session and place."""
        key_id, header, nonce, sealed = _split(entry, session_id)
        return self._decrypt(key_id, header, nonce, sealed, session_id, kind)

    def open_legacy(self, message: Message, session_id: str, kind: bytes = HISTORY) -> bytes:
        """The plain entry inside a message sealed by 0.1.0's EncryptedStore."""
        content = message.content
        if (
            type(content) is not str
            or message.role != "user"
            or message.name is not None
            or message.metadata
        ):
            raise _not_sealed(session_id, "it is not an encrypted message")
        try:
            envelope = base64.b64decode(
                content[len(LEGACY_PREFIX) :], altchars=b"-_", validate=True
            )
        except ValueError:  # binascii.Error, or non-ASCII text
            raise _not_sealed(session_id, "it is not valid base64") from None
        if envelope[:1] != bytes((_LEGACY_VERSION,)):
            raise _not_sealed(session_id, "its envelope version is not 1")
        key_id, header, nonce, sealed = _split(envelope, session_id, _LEGACY_VERSION)
        return self._decrypt(key_id, header, nonce, sealed, session_id, kind)

    def _decrypt(
        self, key_id: str, header: bytes, nonce: bytes, sealed: bytes, session_id: str, kind: bytes
    ) -> bytes:
        if key_id not in self._secrets:
            raise UnknownKeyError(
                f"an encrypted entry of session {session_id!r} names the key {key_id!r}, which "
                "this store was not given (was it rotated out too early?)",
                session_id=session_id,
                key_id=key_id,
            )
        try:
            plain: bytes = self._aead(key_id, session_id).decrypt(nonce, sealed, header + kind)
        except _crypto().InvalidTag:
            raise DecryptionError(
                f"an encrypted entry of session {session_id!r} failed authentication: it was "
                "changed, moved from another session or from the summary's place, or encrypted "
                f"under another secret of the key id {key_id!r}",
                session_id=session_id,
            ) from None
        return plain

    def _aead(self, key_id: str, session_id: str) -> Any:
        cache = self._aeads
        aead = cache.get((key_id, session_id))
        if aead is not None:
            cache.move_to_end((key_id, session_id))
            return aead
        crypto = _crypto()
        hkdf = crypto.HKDF(
            algorithm=crypto.SHA256(), length=32, salt=None, info=_LABEL + session_id.encode()
        )
        aead = cache[key_id, session_id] = crypto.AESGCM(hkdf.derive(self._secrets[key_id]))
        if len(cache) > _KEYS_KEPT:
            cache.popitem(last=False)
        return aead


class _Crypto:
    """The cryptography names this module uses, imported once, on first use."""

    def __init__(self) -> None:
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.hashes import SHA256
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        except ImportError as exc:
            raise ConfigurationError(
                "encryption needs the cryptography package: pip install 'chatstate[encryption]'"
            ) from exc
        self.InvalidTag, self.AESGCM, self.SHA256, self.HKDF = InvalidTag, AESGCM, SHA256, HKDF


_loaded: list[_Crypto] = []


def _crypto() -> _Crypto:
    if not _loaded:
        _loaded.append(_Crypto())
    return _loaded[0]


def _split(
    envelope: bytes, session_id: str | None, version: int = ENCRYPTED
) -> tuple[str, bytes, bytes, bytes]:
    """The key id, the header (associated data), the nonce and the sealed entry of an envelope;
    DecryptionError if it is not one."""
    if len(envelope) < 2 or envelope[0] != version:
        raise _not_sealed(session_id, "it is not an encrypted entry")
    end = 2 + envelope[1]
    if envelope[1] == 0 or len(envelope) < end + _NONCE_BYTES + _TAG_BYTES:
        raise _not_sealed(session_id, "it is truncated")
    try:
        key_id = envelope[2:end].decode("utf-8")
    except UnicodeDecodeError:
        raise _not_sealed(session_id, "its key id is not UTF-8") from None
    return (
        key_id,
        envelope[:end],
        envelope[end : end + _NONCE_BYTES],
        envelope[end + _NONCE_BYTES :],
    )


def _not_sealed(session_id: str | None, why: str) -> DecryptionError:
    where = "" if session_id is None else f" of session {session_id!r}"
    return DecryptionError(
        f"a stored entry{where} cannot be decrypted: {why}", session_id=session_id
    )


def _checked_keys(keys: object) -> dict[str, bytes]:
    """The keys, checked and copied; errors name a key by its id, never show a secret."""
    if not isinstance(keys, Mapping):
        raise ConfigurationError(
            f"keys must be a mapping of key id to secret bytes, got {type(keys).__name__}"
        )
    if not keys:
        raise ConfigurationError("keys must hold at least one key (the first one encrypts)")
    checked: dict[str, bytes] = {}
    for index, (key_id, secret) in enumerate(keys.items()):
        if not isinstance(key_id, str):
            raise ConfigurationError(
                f"key ids must be str; key number {index + 1} has a {type(key_id).__name__} id"
            )
        if not key_id:
            raise ConfigurationError(f"key ids must not be empty (key number {index + 1})")
        try:
            size = len(key_id.encode("utf-8"))
        except UnicodeEncodeError:
            raise ConfigurationError(
                f"key id number {index + 1} is not valid Unicode (it holds a lone surrogate)"
            ) from None
        if size > _MAX_KEY_ID_BYTES:
            raise ConfigurationError(
                f"key id number {index + 1} is {size} bytes as UTF-8; the limit is "
                f"{_MAX_KEY_ID_BYTES}"
            )
        if not isinstance(secret, bytes):
            raise ConfigurationError(
                f"the secret of key {key_id!r} must be bytes, got {type(secret).__name__} "
                "(decode text first, for example with bytes.fromhex or base64.b64decode)"
            )
        if len(secret) < _MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"the secret of key {key_id!r} is {len(secret)} bytes long; it must be at least "
                f"{_MIN_SECRET_BYTES} random bytes (secrets.token_bytes(32))"
            )
        checked[key_id] = bytes(secret)
    return checked
