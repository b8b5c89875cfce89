"""Commands that must reach the node owning a slot together, on one connection, in one write.

redis-py's asyncio cluster client (8.1) follows an ASK redirection by sending ``ASKING`` as a
command of its own and the redirected command as another, each on whichever of the node's idle
connections comes first: with two or more idle, the command lands on a connection that did not
send ASKING, the importing node answers MOVED back to the source, which answers ASK again, and
the call fails after 16 tries ("TTL exhausted"). So during a live resharding every call on a
session whose keys had all moved failed until the slot's move was over.

:func:`run_on_owner` sends ``ASKING`` (after an ASK) and the commands in one write on one
connection of the slot's node, and follows MOVED (the slot map updated), ASK and TRYAGAIN (a
slot whose keys are split between two nodes mid-move: Redis runs no multi-key command, and so no
script of ours, until a session's keys are together again) itself. The durable writes use it
for the script and its WAIT; the cluster transport falls back to it for a call that redis-py
gave up on that way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import AskError, MovedError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatstate.stores.redis._transport import Command, CommandNotSent

__all__ = ["REDIRECTIONS", "run_on_owner"]

REDIRECTIONS = 16
"""Redirections (MOVED, ASK, TRYAGAIN) followed before giving up, as redis-py does."""


def _slot(client: RedisCluster, command: Command) -> int:
    # EVALSHA/EVAL sha numkeys key...; every other command of ours has its key first.
    key = command[3] if str(command[0]).upper() in ("EVALSHA", "EVAL") else command[1]
    return client.keyslot(key)


async def run_on_owner(
    client: RedisCluster, commands: Sequence[Command], *, slot_of: Command | None = None
) -> list[Any]:
    """The replies of ``commands`` (an error reply as its exception), sent together to the node
    that owns the slot of ``slot_of`` (the first command's by default)."""
    await client.initialize()  # at once, unless a failure (below) asked for it
    slot = _slot(client, slot_of or commands[0])
    node: ClusterNode | None = client.nodes_manager.get_node_from_slot(slot)
    asking = False
    for redirection in range(REDIRECTIONS):
        if node is None:
            break
        sent = [PipelineCommand(0, "ASKING")] if asking else []
        sent += [PipelineCommand(index + 1, *command) for index, command in enumerate(commands)]
        try:
            try:
                await node.execute_pipeline(sent)
            except AttributeError as exc:  # see _transport._closed_under_it
                raise RedisConnectionError(f"a cluster connection was closed ({exc})") from exc
        except (RedisConnectionError, RedisTimeoutError):
            # As redis-py does for its own commands: the slot map is read again before the next
            # command (a replica may be taking over), once, under the client's own lock. (Not
            # its disconnect of the node's idle connections: that races with a task taking one
            # of them, which then writes to a closed connection.)
            client._initialize = True
            raise
        replies = [command.result for command in sent[-len(commands) :]]
        first = replies[0]
        asking = False
        if isinstance(first, MovedError):
            await client.nodes_manager.move_slot(first)
            node = client.nodes_manager.get_node_from_slot(slot)
        elif isinstance(first, AskError):
            node = client.get_node(host=first.host, port=first.port)
            asking = True
        elif isinstance(first, TryAgainError):
            await asyncio.sleep(0.01 * (redirection + 1))
        else:
            return replies
    raise CommandNotSent(f"slot {slot}: no node took the command after {REDIRECTIONS} tries")
