"""Builders for the ChatKit HTTP and SSE tests: config, tokens, a fake upstream, an SSE reader.

The SSE reader speaks HTTP/1.1 over a raw ``asyncio`` connection, so a test can read a
stream event by event, see its headers, and drop the connection whenever it likes (what a
closing browser tab does). Every read is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import tornado.httpclient
import tornado.httpserver
import tornado.testing

from chatkit import ChatkitExtension
from tests.fake_upstream import FakeUpstream
from tests.support import CLIENT_ID, UPSTREAM_SECRET, make_config, make_services
from tokensvc import Config, Secret, Services
from tokensvc.config import ChatkitConfig

__all__ = [
    "WAIT",
    "SseItem",
    "SseStream",
    "bearer",
    "chatkit_config",
    "events_path",
    "eventually",
    "fetch",
    "mint",
    "new_thread",
    "new_thread_stream",
    "new_ticket",
    "open_events",
    "running_extension",
    "running_fake_upstream",
    "running_services",
    "start_extension",
    "start_fake_upstream",
]

#: The longest any single wait in these tests may take, seconds.
WAIT = 5.0


def chatkit_config(
    upstream_url: str = "echo", *, tokens: dict[str, Any] | None = None, **chatkit: Any
) -> Config:
    """The tests' config with a ``[chatkit]`` section (``upstream_url`` and overrides)."""
    base = make_config(**(tokens or {}))
    settings = dataclasses.replace(ChatkitConfig(), upstream_url=upstream_url, **chatkit)
    return dataclasses.replace(base, chatkit=settings)


async def start_extension(services: Services, **kwargs: Any) -> ChatkitExtension:
    """A started ChatKit extension for ``services`` (kwargs: threads=, upstream=)."""
    extension = ChatkitExtension(services.config, **kwargs)
    await extension.start(services)
    return extension


def start_fake_upstream(fake: FakeUpstream) -> tuple[tornado.httpserver.HTTPServer, str]:
    """Serve ``fake`` on 127.0.0.1 (on the current loop): the server and its ``/v1`` URL."""
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(fake.app())
    server.add_socket(sock)
    return server, f"http://127.0.0.1:{port}/v1"


@contextmanager
def running_fake_upstream(io_loop: Any, fake: FakeUpstream) -> Iterator[str]:
    """``fake`` served on ``io_loop`` for the ``with`` block: its ``/v1`` URL."""
    server, url = start_fake_upstream(fake)
    try:
        yield url
    finally:
        server.stop()
        io_loop.run_sync(server.close_all_connections, timeout=WAIT)


@contextmanager
def running_services(io_loop: Any, config: Config) -> Iterator[Services]:
    """The tests' services for ``config``, their revocation store started on ``io_loop``."""
    built = make_services(config=config)
    io_loop.run_sync(built.revocations.start)
    try:
        yield built
    finally:
        io_loop.run_sync(built.revocations.close)


@contextmanager
def running_extension(
    io_loop: Any, services: Services, **kwargs: Any
) -> Iterator[ChatkitExtension]:
    """A ChatKit extension started on ``io_loop`` (kwargs: threads=, upstream=), then closed."""
    started = io_loop.run_sync(lambda: start_extension(services, **kwargs))
    try:
        yield started
    finally:
        io_loop.run_sync(started.close, timeout=WAIT)


def mint(
    services: Services,
    *,
    user: str = "alice",
    scope: str = "chatkit",
    ttl: int = 600,
    client_id: str = CLIENT_ID,
    secret: str = UPSTREAM_SECRET,
) -> str:
    """A session token straight from the issuer (any scope, any short ttl)."""
    return services.issuer.issue_session(
        client_id=client_id, sub=user, skid="demo", secret=Secret(secret), scope=scope, ttl=ttl
    ).token


async def eventually(check: Callable[[], bool], within: float = WAIT) -> bool:
    """Whether ``check()`` becomes true within ``within`` seconds (polled every 20 ms)."""
    for _ in range(max(1, int(within / 0.02))):
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def fetch(
    client: tornado.httpclient.AsyncHTTPClient, url: str, **kwargs: Any
) -> tornado.httpclient.HTTPResponse:
    """``client.fetch`` that returns error answers, with dict bodies sent as JSON."""
    kwargs.setdefault("raise_error", False)
    kwargs.setdefault("request_timeout", WAIT)
    if isinstance(kwargs.get("body"), dict):
        kwargs["body"] = json.dumps(kwargs["body"])
        kwargs.setdefault("headers", {}).setdefault("Content-Type", "application/json")
    return await client.fetch(url, **kwargs)


async def new_thread(client: Any, base_url: str, token: str) -> str:
    response = await fetch(
        client, base_url + "/chatkit/threads", method="POST", headers=bearer(token), body=""
    )
    assert response.code == 201, response.body
    thread_id: str = json.loads(response.body)["id"]
    return thread_id


