from __future__ import annotations

from collections.abc import Sequence

import pytest

from chatstate import (
    ConfigurationError,
    Message,
    Provider,
    ProviderError,
    ScriptedProvider,
    ToolCall,
)
from chatstate.providers import recall_reply


def _conversation(*user_texts: str) -> list[Message]:
    return [Message(role="user", content=text) for text in user_texts]


@pytest.mark.parametrize(
    ("said", "asked", "answer"),
    [
        ("My name is Alice", "What's my name?", "Your name is Alice."),
        ("my name is alice.", "what is my name", "Your name is alice."),
        ("Hi! Call me Al, please.", "Who am I?", "Your name is Al."),
        ("I live in New York and I like it", "Where do I live?", "You live in New York."),
        (
            "My favourite colour is blue, by the way",
            "What is my favourite colour?",
            "Your favourite colour is blue.",
        ),
        ("Hello there", "What's my name?", "I don't know your name yet."),
    ],
)
def test_recall_answers_from_earlier_messages(said: str, asked: str, answer: str) -> None:
    assert recall_reply(_conversation(said, asked)) == answer


def test_later_facts_override_earlier_ones() -> None:
    messages = _conversation("My name is Alice", "Actually my name is Bea", "What's my name?")
    assert recall_reply(messages) == "Your name is Bea."


def test_recall_knows_only_what_it_is_given() -> None:
    assert recall_reply(_conversation("What's my name?")) == "I don't know your name yet."
    assert recall_reply([]) == "Hello! How can I help?"


def test_other_questions_and_statements() -> None:
    assert recall_reply(_conversation("a", "b", "How many messages?")).startswith("I can see 2")
    assert recall_reply(_conversation("first!", "x", "What did I first say?")) == (
        "You first said: first!"
    )
    assert recall_reply(_conversation("My name is Zoe")) == "Nice to meet you, Zoe!"
    assert recall_reply(_conversation("The sky")) == "You said: The sky"


async def test_a_script_is_replayed_in_order_then_runs_out() -> None:
    call = Message(role="assistant", content=None, tool_calls=[ToolCall(id="1", name="f")])
    provider = ScriptedProvider(["one", call])
    assert await provider.complete(_conversation("a")) == Message(role="assistant", content="one")
    assert await provider.complete(_conversation("b")) == call
    with pytest.raises(ProviderError, match="ran out of replies after 2"):
        await provider.complete(_conversation("c"))
    assert provider.call_count == 3 and [c[0].text for c in provider.calls] == ["a", "b", "c"]


async def test_a_responder_function_may_be_sync_or_async() -> None:
    async def shout(messages: Sequence[Message]) -> str:
        return messages[-1].text.upper()

    assert (await ScriptedProvider(shout).complete(_conversation("hi"))).text == "HI"
    sync = ScriptedProvider(lambda messages: str(len(messages)))
    assert (await sync.complete(_conversation("a", "b"))).text == "2"


async def test_calls_are_kept_only_up_to_a_limit() -> None:
    provider = ScriptedProvider(keep_calls=2)
    for text in "abc":
        await provider.complete(_conversation(text))
    assert [c[0].text for c in provider.calls] == ["b", "c"]


def test_it_is_a_provider_and_rejects_bad_options() -> None:
    assert isinstance(ScriptedProvider(), Provider)
    with pytest.raises(ConfigurationError):
        ScriptedProvider(latency=-1)
    with pytest.raises(ConfigurationError, match="single"):
        ScriptedProvider("just one")  # type: ignore[arg-type]


async def test_a_scripted_reply_streams_a_word_at_a_time_then_the_whole_message() -> None:
    calling = Message(role="assistant", content=None, tool_calls=(ToolCall(id="c", name="f"),))
    provider = ScriptedProvider(["  Hello,  wide world. ", calling])
    chunks = [chunk async for chunk in provider.stream([Message(role="user", content="hi")])]
    assert [chunk.text for chunk in chunks] == ["  Hello,  ", "wide ", "world. ", ""]
    assert chunks[-1].message == Message(role="assistant", content="  Hello,  wide world. ")
    assert all(chunk.message is None for chunk in chunks[:-1])
    chunks = [chunk async for chunk in provider.stream([])]
    assert [(chunk.text, chunk.message) for chunk in chunks] == [("", calling)]
    assert provider.call_count == 2
