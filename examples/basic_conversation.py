"""A multi-turn conversation with memory, on the in-memory store and the offline provider.

Run it with `make demo` (or `python examples/basic_conversation.py`); it needs no server and no
network. The second turn remembers the first, another session knows nothing of it, and the stored
history never grows past `max_messages`.
"""

import asyncio
from datetime import timedelta

from chatstate import (
    InMemoryStateStore,
    Pipeline,
    ProviderMiddleware,
    ScriptedProvider,
    StateMiddleware,
    StateMiddlewareConfig,
)


async def main() -> None:
    async with InMemoryStateStore() as store:
        config = StateMiddlewareConfig(max_messages=6, ttl=timedelta(hours=24))
        pipe = Pipeline(
            StateMiddleware(store, config),
            ProviderMiddleware(ScriptedProvider(), system_prompt="You are a helpful assistant."),
        )

        async def say(session_id: str, text: str) -> None:
            result = await pipe.execute_with_session(session_id, "user", text)
            print(f"[{session_id}] user:      {text}")
            print(f"[{session_id}] assistant: {result.response.content}")

        async with pipe:  # owns what goes on after the turns (summaries, when they are on)
            print("Two turns of one session: the second remembers the first.")
            await say("user-123", "My name is Alice")
            await say("user-123", "What's my name?")

            print("\nAnother session is isolated from it.")
            await say("user-456", "What's my name?")

            print(f"\nHistory is bounded: max_messages={config.max_messages}.")
            for text in ("I live in Paris", "My favourite colour is blue", "How many messages?"):
                await say("user-123", text)
            await say("user-123", "What's my name?")  # the turn that told it was trimmed away
        history = await store.load("user-123")
        print(f"\nStored history of user-123 ({len(history)} messages):")
        for message in history:
            print(f"  {message.role:>9}: {message.text}")


if __name__ == "__main__":
    asyncio.run(main())
