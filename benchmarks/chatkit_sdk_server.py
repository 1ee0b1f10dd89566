"""The official ``openai-chatkit`` SDK's ``ChatKitServer`` with an echo model, for benchmarks.

The peer that ``benchmarks/bench_chatkit.py`` holds ``POST /chatkit`` against: what a user
of the SDK would write for the same job. A ``ChatKitServer`` subclass over an in-memory
:class:`MemoryStore`, whose ``respond()`` echoes the user's text word by word exactly as
tokensvc's echo model does (``chatkit/upstream.py``: the same regular expression, so the
same deltas, and an ``asyncio.sleep(0)`` between words, its pacing with the default delay
of 0), mounted the way the SDK's guide mounts it (``server.process(body, context)``, a
``StreamingResponse`` for streams) on Starlette, which the SDK depends on already, and
served by uvicorn, one process.

With ``--reuse-request-adapter`` the server parses requests with one ``TypeAdapter`` made
at import instead of the new one ``ChatKitServer.process()`` (SDK 1.6.5) builds for every
request, which makes pydantic generate the schema of every request type each time: the SDK
as it could be, rather than as it ships.

It runs only in the SDK's own venv (``.chatkit-sdk-venv``): the SDK's import name is
``chatkit``, this project's too, so it must run isolated (``python -I``) and away from the
repository root. It prints one ready line, ``chatkit-sdk listening on http://HOST:PORT
(loop ..., http ...)``, once the socket accepts, and serves until SIGTERM or SIGINT.

Run: ``.chatkit-sdk-venv/bin/python -I benchmarks/chatkit_sdk_server.py [--port 0]``
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import re
import socket
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import uvicorn
from chatkit.server import ChatKitServer, NonStreamingResult, StreamingResult
from chatkit.store import NotFoundError, Store
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    Attachment,
    ChatKitReq,
    Page,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
    is_streaming_req,
)
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

__all__ = ["EchoChatKitServer", "MemoryStore", "ReusedAdapterServer", "make_app"]

# chatkit/upstream.py's _WORDS: a word with the whitespace before (only at the start) and
# after it, or only whitespace, so "".join(pieces) == text.
WORDS = re.compile(r"\s*\S+\s*|\s+")


class MemoryStore(Store[Any]):
    """Threads and items in dicts; items of a thread in insertion order."""

    def __init__(self) -> None:
        self.threads: dict[str, ThreadMetadata] = {}
        self.items: dict[str, dict[str, ThreadItem]] = {}
        self.attachments: dict[str, Attachment] = {}

    async def load_thread(self, thread_id: str, context: Any) -> ThreadMetadata:
        try:
            return self.threads[thread_id]
        except KeyError:
            raise NotFoundError(f"thread {thread_id} not found") from None

    async def save_thread(self, thread: ThreadMetadata, context: Any) -> None:
        self.threads[thread.id] = ThreadMetadata(**thread.model_dump())
        self.items.setdefault(thread.id, {})

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: Any
    ) -> Page[ThreadItem]:
        items = list(self.items.get(thread_id, {}).values())
        if order == "desc":
            items.reverse()
        start = 0
        if after is not None:
            ids = [item.id for item in items]
            start = ids.index(after) + 1 if after in ids else len(ids)
        chosen = items[start : start + limit]
        has_more = start + limit < len(items)
        return Page(data=chosen, has_more=has_more, after=chosen[-1].id if has_more else None)

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: Any
    ) -> Page[ThreadMetadata]:
        threads = sorted(self.threads.values(), key=lambda t: t.created_at,
                         reverse=order == "desc")
        start = 0
        if after is not None:
            ids = [thread.id for thread in threads]
            start = ids.index(after) + 1 if after in ids else len(ids)
        chosen = threads[start : start + limit]
        has_more = start + limit < len(threads)
        return Page(data=chosen, has_more=has_more, after=chosen[-1].id if has_more else None)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: Any) -> None:
        self.items.setdefault(thread_id, {})[item.id] = item

    async def save_item(self, thread_id: str, item: ThreadItem, context: Any) -> None:
        self.items.setdefault(thread_id, {})[item.id] = item

    async def load_item(self, thread_id: str, item_id: str, context: Any) -> ThreadItem:
        try:
            return self.items[thread_id][item_id]
        except KeyError:
            raise NotFoundError(f"item {item_id} not found") from None

    async def delete_thread(self, thread_id: str, context: Any) -> None:
        self.threads.pop(thread_id, None)
        self.items.pop(thread_id, None)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: Any) -> None:
        self.items.get(thread_id, {}).pop(item_id, None)

    async def save_attachment(self, attachment: Attachment, context: Any) -> None:
        self.attachments[attachment.id] = attachment

    async def load_attachment(self, attachment_id: str, context: Any) -> Attachment:
        try:
            return self.attachments[attachment_id]
        except KeyError:
            raise NotFoundError(f"attachment {attachment_id} not found") from None

    async def delete_attachment(self, attachment_id: str, context: Any) -> None:
        self.attachments.pop(attachment_id, None)


class EchoChatKitServer(ChatKitServer[Any]):
    """Replies with the user's text, word by word, as tokensvc's echo model does."""

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: Any
    ) -> AsyncIterator[ThreadStreamEvent]:
        text = ""
        if input_user_message is not None:
            text = "".join(part.text for part in input_user_message.content)
        item = AssistantMessageItem(
            id=self.store.generate_item_id("message", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            content=[],
        )
        yield ThreadItemAddedEvent(item=item)
        yield ThreadItemUpdatedEvent(
            item_id=item.id,
            update=AssistantMessageContentPartAdded(
                content_index=0, content=AssistantMessageContent(text="")
            ),
        )
        for index, piece in enumerate(WORDS.findall(text)):
            if index:
                await asyncio.sleep(0)  # EchoUpstream's pacing with its default delay, 0
            yield ThreadItemUpdatedEvent(
                item_id=item.id,
                update=AssistantMessageContentPartTextDelta(content_index=0, delta=piece),
            )
        content = AssistantMessageContent(text=text)
        yield ThreadItemUpdatedEvent(
            item_id=item.id,
            update=AssistantMessageContentPartDone(content_index=0, content=content),
        )
        yield ThreadItemDoneEvent(item=item.model_copy(update={"content": [content]}))


_REQUEST: TypeAdapter[ChatKitReq] = TypeAdapter(ChatKitReq)


class ReusedAdapterServer(EchoChatKitServer):
    """``process()`` as the SDK's, but with one request adapter for every request."""

    async def process(
        self, request: str | bytes | bytearray, context: Any
    ) -> StreamingResult | NonStreamingResult:
        parsed = _REQUEST.validate_json(request)
        if is_streaming_req(parsed):
            return StreamingResult(self._process_streaming(parsed, context))
        return NonStreamingResult(await self._process_non_streaming(parsed, context))


