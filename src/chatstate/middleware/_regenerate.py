"""A turn run again (:meth:`chatstate.Pipeline.regenerate`): what the state middleware does
differently for it.

Before the model: the session's newest user message becomes the turn's message, the history is
what came before it. After the model, in the turn's save: the old reply (everything after that
user message) is removed, conditional on the version read (the turn holds the session's lock or
lease, so no turn of the pipeline comes between), and the new reply is appended. A model that
fails leaves the old reply in place.
"""

from __future__ import annotations

from chatstate.errors import ConfigurationError, InvalidInputError
from chatstate.messages import Message
from chatstate.pipeline import RequestContext
from chatstate.stores.base import SessionHistory, StateStore

__all__ = ["drop_old_reply", "load_last_turn"]

_KEY = "chatstate.regenerate"
_MAX_PAGE = 10_000


async def load_last_turn(store: StateStore, context: RequestContext, limit: int | None) -> None:
    """Set the turn's message, incoming messages and history from the stored session, and
    remember what the save has to remove."""
    if not isinstance(store, SessionHistory):
        raise ConfigurationError(
            f"regenerate needs a store with history operations; {type(store).__name__} has none"
        )
    page = await store.history(context.session_id, limit=_MAX_PAGE)
    stored = page.messages
    last = next(
        (at for at in range(len(stored) - 1, -1, -1) if stored[at].message.role == "user"), None
    )
    if last is None:
        raise InvalidInputError(
            f"session {context.session_id!r} has no user message to answer again"
        )
    user = stored[last]
    history: list[Message] = [each.message for each in stored[:last]]
    if limit is not None:
        history = history[-limit:] if limit else []
    context.history = history
    context.message = user.message
    context.incoming = (user.message,)
    context.new_messages = []  # the user's message is stored already
    if last + 1 < len(stored):  # an old reply to remove
        context.state[_KEY] = (user.id, user.message, page.version)


async def drop_old_reply(store: StateStore, context: RequestContext) -> None:
    """Remove the old reply of a regenerated turn (if any), before its new one is appended."""
    old = context.state.pop(_KEY, None)
    if old is None:
        return
    message_id, message, version = old
    assert isinstance(store, SessionHistory)
    await store.edit_message(
        context.session_id, message_id, message, truncate_after=True, if_version=version
    )
