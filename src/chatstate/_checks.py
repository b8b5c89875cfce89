"""Checks of the arguments every store and middleware take, in one place so all agree."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from chatstate.errors import ConfigurationError, InvalidSessionIdError

MAX_SESSION_ID_LENGTH = 256
_INFINITY = float("inf")

# C0 and C1 control characters, DEL, and lone surrogates (which cannot be encoded as UTF-8).
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is a valid session id, else raise InvalidSessionIdError."""
    # The common case, fast: printable text holds no control character and no surrogate.
    if type(session_id) is str and 0 < len(session_id) <= MAX_SESSION_ID_LENGTH:
        if session_id.isprintable():
            return session_id
    if type(session_id) is not str:
        if not isinstance(session_id, str):
            raise InvalidSessionIdError(
                f"session id must be a str, got {type(session_id).__name__}"
            )
        session_id = str(session_id)
    if not session_id:
        raise InvalidSessionIdError("session id must not be empty")
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise InvalidSessionIdError(
            f"session id is {len(session_id)} characters long; the limit is {MAX_SESSION_ID_LENGTH}"
        )
    bad = _FORBIDDEN.search(session_id)
    if bad is not None:
        raise InvalidSessionIdError(
            f"session id contains the control or invalid character U+{ord(bad.group()):04X} "
            f"at index {bad.start()}"
        )
    return session_id


def check_max_messages(max_messages: object, *, name: str = "max_messages") -> int | None:
    """Normalise a bound on the number of messages: a positive int, or None/-1 for unlimited."""
    if max_messages is None:
        return None
    if type(max_messages) is not int:
        raise ConfigurationError(
            f"{name} must be an int (or None / -1 for unlimited), got {type(max_messages).__name__}"
        )
    if max_messages == -1:
        return None
    if max_messages < 1:
        raise ConfigurationError(
            f"{name} must be at least 1, or -1 for unlimited; got {max_messages}"
        )
    return max_messages


def check_limit(limit: object) -> int | None:
    """Normalise the ``limit`` of a load: a positive int, or None for everything."""
    if limit is None:
        return None
    if type(limit) is not int or limit < 0:
        raise ConfigurationError(f"limit must be a non-negative int or None, got {limit!r}")
    return limit


def check_ttl(ttl: object, *, name: str = "ttl") -> float | None:
    """Normalise a time to live to seconds: a positive timedelta or number, or None for never."""
    if ttl is None:
        return None
    if type(ttl) is int or type(ttl) is float:  # the common case, without the slower checks
        if 0 < ttl < _INFINITY:
            return float(ttl)
        raise ConfigurationError(f"{name} must be positive and finite, got {ttl!r}")
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise ConfigurationError(
            f"{name} must be a timedelta, a number of seconds or None, got {type(ttl).__name__}"
        )
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigurationError(f"{name} must be positive and finite, got {ttl!r}")
    return seconds


def check_count(value: object, *, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int of at least ``minimum``, else raise ConfigurationError."""
    if type(value) is not int or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def redact_url(url: str) -> str:
    """The URL without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"


def check_on_corrupt(value: object) -> Literal["skip", "raise"]:
    """A store's ``on_corrupt``: ``"skip"`` or ``"raise"``."""
    if value == "skip" or value == "raise":
        return value
    raise ConfigurationError(f"on_corrupt must be 'skip' or 'raise', got {value!r}")