def make_app(server: ChatKitServer[Any]) -> Starlette:
    """``POST /chatkit`` for ``server``, as the SDK's guide writes it."""

    async def chatkit_endpoint(request: Request) -> Response:
        result = await server.process(await request.body(), {})
        if isinstance(result, StreamingResult):
            return StreamingResponse(result, media_type="text/event-stream")
        return Response(content=result.json, media_type="application/json")

    return Starlette(routes=[Route("/chatkit", chatkit_endpoint, methods=["POST"])])


def _implementations() -> tuple[str, str]:
    """The event loop and HTTP parser uvicorn's ``auto`` settings pick here."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                        help="uvicorn's access log, one line per request (default: on)")
    parser.add_argument("--reuse-request-adapter", action="store_true",
                        help="parse requests with one TypeAdapter (see the module docstring)")
    args = parser.parse_args()
    sdk = sys.modules[ChatKitServer.__module__].__file__ or ""
    if "site-packages" not in sdk:
        raise SystemExit(f"chatkit_sdk_server: 'chatkit' is not the SDK here ({sdk})")

    # The socket is bound here so that --port 0 gives a port this process can report. Its
    # proto must be IPPROTO_TCP, as uvicorn's own would be: asyncio turns Nagle's algorithm
    # off (TCP_NODELAY) only on connections of such a socket, and with it on, each answer
    # on a keep-alive connection would wait some 40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    loop, http = _implementations()
    server = (ReusedAdapterServer if args.reuse_request_adapter else EchoChatKitServer)(
        MemoryStore()
    )
    config = uvicorn.Config(make_app(server), log_level="info", access_log=args.access_log,
                            loop="auto", http="auto", lifespan="off")
    uvicorn_server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(uvicorn_server.serve(sockets=[sock]))
        # uvicorn.Server has no ready callback; `started` is its own flag.
        while not uvicorn_server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if uvicorn_server.started:
            print(f"chatkit-sdk listening on http://{host}:{port} (loop {loop}, http {http})",
                  flush=True)
        await task

    if loop == "uvloop":
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
