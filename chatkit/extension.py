"""The ChatKit extension: its shared state, its routes and its lifecycle."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import tornado.web

from chatkit.handlers import (
    ChatkitSessionHandler,
    EventsHandler,
    MessagesHandler,
    ThreadHandler,
    ThreadsHandler,
)
from chatkit.replies import ReplyTasks
from chatkit.streams import StreamRegistry
from chatkit.threads import THREAD_ID_PATTERN, ThreadStore
from chatkit.upstream import Upstream, make_upstream
from tokensvc import BaseHandler, Config, RateLimiter, Services

__all__ = ["STATIC_DIR", "ChatkitExtension", "ChatkitState"]

STATIC_DIR = Path(__file__).parent / "static"


# StaticFileHandler's own head(path) serves HEAD here; BaseHandler's takes any arguments.
class StaticHandler(tornado.web.StaticFileHandler, BaseHandler):  # type: ignore[misc]
    """The browser client's files, with tokensvc's headers, JSON errors and masked logs.

    StaticFileHandler comes first for serving (GET and HEAD); BaseHandler supplies
    set_default_headers, write_error and log_exception, which StaticFileHandler does not
    define.
    """

    # The two bases' initialize() signatures differ; this one takes the URL rule's kwargs
    # and hands each base what it expects.
    def initialize(self, **kwargs: Any) -> None:  # type: ignore[override]
        BaseHandler.initialize(self)
        tornado.web.StaticFileHandler.initialize(self, **kwargs)


@dataclasses.dataclass
class ChatkitState:
    """What the ChatKit handlers share within one process."""

    threads: ThreadStore
    upstream: Upstream
    streams: StreamRegistry
    replies: ReplyTasks
    writes: RateLimiter
    max_thread_messages: int


class ChatkitExtension:
    """Mounts the ChatKit routes on a tokensvc app.

    Threads live in memory for one process, and in Redis (one Stream per thread) when the
    revocation backend is Redis, so every worker and host sees every thread.
    """

    def __init__(
        self,
        config: Config,
        *,
        threads: ThreadStore | None = None,
        upstream: Upstream | None = None,
    ) -> None:
        self._config = config
        self._threads = threads
        self._upstream = upstream
        self._state: ChatkitState | None = None
        self._unsubscribe: list[Any] = []

    @property
    def state(self) -> ChatkitState:
        if self._state is None:
            raise RuntimeError("ChatkitExtension.start() has not run")
        return self._state

    def routes(self, services: Services) -> list[tuple[Any, ...]]:
        kwargs = {"state": self.state}
        thread = f"(?P<thread_id>{THREAD_ID_PATTERN})"
        rules: list[tuple[Any, ...]] = [
            (r"/chatkit/session", ChatkitSessionHandler, kwargs),
            (r"/chatkit/threads", ThreadsHandler, kwargs),
            (rf"/chatkit/threads/{thread}", ThreadHandler, kwargs),
            (rf"/chatkit/threads/{thread}/messages", MessagesHandler, kwargs),
            (rf"/chatkit/threads/{thread}/events", EventsHandler, kwargs),
            (r"/chatkit/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}),
        ]
        if services.config.server.demo:
            from chatkit.demo import demo_routes

            rules.extend(demo_routes(kwargs))
        return rules

    async def start(self, services: Services) -> None:
        chat = self._config.chatkit
        threads = self._threads or self._make_threads()
        upstream = self._upstream or make_upstream(chat.upstream_url)
        streams = StreamRegistry(chat.max_streams_per_subject)
        replies = ReplyTasks(
            threads, upstream, chat.model, max_per_owner=chat.max_replies_per_subject
        )
        self._state = ChatkitState(
            threads=threads,
            upstream=upstream,
            streams=streams,
            replies=replies,
            writes=RateLimiter(),
            max_thread_messages=chat.max_thread_messages,
        )
        self._unsubscribe = [
            services.revocations.subscribe(streams.revoked),
            services.revocations.subscribe(replies.revoked),
        ]
        services.metrics.gauge("tokensvc_open_streams", lambda: float(len(streams)))

    def _make_threads(self) -> ThreadStore:
        chat = self._config.chatkit
        if self._config.revocation.backend == "redis":
            from chatkit.thread_redis import RedisThreadStore

            return RedisThreadStore(self._config.revocation.redis_url, history=chat.history)
        from chatkit.thread_memory import MemoryThreadStore

        return MemoryThreadStore(history=chat.history)

    async def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self._state is not None:
            await self._state.replies.close()
            await self._state.threads.close()
            await self._state.upstream.close()
