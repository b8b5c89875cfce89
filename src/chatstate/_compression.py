"""Compression of stored entries: zlib from the standard library, zstd with the ``zstd`` extra.

An entry's envelope names the compression it was written with, so entries of either kind (and
plain ones) load together, whatever the store writes today.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

from chatstate.errors import ConfigurationError, CorruptEntryError, UnsupportedFormatError

Compression: TypeAlias = Literal["auto", "zlib", "zstd"]
"""``"auto"``: zstd where the zstandard package is installed (the ``redis`` extra brings it), else
zlib."""

NONE, ZLIB, ZSTD = 0, 1, 2
"""The compression ids of the entry envelope."""

MAX_DECOMPRESSED = 64 << 20
"""An entry that would decompress to more (64 MiB) is corrupt or hostile, not a message."""

_ZSTD_MISSING = "the zstandard package is not installed (pip install 'chatstate[zstd]')"


class _Zstd(threading.local):
    """zstandard's compressor and decompressor objects (about twice as fast as its one-shot
    functions) are not for concurrent use: one pair per thread."""

    def __init__(self) -> None:
        import zstandard

        self.module: Any = zstandard
        self.compress: Callable[[bytes], bytes] = zstandard.ZstdCompressor(level=3).compress
        self.decompressor: Any = zstandard.ZstdDecompressor()


_zstd: _Zstd | None = None


def _zstandard() -> _Zstd | None:
    global _zstd
    if _zstd is None:
        try:
            _zstd = _Zstd()
        except ImportError:
            return None
    return _zstd


def compressor(name: object) -> tuple[int, Callable[[bytes], bytes]]:
    """The envelope id and the compress function of ``name`` ("auto", "zlib" or "zstd")."""
    if name == "auto":
        name = "zstd" if _zstandard() is not None else "zlib"
    if name == "zlib":
        return ZLIB, _zlib_compress
    if name == "zstd":
        zstd = _zstandard()
        if zstd is None:
            raise ConfigurationError(f"compression='zstd' cannot be used: {_ZSTD_MISSING}")
        return ZSTD, lambda data: zstd.compress(data)  # the thread's own compressor
    raise ConfigurationError(f"compression must be 'auto', 'zlib' or 'zstd', got {name!r}")


def _zlib_compress(data: bytes) -> bytes:
    return zlib.compress(data, 6)


def decompress(kind: int, data: bytes) -> bytes:
    """The payload of an entry compressed with ``kind``; CorruptEntryError when it is damaged or
    would be larger than :data:`MAX_DECOMPRESSED`, UnsupportedFormatError for an unknown kind."""
    if kind == ZLIB:
        inflater = zlib.decompressobj()
        try:
            payload = inflater.decompress(data, MAX_DECOMPRESSED)
        except zlib.error as exc:
            raise CorruptEntryError(f"stored entry does not decompress: {exc}") from exc
        if inflater.unconsumed_tail:
            raise CorruptEntryError("stored entry decompresses to more than 64 MiB")
        return payload
    if kind == ZSTD:
        zstd = _zstandard()
        if zstd is None:
            raise UnsupportedFormatError(f"stored entry is zstd-compressed, and {_ZSTD_MISSING}")
        try:
            size = zstd.module.frame_content_size(data)
            if size > MAX_DECOMPRESSED:
                raise CorruptEntryError("stored entry decompresses to more than 64 MiB")
            unpacked: bytes = zstd.decompressor.decompress(data, max_output_size=MAX_DECOMPRESSED)
        except zstd.module.ZstdError as exc:
            raise CorruptEntryError(f"stored entry does not decompress: {exc}") from exc
        return unpacked
    raise UnsupportedFormatError(f"stored entry uses unknown compression {kind}")
