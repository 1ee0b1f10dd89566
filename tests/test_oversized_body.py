"""Bodies over the server-wide limit get a JSON 413, not Tornado's bare 400."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.protected import ProbeExtension
from tests.support import make_app, make_services
from tokensvc.web import MAX_BODY_BYTES


@pytest.fixture
def app(io_loop: Any) -> Any:
    services = make_services()
    io_loop.run_sync(services.revocations.start)
    return make_app(services, [ProbeExtension()])


async def raw_exchange(port: int, head: bytes, body: bytes) -> bytes:
    """Send a request by hand and read until the server closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("path", ["/sessions", "/probe/whoami", "/healthz", "/no-such-route"])
@pytest.mark.gen_test
async def test_a_declared_oversized_body_is_a_json_413_and_is_never_read(
    http_server: Any, http_port: int, path: str
) -> None:
    # Declares 10 GB and sends 10 bytes: the answer comes at once, and the connection
    # closes instead of waiting for (or buffering) the rest.
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {10 * 1024**3}\r\n\r\n"
    ).encode()
    answer = await raw_exchange(http_port, head, b"a" * 10)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"X-Content-Type-Options: nosniff" in headers
    assert b"Referrer-Policy: no-referrer" in headers
    assert json.loads(body)["error"] == "payload_too_large"


@pytest.mark.gen_test
async def test_a_body_just_at_the_limit_reaches_the_handler(
    http_server: Any, http_port: int
) -> None:
    # Exactly MAX_BODY_BYTES is allowed through to /sessions, whose own 64 KiB limit answers.
    head = (
        f"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {MAX_BODY_BYTES}\r\n\r\n"
    ).encode()
    answer = await raw_exchange(http_port, head, b" " * MAX_BODY_BYTES)
    assert answer.startswith(b"HTTP/1.1 401")  # client authentication comes first there
