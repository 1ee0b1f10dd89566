"""A pure Server-Sent Events encoder, after sse-starlette's ``event.py``.

Nothing here knows about Tornado or sockets: the functions turn values into the bytes of one
SSE block, and the caller writes and flushes them. Encoding follows the WHATWG
"server-sent events" grammar, where a line ends at CRLF, a lone CR or a lone LF.

Field injection is the risk: a line break inside a value would end the field early and let
the rest of the value become a field of its own (``id``, ``event``, ``retry``, or a second
event). So:

- ``data`` and comments are split on every line break and each piece gets its own
  ``data:`` / ``:`` line, so a browser rebuilds the same text (line breaks become ``\\n``)
  and nothing in it can become a field.
- ``id`` and ``event`` are short server-chosen names (event ids are decimal counters, event
  kinds are fixed words). A line break in one is a bug, not data, so it is **rejected with
  ValueError** rather than stripped: stripping would silently send a different id, which the
  browser would hand back in ``Last-Event-ID``. An ``id`` containing NUL is rejected too,
  because browsers ignore such a field and the client would resume from the wrong place.
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_EVENT_ID",
    "encode_comment",
    "encode_event",
    "parse_last_event_id",
]

# The SSE grammar's end-of-line: CRLF first so it counts as one break, not two.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_ID = re.compile(r"[\r\n\x00]")
_FORBIDDEN_IN_EVENT = re.compile(r"[\r\n]")

# Event ids are per-thread counters; Redis INCR stops at a signed 64-bit integer.
MAX_EVENT_ID = 2**63 - 1
# len(str(MAX_EVENT_ID)) is 19. A bound on the length keeps int() cheap on hostile input
# (CPython refuses strings over 4300 digits with ValueError, but only after scanning them).
_MAX_ID_DIGITS = 20
# ASCII only: str.isdigit() and int() also accept superscripts and non-Latin digits.
_DECIMAL = re.compile(r"[0-9]+")


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event as UTF-8 bytes, terminated by the blank line that dispatches it.

    ``data`` may contain any line breaks: each line becomes its own ``data:`` field.
    Raises ValueError if ``id`` contains CR, LF or NUL, if ``event`` contains CR or LF, or
    if ``retry`` is negative; TypeError if ``retry`` is not an int.
    """
    lines: list[str] = []
    if id is not None:
        if _FORBIDDEN_IN_ID.search(id):
            raise ValueError("SSE id must not contain CR, LF or NUL")
        lines.append(f"id: {id}")
    if event is not None:
        if _FORBIDDEN_IN_EVENT.search(event):
            raise ValueError("SSE event name must not contain CR or LF")
        lines.append(f"event: {event}")
    # The one space after the colon is removed by the parser, so leading spaces in the
    # value survive.
    lines.extend(f"data: {chunk}" for chunk in _LINE_BREAK.split(data))
    if retry is not None:
        # bool is an int subclass; "retry: True" would be nonsense on the wire.
        if not isinstance(retry, int) or isinstance(retry, bool):
            raise TypeError("SSE retry must be an int (milliseconds)")
        if retry < 0:
            raise ValueError("SSE retry must not be negative")
        lines.append(f"retry: {retry}")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def encode_comment(text: str) -> bytes:
    """Encode a comment block (``: text``), e.g. a keep-alive ``: ping``.

    Browsers ignore comments; they keep proxies and load balancers from timing out an idle
    stream. Every line of ``text`` becomes its own comment line, so no part of it can be
    read as a field.
    """
    body = "\n".join(f": {chunk}" for chunk in _LINE_BREAK.split(text))
    return (body + "\n\n").encode("utf-8")


def parse_last_event_id(value: str | None) -> int | None:
    """Parse a ``Last-Event-ID`` header into an event id, or None to start at the live tail.

    Only plain ASCII decimal numbers from 0 to :data:`MAX_EVENT_ID` are accepted; anything
    else (absent, empty, signs, spaces, other digits, too large) gives None. Never raises:
    the header comes straight from the client.
    """
    if value is None or len(value) > _MAX_ID_DIGITS or not _DECIMAL.fullmatch(value):
        return None
    number = int(value)
    if number > MAX_EVENT_ID:
        return None
    return number
