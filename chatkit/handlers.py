"""The ChatKit routes. Every one is protected by tokensvc's TokenAuthMixin, nothing else.

Everything here belongs to an owner, the token's client and subject together
(:func:`~chatkit.threads.owner_of`): threads, open streams, running replies and the write
rate. Limits (``[chatkit]`` settings), each per owner and per process unless noted:
``max_streams_per_subject`` open streams, ``max_replies_per_subject`` running replies and
``writes_per_minute`` thread and message writes (429 with Retry-After past each), and
``max_thread_messages`` messages per thread (400 past it, in every process).
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import TYPE_CHECKING, Any

from tornado.iostream import StreamClosedError

from chatkit.sse import encode_comment, encode_event, parse_last_event_id
from chatkit.threads import (
    SubscriptionClosed,
    Thread,
    ThreadStoreUnavailable,
    check_message_text,
    follow,
    message_event_data,
    owner_of,
)
from tokensvc import (
    BaseHandler,
    InvalidRequest,
    NotFound,
    StoreUnavailable,
    TokenAuthMixin,
)

if TYPE_CHECKING:
    from chatkit.extension import ChatkitState

__all__ = [
    "ChatkitSessionHandler",
    "EventsHandler",
    "MessagesHandler",
    "ThreadHandler",
    "ThreadsHandler",
]

log = logging.getLogger("chatkit")

MAX_MESSAGE_CHARS = 32768
# The largest body a valid message can take: JSON may escape every character, and one
# outside the BMP as two six-byte "\u" escapes (12 bytes), plus room for the object around it.
MAX_MESSAGE_BODY_BYTES = 12 * MAX_MESSAGE_CHARS + 1024
# Sent once, this long before the stream's token expires, so the page can refresh ahead.
TOKEN_EXPIRING_LEAD = 30.0
# How long the browser waits before reconnecting by itself (EventSource "retry:").
RECONNECT_MS = 2000

class ChatkitHandler(TokenAuthMixin, BaseHandler):
    """Base of the ChatKit routes: scope ``chatkit`` and the extension's shared state."""

    required_scope = "chatkit"
    state: ChatkitState

    def initialize(self, **kwargs: Any) -> None:
        super().initialize()
        self.state = kwargs["state"]

    @property
    def owner(self) -> str:
        """Who the token acts for: its client and its subject."""
        return owner_of(self.claims)

    def take_write(self) -> None:
        """Spend one of the owner's thread and message writes; 429 when none are left."""
        per_minute = self.services.config.chatkit.writes_per_minute
        self.state.writes.take(f"writes:{self.owner}", per_minute)

    async def owned_thread(self, thread_id: str) -> Thread:
        """The thread if it is this owner's; 404 alike for missing and foreign ones."""
        thread = await self.state.threads.get_thread(thread_id, self.owner)
        if thread is None:
            raise NotFound("no such thread for this owner")
        return thread


class ChatkitSessionHandler(ChatkitHandler):
    """``POST /chatkit/session``: a hosted ChatKit client secret from the upstream."""

    async def post(self) -> None:
        secret = self.upstream_secret()
        config = self.services.config.chatkit
        session = await self.state.upstream.create_chatkit_session(
            secret, config.workflow_id, self.claims.sub
        )
        self.no_store()
        self.write_json(
            {"client_secret": session["client_secret"], "expires_at": session["expires_at"]}
        )


class ThreadsHandler(ChatkitHandler):
    """``POST /chatkit/threads``: a new thread owned by the token's client and subject."""

    async def post(self) -> None:
        self.take_write()
        thread_id = await self.state.threads.create_thread(self.owner)
        self.write_json({"id": thread_id}, status=201)


class ThreadHandler(ChatkitHandler):
    """``GET /chatkit/threads/{id}``: the thread and its messages."""

    async def get(self, thread_id: str) -> None:
        thread = await self.owned_thread(thread_id)
        self.write_json(
            {
                "id": thread.id,
                "messages": [message_event_data(m) for m in thread.messages],
            }
        )


class MessagesHandler(ChatkitHandler):
    """``POST /chatkit/threads/{id}/messages``: add a user message, stream the reply."""

    async def post(self, thread_id: str) -> None:
        body = self.json_body(max_bytes=MAX_MESSAGE_BODY_BYTES)
        text = body.get("text")
        if set(body) != {"text"} or not isinstance(text, str):
            raise InvalidRequest("body must be {\"text\": str}")
        if not 1 <= len(text) <= MAX_MESSAGE_CHARS:
            raise InvalidRequest(f"text must be 1..{MAX_MESSAGE_CHARS} characters")
        try:
            check_message_text(text)  # a lone surrogate would fail in the store: 500
        except ValueError:
            raise InvalidRequest("text is not valid Unicode") from None
        await self.owned_thread(thread_id)
        secret = self.upstream_secret()
        owner = self.owner
        replies = self.state.replies
        # The reply slot first: a message refused for it must not be stored without a reply.
        with replies.reserve(owner) as slot:
            self.take_write()
            # A reply already under way still lands, so a full thread may end a few over.
            message = await self.state.threads.add_message(
                thread_id, owner, "user", text, limit=self.state.max_thread_messages
            )
            response_id = "resp_" + secrets.token_urlsafe(12)
            slot.start(self.claims, thread_id, response_id, secret)
        self.write_json({"message_id": message.id, "response_id": response_id}, status=202)


