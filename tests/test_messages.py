from __future__ import annotations

import sys
import zlib
from typing import Any

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from chatstate import (
    ConfigurationError,
    CorruptEntryError,
    ImagePart,
    InvalidMessageError,
    Message,
    TextPart,
    ToolCall,
    UnsupportedFormatError,
)
from chatstate import _compression as compression_module
from chatstate.messages import cache_token_count, cached_token_count, make_message
from chatstate.stores import _codec as codec_module
from chatstate.stores._codec import (
    FORMAT_VERSION,
    EntryCodec,
    decode_entries,
    decode_entry,
    encode_entry,
)
from chatstate.testing import sample_conversation


def test_messages_are_equal_by_value_and_frozen() -> None:
    first = Message(role="user", content="hi", metadata={"a": [1, 2]})
    assert first == Message(role="user", content="hi", metadata={"a": [1, 2]})
    assert first != Message(role="user", content="hi")
    with pytest.raises(ValidationError):
        first.content = "changed"  # type: ignore[misc]


def test_metadata_is_read_only_all_the_way_down() -> None:
    message = Message(role="user", content="hi", metadata={"tags": ["a"], "nested": {"k": 1}})
    with pytest.raises(TypeError):
        message.metadata["new"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        message.metadata["nested"]["k"] = 2  # type: ignore[index, call-overload]
    assert message.metadata["tags"] == ("a",)
    assert message.model_dump()["metadata"] == {"tags": ["a"], "nested": {"k": 1}}


def test_caller_dict_given_as_metadata_is_not_shared() -> None:
    given = {"k": [1]}
    message = Message(role="user", content="hi", metadata=given)
    given["k"].append(2)
    given["other"] = []
    assert message.model_dump()["metadata"] == {"k": [1]}


def test_content_parts_and_text() -> None:
    message = Message(
        role="user",
        content=[
            {"type": "text", "text": "a"},
            {"type": "image_url", "url": "https://x/y.png"},
            TextPart(text="b"),
        ],
    )
    assert message.content == (
        TextPart(text="a"),
        ImagePart(url="https://x/y.png"),
        TextPart(text="b"),
    )
    assert message.text == "ab"
    assert (
        Message(role="assistant", content=None, tool_calls=[ToolCall(id="1", name="f")]).text == ""
    )


def test_tool_call_arguments_are_json_text_and_accept_a_dict() -> None:
    call = ToolCall(id="c", name="f", arguments={"city": "Paris", "n": [1]})
    assert call.arguments == '{"city":"Paris","n":[1]}'
    assert call.args == {"city": "Paris", "n": [1]}
    spaced = ToolCall(id="c", name="f", arguments='{ "city" : "Paris" }')
    assert spaced.arguments == '{ "city" : "Paris" }'  # kept byte for byte
    with pytest.raises(ValidationError, match="JSON"):
        ToolCall(id="c", name="f", arguments="{not json")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"role": "robot", "content": "x"}, "role"),
        ({"role": "user"}, "needs content"),
        ({"role": "user", "content": None}, "needs content"),
        ({"role": "tool", "content": "42"}, "tool_call_id"),
        ({"role": "user", "content": "x", "tool_call_id": "c"}, "only tool messages"),
        (
            {"role": "user", "content": "x", "tool_calls": [{"id": "c", "name": "f"}]},
            "only assistant",
        ),
        (
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "name": "f"}, {"id": "c", "name": "g"}],
            },
            "unique",
        ),
        ({"role": "user", "content": "x", "extra": 1}, "extra"),
        ({"role": "user", "content": 42}, "content"),
        ({"role": "user", "content": "x", "metadata": {"k": object()}}, "metadata"),
        ({"role": "user", "content": "x", "metadata": {"k": [float("inf")]}}, "JSON number"),
        ({"role": "user", "content": "x", "metadata": {"k": float("nan")}}, "JSON number"),
        ({"role": "user", "content": [{"type": "video", "url": "x"}]}, "content"),
        # Lone surrogates: no UTF-8, so no JSON, no provider and no store could carry them.
        ({"role": "user", "content": "caf\udce9"}, "lone surrogate"),
        ({"role": "user", "content": [{"type": "text", "text": "\ud800"}]}, "lone surrogate"),
        ({"role": "user", "content": "x", "name": "\udfff"}, "lone surrogate"),
        ({"role": "tool", "content": "x", "tool_call_id": "c\ud800"}, "lone surrogate"),
        (
            {"role": "assistant", "tool_calls": [{"id": "\ud800", "name": "f"}]},
            "lone surrogate|unicode",  # pydantic's own check, where a length is constrained
        ),
        ({"role": "user", "content": "x", "metadata": {"k": ["\ud800"]}}, "lone surrogate"),
        ({"role": "user", "content": "x", "metadata": {"\ud800": 1}}, "lone surrogate"),
    ],
)
def test_invalid_messages_name_the_problem(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Message(**fields)
    loose = dict(fields)
    role, content = loose.pop("role", None), loose.pop("content", None)
    with pytest.raises(InvalidMessageError, match=problem):
        make_message(role, content, **loose)


def test_entry_envelope_carries_the_format_version() -> None:
    entry = encode_entry(Message(role="user", content="hi"))
    assert entry[0] == 1 and FORMAT_VERSION == 3  # 2: with a token count; 3: encrypted
    assert entry == b'\x01\x00{"role":"user","content":"hi"}'  # defaults are not stored


def test_a_counted_message_is_written_as_version_2_with_its_count() -> None:
    message = Message(role="user", content="hello there")
    cache_token_count(message, 0xBEEF, 70_000)
    entry = encode_entry(message)
    assert entry == b'\x02\x00\xbe\xef\x00\x01\x11\x70{"role":"user","content":"hello there"}'
    loaded = decode_entry(entry)
    assert loaded == message  # the count takes no part in equality
    assert cached_token_count(loaded, 0xBEEF) == 70_000
    assert cached_token_count(loaded, 0xBEEE) is None  # another counter counts again
    assert cached_token_count(Message(role="user", content="hello there"), 0xBEEF) is None
    # compressed, and in a batch mixed with version 1 entries, the count comes back too
    big = Message(role="user", content="many words " * 300)
    cache_token_count(big, 7, 901)
    packed = encode_entry(big, compress_over=100, compression="zlib")
    assert packed[:2] == b"\x02\x10"
    plain = encode_entry(Message(role="user", content="x"))
    for entries in ([entry, plain, entry], [entry, packed, plain]):
        decoded, skipped = decode_entries(entries, on_corrupt="raise", session_id="s")
        assert skipped == 0
        assert [
            cached_token_count(m, f) for m, f in zip(decoded, (0xBEEF, 7, 0xBEEF), strict=True)
        ] == [
            70_000,
            901 if entries[1] is packed else None,
            70_000 if entries[2] is entry else None,
        ]


def test_a_count_too_large_for_the_envelope_is_not_kept() -> None:
    message = Message(role="user", content="x")
    cache_token_count(message, 1, 1 << 32)
    assert cached_token_count(message, 1) is None
    assert encode_entry(message)[0] == 1


def test_a_version_1_entry_written_today_stays_readable() -> None:
    # These bytes are frozen: they are what 0.1.0 writes; every later version must read them.
    stored = (
        b'\x01\x00{"role":"assistant","tool_calls":[{"id":"c1","name":"f","arguments":'
        b'"{\\"a\\":1}"}],"metadata":{"x":[1,{"y":2}]}}'
    )
    assert decode_entry(stored) == Message(
        role="assistant",
        tool_calls=[ToolCall(id="c1", name="f", arguments='{"a":1}')],
        metadata={"x": [1, {"y": 2}]},
    )


@pytest.mark.parametrize("message", sample_conversation(), ids=lambda m: m.role)
def test_every_kind_of_message_round_trips_through_an_entry(message: Message) -> None:
    assert decode_entry(encode_entry(message)) == message


def test_large_entries_can_be_compressed_and_mixed_with_plain_ones() -> None:
    big = Message(role="user", content="the quick brown fox jumps over the lazy dog " * 100)
    small = Message(role="user", content="hi")
    packed = encode_entry(big, compress_over=1024, compression="zlib")
    assert packed[1] >> 4 == 1 and len(packed) < len(encode_entry(big)) / 4
    assert encode_entry(small, compress_over=1024) == encode_entry(small)
    assert [decode_entry(e) for e in (packed, encode_entry(small))] == [big, small]


@pytest.mark.parametrize(
    ("entry", "error", "problem"),
    [
        (b"", CorruptEntryError, "too short"),
        (b"\x01", CorruptEntryError, "too short"),
        (b"\x00\x00{}", CorruptEntryError, "invalid format version 0"),
        (b"\x03\x00{}", UnsupportedFormatError, "encrypted"),
        (b"\x04\x00{}", UnsupportedFormatError, "format version 4"),
        (b"\x02\x00\x00\x01\x00\x00", CorruptEntryError, "too short"),
        (b"\x02\x00\x00\x01\x00\x00\x00\x05[]", CorruptEntryError, "not a valid message"),
        (b"\x01\x05{}", UnsupportedFormatError, "codec 5"),
        (b"\x01\x70{}", UnsupportedFormatError, "compression 7"),
        (b"\x01\x10not zlib", CorruptEntryError, "decompress"),
        (b"\x01\x00{not json", CorruptEntryError, "not a valid message"),
        (b'\x01\x00{"role":"robot","content":"x"}', CorruptEntryError, "role"),
        (b"\x01\x10" + zlib.compress(b"[]"), CorruptEntryError, "not a valid message"),
    ],
)
def test_bad_entries_raise_typed_errors(entry: bytes, error: type[Exception], problem: str) -> None:
    with pytest.raises(error, match=problem):
        decode_entry(entry)


def test_decode_entries_skips_or_raises_by_policy() -> None:
    good = [encode_entry(Message(role="user", content=str(i))) for i in range(3)]
    entries = [good[0], b"\x01\x00garbage", good[1], b"\x09\x00{}", good[2]]
    messages, skipped = decode_entries(entries, on_corrupt="skip", session_id="s")
    assert [m.text for m in messages] == ["0", "1", "2"] and skipped == 2
    with pytest.raises(CorruptEntryError) as caught:
        decode_entries(entries, on_corrupt="raise", session_id="s")
    assert caught.value.session_id == "s"


def test_decoding_many_entries_at_once_never_changes_what_each_entry_means() -> None:
    good = [encode_entry(Message(role="user", content=str(i))) for i in range(3)]
    big = encode_entry(Message(role="user", content="many words " * 200), compress_over=100)
    mixed = [good[0], big, good[1]]
    assert decode_entries(mixed, on_corrupt="raise", session_id="s")[0] == [
        decode_entry(entry) for entry in mixed
    ]
    # One entry holding two messages' JSON is corrupt, not two messages; nor do two halves of a
    # message, each corrupt on its own, make one.
    two_in_one = b'\x01\x00{"role":"user","content":"a"},{"role":"user","content":"b"}'
    first_half, second_half = b'\x01\x00{"role":"user"', b'\x01\x00"content":"c"}'
    for entries, texts in [
        ([good[0], two_in_one, good[1]], ["0", "1"]),
        ([first_half, second_half], []),
        ([good[0], b'\x01\x00{"role":"user","content":"x"', good[2]], ["0", "2"]),
    ]:
        messages, skipped = decode_entries(entries, on_corrupt="skip", session_id="s")
        assert [m.text for m in messages] == texts
        assert skipped == len(entries) - len(texts)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    role=st.sampled_from(["system", "user", "assistant"]),
    content=st.text() | st.lists(st.builds(TextPart, text=st.text()), max_size=3),
    name=st.none() | st.text(min_size=1),
    metadata=st.dictionaries(st.text(max_size=8), _json, max_size=4),
    compress_over=st.none() | st.integers(min_value=0, max_value=200),
)
def test_any_message_round_trips_through_an_entry(
    role: Any, content: Any, name: str | None, metadata: dict[str, Any], compress_over: int | None
) -> None:
    message = Message(role=role, content=content, name=name, metadata=metadata)
    assert decode_entry(encode_entry(message, compress_over=compress_over)) == message


