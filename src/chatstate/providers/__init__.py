"""Model providers: the protocol, and the providers that ship with chatstate."""

from chatstate.providers.base import Provider
from chatstate.providers.scripted import ScriptedProvider, recall_reply

__all__ = ["Provider", "ScriptedProvider", "recall_reply"]