class EventsHandler(ChatkitHandler):
    """``GET /chatkit/threads/{id}/events``: the thread as Server-Sent Events.

    Authenticated by a Bearer session token or by ``?access_token=<stream ticket>`` (what
    a browser's EventSource can send). The stream lives until the token behind it expires
    (``token_expiring`` about 30 s before, then ``session_expired``), until a revocation
    matches it (``revoked``, within a second, in any process), or until the client leaves.
    """

    accepts_query_token = True

    _closing_event: str | None = None

    async def get(self, thread_id: str) -> None:
        await self.owned_thread(thread_id)
        registry = self.state.streams
        stream = registry.open(self.claims, self._on_revoked)
        try:
            await self._stream(thread_id)
        finally:
            registry.close(stream)

    async def head(self, thread_id: str) -> None:
        """The stream's status and headers, without opening it.

        The same checks as GET (token, thread owner, the open-stream limit), but no
        subscription and no stream slot is kept; a ticket in the query is checked, not used.
        """
        await self.owned_thread(thread_id)
        registry = self.state.streams
        registry.close(registry.open(self.claims, lambda: None))  # 429 where GET would be
        self._set_stream_headers()
        await self.flush()  # headers as a stream sends them: no Content-Length
        self.finish()

    def _set_stream_headers(self) -> None:
        self.set_status(200)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")
        self.clear_header("Pragma")

    def _on_revoked(self) -> None:
        self._closing_event = "revoked"
        subscription = getattr(self, "_subscription", None)
        if subscription is not None:
            subscription.close()  # wakes the pending get() at once

    def on_connection_close(self) -> None:
        self._closing_event = self._closing_event or "disconnected"
        subscription = getattr(self, "_subscription", None)
        if subscription is not None:
            subscription.close()

    def _last_event_id(self) -> int | None:
        # The header is what EventSource sends on its own reconnects; the query parameter
        # is for a page that reconnects with a fresh ticket (a new URL has no header).
        header = self.request.headers.get("Last-Event-ID")
        if header is not None:
            return parse_last_event_id(header)
        values = self.request.query_arguments.get("last_event_id", [])
        if len(values) == 1:
            return parse_last_event_id(values[0].decode("ascii", errors="replace"))
        return None

    async def _stream(self, thread_id: str) -> None:
        services = self.services
        claims = self.claims
        heartbeat = services.config.chatkit.heartbeat
        stream_end = claims.session_exp
        warned = False

        self._set_stream_headers()
        last_id = self._last_event_id()
        # Control events (token_expiring, revoked, ...) are not thread events; they repeat
        # the id of the last thread event sent, so every event has an id and a reconnect's
        # Last-Event-ID still points at the right place in the thread.
        self._last_sent_id = last_id or 0
        self._subscription = await follow(self.state.threads, thread_id, last_id)
        try:
            if not await self._send(f"retry: {RECONNECT_MS}\n\n".encode()):
                return
            next_check = services.clock() + heartbeat
            while self._closing_event is None:
                now = services.clock()
                if now >= stream_end:
                    self._closing_event = "session_expired"
                    break
                if not warned and now >= stream_end - TOKEN_EXPIRING_LEAD:
                    warned = True
                    if not await self._control("token_expiring", {"expires_at": int(stream_end)}):
                        return
                if now >= next_check:
                    # Every heartbeat, busy or quiet: re-check the revocation list (in case a
                    # notification was missed), the signing key and the store's freshness, so
                    # a stream that never goes quiet cannot escape them; and ping, which also
                    # keeps proxies from timing a quiet stream out.
                    if not self._still_valid():
                        break
                    if not await self._send(encode_comment("ping")):
                        break
                    next_check = now + heartbeat
                wait = min(next_check, stream_end) - now
                if not warned:
                    wait = min(wait, stream_end - TOKEN_EXPIRING_LEAD - now)
                try:
                    event = await self._subscription.get(timeout=max(0.01, wait))
                except SubscriptionClosed:
                    if self._closing_event is None:
                        # Not closed by us (revocation, disconnect): the store dropped this
                        # reader for falling too far behind. Say so; the page reconnects
                        # and replays from the last event id it has.
                        log.info("event stream ended: it fell behind its thread")
                        self._closing_event = "lagging"
                    break
                except ThreadStoreUnavailable:
                    # The headers are out, so no 503 can be sent any more: say so in the
                    # stream and end it; the page resumes from its last event id.
                    log.warning("event stream ended: the thread store is unavailable")
                    self._closing_event = "unavailable"
                    break
                if event is None:
                    continue
                frame = encode_event(json.dumps(event.data), event=event.kind, id=str(event.id))
                if not await self._send(frame):
                    return
                self._last_sent_id = event.id
            if self._closing_event in ("revoked", "session_expired"):
                await self._control(self._closing_event, {})
            elif self._closing_event == "unavailable":
                await self._control("error", {"code": "temporarily_unavailable"})
            elif self._closing_event == "lagging":
                await self._control("error", {"code": "stream_lagging"})
        finally:
            await self._subscription.aclose()
        if not self._finished:
            self.finish()

    def _still_valid(self) -> bool:
        if self.services.ring().verifying_key(self.claims.kid) is None:
            # The key that signed this stream's token was retired (emergency rotation).
            self._closing_event = "session_expired"
            return False
        try:
            if self.services.revocations.is_revoked(self.claims):
                self._closing_event = "revoked"
                return False
        except StoreUnavailable:
            # Fail closed: a stream must not outlive a revocation we cannot see.
            self._closing_event = "unavailable"
            return False
        return True

    async def _control(self, kind: str, data: dict[str, Any]) -> bool:
        frame = encode_event(json.dumps(data), event=kind, id=str(self._last_sent_id))
        return await self._send(frame)

    async def _send(self, frame: bytes) -> bool:
        if self._closing_event == "disconnected":
            return False
        try:
            self.write(frame)
            await self.flush()
        except StreamClosedError:
            self._closing_event = "disconnected"
            return False
        return True