def _distinct(count: int, start: int = 0) -> list[Message]:
    return [Message(role="user", content=f"message {index}") for index in range(start, count)]


def test_the_codec_decodes_only_entries_it_has_not_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = codec_module.decode_aligned

    def counting(entries: Any, **options: Any) -> Any:
        decoded.append(len(entries))
        return real(entries, **options)

    monkeypatch.setattr(codec_module, "decode_aligned", counting)
    writer, reader = EntryCodec(), EntryCodec()
    entries = writer.encode(_distinct(20), session_id="s")
    assert writer.decode(entries, on_corrupt="raise", session_id="s") == (_distinct(20), 0)
    assert decoded == []  # what it wrote, it knows
    assert reader.decode(entries, on_corrupt="raise", session_id="s") == (_distinct(20), 0)
    assert reader.decode(entries, on_corrupt="raise", session_id="s") == (_distinct(20), 0)
    window = entries[2:] + writer.encode(_distinct(22, 20), session_id="s")
    assert reader.decode(window, on_corrupt="raise", session_id="s") == (_distinct(22, 2), 0)
    assert decoded == [20, 2]  # the first read, then only the new turn
    longer = entries[:2] + window  # older entries, then the window
    assert reader.decode(longer, on_corrupt="raise", session_id="s") == (_distinct(22), 0)
    assert decoded == [20, 2, 2]
    edited = window[:5] + writer.encode(_distinct(1, 0), session_id="s") + window[6:]
    expected = _distinct(7, 2) + _distinct(1) + _distinct(22, 8)
    assert reader.decode(edited, on_corrupt="raise", session_id="s") == (expected, 0)
    # Bytes the window holds, in the same order, are served: the rest is decoded.
    assert reader.decode(entries[:3], on_corrupt="raise", session_id="other")[0] == (
        _distinct(3)
    )  # windows are per session