async def new_ticket(client: Any, base_url: str, token: str) -> str:
    response = await fetch(
        client, base_url + "/sessions/ticket", method="POST", headers=bearer(token), body=""
    )
    assert response.code == 200, response.body
    ticket: str = json.loads(response.body)["ticket"]
    return ticket


def events_path(thread_id: str, query: str = "") -> str:
    return f"/chatkit/threads/{thread_id}/events" + (f"?{query}" if query else "")


async def new_thread_stream(
    client: Any, base_url: str, port: int, token: str
) -> tuple[str, SseStream]:
    """A new thread of ``token``'s owner and its event stream, opened with the bearer token."""
    thread_id = await new_thread(client, base_url, token)
    return thread_id, await open_events(port, events_path(thread_id), bearer(token))


@dataclass(frozen=True)
class SseItem:
    """One block of an event stream: an event, a comment (``: ping``) or a bare field."""

    event: str | None = None
    id: str | None = None
    data: str | None = None
    comment: str | None = None
    retry: int | None = None

    @property
    def json(self) -> Any:
        assert self.data is not None, self
        return json.loads(self.data)

    @property
    def is_event(self) -> bool:
        return self.data is not None


def _parse_block(lines: list[str]) -> SseItem:
    fields: dict[str, list[str]] = {}
    comments: list[str] = []
    for line in lines:
        if line.startswith(":"):
            comments.append(line[1:].removeprefix(" "))
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))
    data = "\n".join(fields["data"]) if "data" in fields else None
    event = fields["event"][-1] if "event" in fields else None
    if data is not None and event is None:
        event = "message"  # the SSE default event type
    return SseItem(
        event=event,
        id=fields["id"][-1] if "id" in fields else None,
        data=data,
        comment="\n".join(comments) if comments else None,
        retry=int(fields["retry"][-1]) if "retry" in fields else None,
    )


@dataclass
class SseStream:
    """An open ``GET`` on an event stream (or its error answer, when ``status != 200``)."""

    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    body: bytes = b""
    received: list[SseItem] = field(default_factory=list)
    _chunked: bool = False
    _text: str = ""
    _eof: bool = False

    @property
    def error(self) -> Any:
        return json.loads(self.body)

    async def _chunk(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        if not self._chunked:
            return await self.reader.read(65536)
        size_line = await self.reader.readline()
        if not size_line:
            return b""
        size = int(size_line.strip().split(b";")[0], 16)
        if size == 0:
            await self.reader.readline()
            return b""
        chunk = await self.reader.readexactly(size)
        await self.reader.readexactly(2)
        return chunk

    async def next(self, within: float = WAIT) -> SseItem | None:
        """The next block within ``within`` seconds, or None once the stream has ended."""
        async with asyncio.timeout(within):
            while "\n\n" not in self._text:
                if self._eof:
                    return None
                chunk = await self._chunk()
                if not chunk:
                    self._eof = True
                    continue
                self._text += chunk.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        block, self._text = self._text.split("\n\n", 1)
        item = _parse_block(block.split("\n"))
        self.received.append(item)
        return item

    async def until(
        self, stop: str | Callable[[SseItem], bool], within: float = WAIT
    ) -> list[SseItem]:
        """Blocks up to and including the first event named ``stop`` (or matching it)."""
        matches = stop if callable(stop) else (lambda item: item.event == stop)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        items: list[SseItem] = []
        while True:
            item = await self.next(max(0.0, deadline - loop.time()))
            if item is None:
                raise AssertionError(f"stream ended before {stop!r}: {items}")
            items.append(item)
            if matches(item):
                return items

    async def rest(self, within: float = WAIT) -> list[SseItem]:
        """Every block until the server closes the stream (TimeoutError if it does not)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        items: list[SseItem] = []
        while (item := await self.next(max(0.0, deadline - loop.time()))) is not None:
            items.append(item)
        return items

    async def close(self) -> None:
        """Drop the connection (a client going away)."""
        self.writer.close()
        try:
            async with asyncio.timeout(WAIT):
                await self.writer.wait_closed()
        except (ConnectionError, TimeoutError):
            pass


async def open_events(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    within: float = WAIT,
) -> SseStream:
    """``GET path`` on 127.0.0.1:port; returns once the status line and headers are read.

    A non-200 answer's body is read in full into ``body`` and the connection closed.
    """
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, family=socket.AF_INET)
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream",
                 "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        received: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            received[name.strip().lower()] = value.strip()
        stream = SseStream(status, received, reader, writer)
        stream._chunked = received.get("transfer-encoding", "").lower() == "chunked"
        if status != 200:
            length = int(received.get("content-length", "0"))
            stream.body = await reader.readexactly(length) if length else await reader.read()
            await stream.close()
    return stream
