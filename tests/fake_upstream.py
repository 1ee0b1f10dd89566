"""A small OpenAI-compatible upstream for tests, as a Tornado application.

``POST /chat/completions`` streams ``data: {chunk}`` lines in the OpenAI chunk format and
ends with ``data: [DONE]``; ``POST /chatkit/sessions`` answers a session. The fake records
what it received (Authorization, OpenAI-Beta, JSON bodies) and can be told to fail:

- ``mode = "fail"``: 500 with a body containing :data:`LEAK_MARKER` (and the caller's key,
  the way real APIs quote a bad key back);
- ``mode = "hang"``: accept the request and never answer;
- ``mode = "stall"``: send the first delta, then wait without ending the stream.

``closed`` is set when a client drops its connection before the answer is complete; a
parked handler waits for it (at most :data:`PARK_LIMIT` seconds), so none outlives a test.

:func:`serve_in_thread` runs the fake on its own event loop in a thread, for tests whose
tokensvc is another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.iostream import StreamClosedError

LEAK_MARKER = "upstream-body-marker-7f3a"
DEFAULT_DELTAS = ("Hel", "lo, ", "wor", "ld!")
SESSION_SECRET = "cs_fake_from_upstream"
SESSION_EXPIRES_AT = 1_900_000_000
PARK_LIMIT = 10.0
THREAD_START_LIMIT = 10.0


@dataclass
class Recorded:
    """One request as the fake saw it."""

    path: str
    authorization: str | None
    openai_beta: str | None
    body: Any


@dataclass
class FakeUpstream:
    """Behaviour switches and recordings shared by the fake's handlers."""

    deltas: tuple[str, ...] = DEFAULT_DELTAS
    mode: str = "ok"
    requests: list[Recorded] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> tornado.web.Application:
        return tornado.web.Application(
            [
                (r"/v1/chat/completions", CompletionsHandler, {"fake": self}),
                (r"/v1/chatkit/sessions", SessionsHandler, {"fake": self}),
            ]
        )


class _FakeHandler(tornado.web.RequestHandler):
    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake

    def on_connection_close(self) -> None:
        self.fake.closed.set()

    async def park(self) -> None:
        """Wait until the client goes away (bounded, so no handler outlives a test)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.fake.closed.wait(), PARK_LIMIT)

    def record(self) -> Any:
        body = json.loads(self.request.body or b"null")
        self.fake.requests.append(
            Recorded(
                path=self.request.path,
                authorization=self.request.headers.get("Authorization"),
                openai_beta=self.request.headers.get("OpenAI-Beta"),
                body=body,
            )
        )
        return body

    async def misbehave(self) -> bool:
        """Act out the failure modes; True when the request has been dealt with."""
        if self.fake.mode == "fail":
            self.set_status(500)
            self.finish(
                {"error": {"message": f"{LEAK_MARKER} {self.request.headers.get('Authorization')}"}}
            )
            return True
        if self.fake.mode == "hang":
            await self.park()
            return True
        return False


class CompletionsHandler(_FakeHandler):
    async def post(self) -> None:
        body = self.record()
        if await self.misbehave():
            return
        self.set_header("Content-Type", "text/event-stream")
        try:
            for index, delta in enumerate(self.fake.deltas):
                await self._chunk(body["model"], {"content": delta}, None)
                if index == 0 and self.fake.mode == "stall":
                    await self.park()
                    return
            await self._chunk(body["model"], {}, "stop")
            self.write("data: [DONE]\n\n")
            await self.flush()
        except StreamClosedError:
            self.fake.closed.set()

    async def _chunk(self, model: str, delta: dict[str, str], finish: str | None) -> None:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        self.write(f"data: {json.dumps(chunk)}\n\n")
        await self.flush()


class SessionsHandler(_FakeHandler):
    async def post(self) -> None:
        self.record()
        if await self.misbehave():
            return
        self.finish(
            {
                "id": "cksess_fake",
                "object": "chatkit.session",
                "client_secret": SESSION_SECRET,
                "expires_at": SESSION_EXPIRES_AT,
            }
        )


@contextlib.contextmanager
def serve_in_thread(fake: FakeUpstream) -> Iterator[str]:
    """Serve ``fake`` on 127.0.0.1 from a thread with its own loop: its ``/v1`` URL.

    Only the thread's loop touches the fake's handlers; the caller may flip ``fake.mode``
    between requests.
    """
    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        (sock,) = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(fake.app())
        server.add_sockets([sock])
        state["port"] = sock.getsockname()[1]
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = stop = asyncio.Event()
        started.set()
        try:
            await stop.wait()
        finally:
            server.stop()
            await asyncio.wait_for(server.close_all_connections(), PARK_LIMIT)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True,
                              name="fake-upstream")
    thread.start()
    if not started.wait(THREAD_START_LIMIT):
        raise AssertionError("the fake upstream did not start")
    try:
        yield f"http://127.0.0.1:{state['port']}/v1"
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(PARK_LIMIT + 5)