def test_the_codec_keeps_positions_around_corrupt_entries() -> None:
    codec = EntryCodec()
    good = codec.encode(_distinct(3))
    fresh = encode_entry(Message(role="user", content="not seen yet"))
    entries = [good[0], b"\x01\x00garbage", fresh, good[1], b"\x01\x00{}", good[2]]
    messages, skipped = codec.decode(entries, on_corrupt="skip", session_id="s")
    assert [m.text for m in messages] == ["message 0", "not seen yet", "message 1", "message 2"]
    assert skipped == 2
    with pytest.raises(CorruptEntryError):
        codec.decode(entries, on_corrupt="raise", session_id="s")


def test_the_codec_cache_is_bounded_and_drops_the_least_recently_used() -> None:
    codec = EntryCodec(cache_bytes=20_000)
    live = codec.encode(_distinct(5), session_id="live")
    for start in range(5, 200, 5):
        codec.decode(live, on_corrupt="raise", session_id="live")  # its window stays in use
        codec.encode(_distinct(start + 5, start), session_id=f"other {start}")
        assert codec._cache.held <= 20_000
    assert all(entry in codec._cache for entry in live)
    assert len(codec._cache) < 30
    one = EntryCodec(cache_bytes=20_000)  # a window over the budget on its own keeps its newest
    entries = one.encode(_distinct(40), session_id="s")
    assert one._cache.held <= 20_000
    assert entries[-1] in one._cache and entries[0] not in one._cache
    assert one.decode(entries, on_corrupt="raise", session_id="s") == (_distinct(40), 0)
    off = EntryCodec(cache_bytes=0)
    assert off.decode(off.encode(_distinct(3)), on_corrupt="raise", session_id="s")[0] == (
        _distinct(3)
    )
    assert not len(off._cache)


