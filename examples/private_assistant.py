"""A private assistant with no server: history in a SQLite file, encrypted at rest, surviving a
restart; then a branch of the conversation and an export of the user's data.

Run it with `python examples/private_assistant.py` (needs `pip install "chatstate[encryption]"`).
The key comes from $CHATSTATE_KEY (64 hex digits) or, for this demo, is made up on the spot.
"""

import asyncio
import os
import secrets
import tempfile
from pathlib import Path

from chatstate import (
    Encryption,
    Pipeline,
    ProviderMiddleware,
    ScriptedProvider,
    SQLiteStateStore,
    StateMiddleware,
    StateMiddlewareConfig,
    export_sessions,
    fork_session,
)

KEY = bytes.fromhex(os.environ.get("CHATSTATE_KEY") or secrets.token_hex(32))


def open_store(path: Path) -> SQLiteStateStore:
    return SQLiteStateStore(path, encryption=Encryption(keys={"2026-11": KEY}))


async def turn(store: SQLiteStateStore, session_id: str, text: str) -> str:
    async with Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(max_messages=20)),
        ProviderMiddleware(ScriptedProvider()),
    ) as pipe:
        result = await pipe.execute_with_session(session_id, "user", text)
    return result.response.text


async def main() -> None:
    path = Path(tempfile.mkdtemp()) / "assistant.db"

    async with open_store(path) as store:  # the first run of the app
        print("user: My name is Ada")
        print("assistant:", await turn(store, "ada", "My name is Ada"))

    async with open_store(path) as store:  # the app restarted: the file remembers
        print("user: What's my name?")
        print("assistant:", await turn(store, "ada", "What's my name?"))
        raw = b"".join(file.read_bytes() for file in path.parent.iterdir())
        print("the file holds the name in plain text:", b"Ada" in raw)

        await fork_session(store, "ada", "ada-branch")  # try another path of the conversation
        print("assistant (branch):", await turn(store, "ada-branch", "What's my name?"))

        async for line in export_sessions(store, ["ada"]):  # the user's data, decrypted
            print("export:", line[:72] + "...")


if __name__ == "__main__":
    asyncio.run(main())
