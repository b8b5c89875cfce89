"""The PostgreSQL store (the ``postgres`` extra): history in the database most apps already run,
one round trip per call, every write one server-side transaction.

:class:`PostgresStateStore` is the store core over :class:`PostgresBackend`, whose parts are
private modules: ``_schema`` (creating and migrating the layout of ``schema.sql`` in a schema of
the store's own), ``_backend`` (every operation as one statement on a pooled asyncpg connection
of ``_pool``; the statements that are not function calls in ``_queries``) and ``_errors`` (what
asyncpg's exceptions mean).
"""

try:
    import asyncpg  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "PostgresStateStore needs asyncpg: pip install 'chatstate[postgres]'"
    ) from exc

from chatstate.stores.postgres._backend import PostgresBackend, no_reset
from chatstate.stores.postgres._errors import NotSent, error_kind
from chatstate.stores.postgres._schema import SCHEMA_VERSION
from chatstate.stores.postgres._store import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    PostgresStateStore,
)

__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "SCHEMA_VERSION",
    "NotSent",
    "PostgresBackend",
    "PostgresStateStore",
    "error_kind",
    "no_reset",
]