def test_long_loads_bypass_the_codec_cache() -> None:
    writer, reader = EntryCodec(), EntryCodec()
    entries = writer.encode(_distinct(300))
    assert reader.decode(entries, on_corrupt="raise", session_id="s") == (_distinct(300), 0)
    assert not len(reader._cache)  # an unbounded history does not push the windows out
    assert (
        reader.decode(entries[-20:], on_corrupt="raise", session_id="s")[0]
        == (_distinct(300)[-20:])
    )
    assert len(reader._cache) == 20


def test_deeply_nested_values_get_a_short_clear_error() -> None:
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidMessageError, match="maximum validation depth") as caught:
        make_message("user", "x", metadata={"k": deep})
    assert len(str(caught.value)) < 300
    # Stored by someone else: the deep entry is skipped, the readable rest loads.
    nested = b"[" * 100_000 + b"]" * 100_000
    entry = b'\x01\x00{"role":"user","content":"x","metadata":{"k":' + nested + b"}}"
    readable = encode_entry(Message(role="user", content="ok"))
    messages, skipped = decode_entries([readable, entry], on_corrupt="skip", session_id="s")
    assert [m.text for m in messages] == ["ok"] and skipped == 1


_PROSE = " ".join(str(kind.__doc__) for kind in (str, dict, list, int, float, bytes, set))


