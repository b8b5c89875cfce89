"""The SQLite store: history in one file that survives a restart, with no server to run.

:class:`SQLiteStateStore` is the store core over :class:`SQLiteBackend`, whose parts are private
modules: ``_schema`` (the tables, opening a file), ``_rows`` (a session's row, its gaps, its
metadata row, write ids and fence), ``_transactions`` (every operation as one transaction;
``_pop``, ``_editing``, ``_meta`` and ``_conversations`` beside it: the pop, the history
operations' page and edit, the metadata write, and the conversation index) and ``_thread`` (the
thread that owns the connection and runs them).
"""

from chatstate.stores.sqlite._schema import SCHEMA_VERSION
from chatstate.stores.sqlite._store import SQLiteBackend, SQLiteStateStore

__all__ = ["SCHEMA_VERSION", "SQLiteBackend", "SQLiteStateStore"]
