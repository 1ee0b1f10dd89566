"""chatkit.sse: encoding that no value can break out of, and Last-Event-ID parsing."""

from __future__ import annotations

import re

import pytest

from chatkit.sse import MAX_EVENT_ID, encode_comment, encode_event, parse_last_event_id


def parse_stream(raw: bytes) -> list[dict[str, str]]:
    """A browser's view of a stream, after the WHATWG event-stream interpretation rules."""
    events: list[dict[str, str]] = []
    data: list[str] = []
    fields: dict[str, str] = {}
    for line in re.split(r"\r\n|\r|\n", raw.decode("utf-8")):
        if line == "":
            if data:
                events.append({**fields, "data": "\n".join(data)})
            data, fields = [], {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name in ("event", "id", "retry"):
            fields[name] = value
        else:
            fields.setdefault("unknown", name)
    return events


def test_encodes_fields_in_order() -> None:
    frame = encode_event('{"text": "hi"}', event="delta", id="7", retry=2000)
    assert frame == b'id: 7\nevent: delta\ndata: {"text": "hi"}\nretry: 2000\n\n'


def test_data_only() -> None:
    assert encode_event("x") == b"data: x\n\n"


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        ("a\nb", ["a", "b"]),
        ("a\r\nb", ["a", "b"]),
        ("a\rb", ["a", "b"]),
        ("a\n\nb", ["a", "", "b"]),
        ("a\r\n\rb\n", ["a", "", "b", ""]),
        ("", [""]),
    ],
)
def test_data_is_split_on_every_line_break(data: str, lines: list[str]) -> None:
    assert encode_event(data) == "".join(f"data: {line}\n" for line in lines).encode() + b"\n"


@pytest.mark.parametrize(
    "data",
    [
        "one\n\nevent: evil\nid: 99\ndata: injected",
        "\r\nretry: 1\r\n\r\n",
        "  leading spaces survive",
        ": not a comment",
        "unicode ✓ \u2028 line separator is not an SSE line break",
    ],
)
def test_data_cannot_inject_fields_or_events(data: str) -> None:
    (event,) = parse_stream(encode_event(data, event="delta", id="3"))
    assert event == {"id": "3", "event": "delta", "data": re.sub(r"\r\n|\r", "\n", data)}


@pytest.mark.parametrize("bad", ["1\n2", "1\r2", "1\r\n2", "\n", "1\x002"])
def test_rejects_line_breaks_and_nul_in_id(bad: str) -> None:
    with pytest.raises(ValueError, match="id"):
        encode_event("x", id=bad)


@pytest.mark.parametrize("bad", ["delta\nid: 1", "a\rb", "a\r\nb", "\n"])
def test_rejects_line_breaks_in_event(bad: str) -> None:
    with pytest.raises(ValueError, match="event"):
        encode_event("x", event=bad)


def test_retry_must_be_a_non_negative_int() -> None:
    with pytest.raises(ValueError, match="retry"):
        encode_event("x", retry=-1)
    with pytest.raises(TypeError, match="retry"):
        encode_event("x", retry=True)
    with pytest.raises(TypeError, match="retry"):
        encode_event("x", retry="1000")  # type: ignore[arg-type]


def test_output_is_utf8() -> None:
    assert encode_event("é") == "data: é\n\n".encode()


def test_comment() -> None:
    assert encode_comment("ping") == b": ping\n\n"
    assert parse_stream(encode_comment("ping")) == []


@pytest.mark.parametrize("text", ["a\nb", "a\r\nb", "a\rb", "x\n\ndata: evil\n\n"])
def test_comment_lines_all_stay_comments(text: str) -> None:
    raw = encode_comment(text)
    assert all(line.startswith(b": ") for line in raw.split(b"\n") if line)
    assert parse_stream(raw) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("42", 42),
        ("007", 7),
        (str(MAX_EVENT_ID), MAX_EVENT_ID),
    ],
)
def test_parse_last_event_id_accepts_decimal_ids(value: str, expected: int) -> None:
    assert parse_last_event_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        " ",
        " 1",
        "1 ",
        "-1",
        "+1",
        "1.0",
        "1e3",
        "0x10",
        "abc",
        "1\n",
        "\u0661\u0662",  # Arabic-Indic digits: int() would accept them
        "\u00b2",  # superscript two: str.isdigit() would accept it
        "\uff11",  # fullwidth one
        "1_000",
        str(2**63),
        str(2**64),
        "9" * 5000,  # longer than int() accepts: must not raise
    ],
)
def test_parse_last_event_id_rejects_everything_else(value: str | None) -> None:
    assert parse_last_event_id(value) is None