def test_entries_of_every_compression_load_together() -> None:
    big = Message(role="user", content=_PROSE[:3000])
    small = Message(role="user", content="hi")
    zlib_entry = encode_entry(big, compress_over=1024, compression="zlib")
    zstd_entry = encode_entry(big, compress_over=1024, compression="zstd")
    assert zlib_entry[1] >> 4 == 1 and zstd_entry[1] >> 4 == 2
    assert len(zstd_entry) < 0.6 * len(encode_entry(big))  # real text: about half
    entries = [zlib_entry, encode_entry(small, compress_over=1024), zstd_entry]
    assert decode_entries(entries, on_corrupt="raise", session_id="s") == ([big, small, big], 0)
    reader = EntryCodec()  # writes zlib, reads anything
    assert reader.decode(entries, on_corrupt="raise", session_id="s") == ([big, small, big], 0)


def test_without_zstandard_zstd_entries_are_unsupported_not_corrupt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prose = Message(role="user", content=_PROSE[:3000])
    entry = encode_entry(prose, compress_over=1, compression="zstd")
    monkeypatch.setattr(compression_module, "_zstd", None)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # `import zstandard` fails
    with pytest.raises(UnsupportedFormatError, match=r"chatstate\[zstd\]"):
        decode_entry(entry)
    with pytest.raises(ConfigurationError, match=r"chatstate\[zstd\]"):
        EntryCodec(compression="zstd")
    with pytest.raises(ConfigurationError, match="'auto', 'zlib' or 'zstd'"):
        EntryCodec(compression="lz4")  # type: ignore[arg-type]
    assert EntryCodec(compress_over=1).encode([prose])[0][1] >> 4 == 1  # "auto": zlib then


def test_an_entry_that_would_decompress_to_a_bomb_is_corrupt() -> None:
    flood = b"\x00" * (80 << 20)  # 80 MiB of zeros packs into a few kilobytes
    for entry in (
        b"\x01\x10" + zlib.compress(flood, 9),
        b"\x01\x20" + zstandard.ZstdCompressor().compress(flood),
        b"\x01\x20" + zstandard.ZstdCompressor(write_content_size=False).compress(flood),
    ):
        assert len(entry) < 100_000
        with pytest.raises(CorruptEntryError, match=r"64 MiB|does not decompress"):
            decode_entry(entry)


def _nested(depth: int, leaf: Any = "x") -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"k": leaf}
    return leaf


def test_metadata_as_deep_as_can_be_read_back_is_taken_and_deeper_refused() -> None:
    """A message is refused if its JSON would be deeper than a reader parses: written, it could
    never be loaded again by any instance (it would be skipped as corrupt)."""
    deepest = Message(role="user", content="hi", metadata={"a": _nested(198)})
    assert decode_entry(encode_entry(deepest)) == deepest
    codec = EntryCodec(cache_bytes=0)
    assert codec.decode(codec.encode([deepest]), on_corrupt="raise", session_id="s") == (
        [deepest],
        0,
    )
    with pytest.raises(InvalidMessageError, match="nested more than 199 levels"):
        make_message("user", "hi", metadata={"a": _nested(199)})
