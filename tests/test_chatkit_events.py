"""``GET /chatkit/threads/{id}/events`` over real HTTP: Server-Sent Events end to end.

Headers, event order and ids, keep-alives, resume, stream tickets, expiry, revocation (which
also cancels a running reply), the per-subject stream limit, and delivery across two
processes through Redis. Streams are read with the raw reader of ``tests.chatkit_support``;
every wait has a deadline, a generous one: what a test checks never depends on how fast the
machine is. Tests about heartbeats, expiry and revocation run the service on a fake clock
(``clock_kind = "fake"``) that only the test moves: a stream pings, re-checks and expires as
that clock passes its deadlines, so no test measures seconds, and a revocation that ends a
stream while the clock stands still can only have been pushed to it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.testing
import tornado.web

from chatkit import ChatkitExtension
from chatkit.handlers import TOKEN_EXPIRING_LEAD
from chatkit.replies import DEFAULT_MAX_REPLIES_PER_OWNER
from chatkit.thread_memory import DEFAULT_QUEUE_SIZE, MemoryThreadStore
from chatkit.threads import Event, Subscription, ThreadStore, ThreadStoreUnavailable
from chatkit.upstream import EchoUpstream, OpenAIUpstream, Upstream
from tests.chatkit_support import (
    WAIT,
    SseItem,
    SseStream,
    bearer,
    chatkit_config,
    events_path,
    eventually,
    fetch,
    mint,
    new_thread,
    new_thread_stream,
    new_ticket,
    open_events,
    running_extension,
    running_fake_upstream,
    start_extension,
)
from tests.conftest import FakeClock
from tests.fake_upstream import DEFAULT_DELTAS, FakeUpstream
from tests.support import (
    OTHER_CLIENT_ID,
    basic,
    make_app,
    make_ring,
    make_services,
    sealing_key,
    signing_key,
)
from tokensvc import Config, Secret, Services
from tokensvc.keys import KeyRing
from tokensvc.tokens import TokenIssuer

# A stream waits at most this long (real time) before it looks at the service's clock again.
HEARTBEAT = 0.2
MAX_STREAMS = 2
# A reader queue small enough to overflow on purpose (the default is DEFAULT_QUEUE_SIZE).
SMALL_QUEUE = 8
# How long to wait for a stream to end once it must (API.md section 5 promises a second
# for a revocation; that figure is not asserted here).
ENDS_WITHIN = 10.0
# A pause between a reply's words that no test outlasts.
NEVER_ENDING_DELAY = 600.0


@pytest.fixture
def config() -> Config:
    return chatkit_config(heartbeat=HEARTBEAT, max_streams_per_subject=MAX_STREAMS)


@pytest.fixture
def upstream_kind() -> str:
    return "echo"


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


class GatedEcho(EchoUpstream):
    """The echo model, holding every reply after its first word until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def stream_reply(
        self, api_key: Secret, model: str, messages: list[dict[str, str]]
    ) -> AsyncGenerator[str, None]:
        first = True
        async for piece in super().stream_reply(api_key, model, messages):
            if not first:
                await self.gate.wait()
            first = False
            yield piece


@pytest.fixture
def upstream(io_loop: Any, upstream_kind: str, fake: FakeUpstream) -> Iterator[Upstream]:
    if upstream_kind == "echo":
        yield EchoUpstream()
        return
    if upstream_kind == "gated":
        yield GatedEcho()
        return
    with running_fake_upstream(io_loop, fake) as url:
        client = OpenAIUpstream(url, timeout=WAIT)
        yield client
        io_loop.run_sync(client.close)


class _FlakySubscription(Subscription):
    """A memory subscription whose reads fail once its store is marked broken."""

    def __init__(self, inner: Subscription, store: FlakyThreads) -> None:
        super().__init__(inner.thread_id)
        self._inner = inner
        self._store = store

    async def _receive(self, deadline: float | None) -> Event | None:
        if self._store.broken:
            raise ThreadStoreUnavailable("thread store down (test)", retry_after=1)
        loop = asyncio.get_running_loop()
        return await self._inner.get(None if deadline is None else deadline - loop.time())

    def _on_close(self) -> None:
        self._inner.close()


class FlakyThreads(MemoryThreadStore):
    """A memory thread store whose subscriptions can be made to fail (a Redis outage)."""

    broken = False

    async def subscribe(self, thread_id: str) -> Subscription:
        return _FlakySubscription(await super().subscribe(thread_id), self)


@pytest.fixture
def threads_kind() -> str:
    return "default"


@pytest.fixture
def threads(threads_kind: str) -> ThreadStore | None:
    if threads_kind == "flaky":
        return FlakyThreads()
    if threads_kind == "small-queue":
        return MemoryThreadStore(queue_size=SMALL_QUEUE)
    return None


@pytest.fixture
def clock_kind() -> str:
    return "real"


@pytest.fixture
def service_clock(clock_kind: str, clock: FakeClock) -> Callable[[], float]:
    """The services' clock: the real one, or (``clock_kind = "fake"``) the test's."""
    return clock if clock_kind == "fake" else time.time


@pytest.fixture
def services(
    io_loop: Any, config: Config, service_clock: Callable[[], float]
) -> Iterator[Services]:
    built = make_services(config=config, clock=service_clock)
    io_loop.run_sync(built.revocations.start)
    try:
        yield built
    finally:
        io_loop.run_sync(built.revocations.close)


@pytest.fixture
def extension(
    io_loop: Any, services: Services, upstream: Upstream, threads: ThreadStore | None
) -> Iterator[ChatkitExtension]:
    with running_extension(io_loop, services, upstream=upstream, threads=threads) as started:
        yield started


@pytest.fixture
def app(services: Services, extension: ChatkitExtension) -> tornado.web.Application:
    return make_app(services, [extension])


@pytest.fixture
def token(services: Services) -> str:
    return mint(services, user="alice")


async def post_message(http_client: Any, base_url: str, token: str, thread_id: str,
                       text: str) -> dict[str, Any]:
    response = await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}/messages",
                           method="POST", headers=bearer(token), body={"text": text})
    assert response.code == 202, response.body
    result: dict[str, Any] = json.loads(response.body)
    return result


def only_events(items: list[SseItem]) -> list[SseItem]:
    return [item for item in items if item.is_event]


async def open_by_ticket(http_client: Any, base_url: str, http_port: int, token: str,
                         thread_id: str) -> tuple[str, SseStream]:
    """A new stream ticket of ``token`` and the stream it opens (its status not checked)."""
    ticket = await new_ticket(http_client, base_url, token)
    return ticket, await open_events(http_port, events_path(thread_id, f"access_token={ticket}"))


async def open_max_streams(http_port: int, thread_id: str, token: str) -> list[SseStream]:
    """MAX_STREAMS streams on ``thread_id`` with ``token`` as bearer (statuses not checked)."""
    return [await open_events(http_port, events_path(thread_id), bearer(token))
            for _ in range(MAX_STREAMS)]


async def run_reply(
    http_client: Any, base_url: str, http_port: int, token: str, thread_id: str, text: str
) -> list[SseItem]:
    """Post ``text`` and return the thread events it caused, up to its ``done``."""
    stream = await open_events(http_port, events_path(thread_id), bearer(token))
    try:
        await post_message(http_client, base_url, token, thread_id, text)
        return only_events(await stream.until("done"))
    finally:
        await stream.close()


# -- shape of the stream -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_stream_headers(http_client: Any, base_url: str, http_port: int,
                              token: str) -> None:
    _, stream = await new_thread_stream(http_client, base_url, http_port, token)
    try:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-store"
        assert stream.headers["x-accel-buffering"] == "no"
        assert stream.headers["x-content-type-options"] == "nosniff"
        assert stream.headers["referrer-policy"] == "no-referrer"
        first = await stream.next()
        assert first is not None
        assert first.retry is not None  # the reconnect delay comes before any event
    finally:
        await stream.close()


@pytest.mark.parametrize(
    ("upstream_kind", "text", "expected"),
    [
        ("echo", "the quick brown fox", "the quick brown fox"),
        ("fake", "Say hello", "".join(DEFAULT_DELTAS)),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_message_then_deltas_then_done_with_increasing_ids(
    http_client: Any, base_url: str, http_port: int, token: str, upstream_kind: str,
    text: str, expected: str,
) -> None:
    thread_id, stream = await new_thread_stream(http_client, base_url, http_port, token)
    try:
        posted = await post_message(http_client, base_url, token, thread_id, text)
        items = only_events(await stream.until("done"))
    finally:
        await stream.close()

    kinds = [item.event for item in items]
    assert kinds[0] == "message"
    assert items[0].json == {"id": posted["message_id"], "role": "user", "text": text}
    assert kinds[-1] == "done"
    assert kinds.count("delta") >= 2
    first_delta = kinds.index("delta")
    last_delta = len(kinds) - 1 - kinds[::-1].index("delta")
    assert set(kinds[first_delta : last_delta + 1]) == {"delta"}
    deltas = [item.json for item in items if item.event == "delta"]
    assert {d["response_id"] for d in deltas} == {posted["response_id"]}
    assert "".join(d["text"] for d in deltas) == expected
    assert items[-1].json == {"response_id": posted["response_id"], "text": expected}
    ids = [int(item.id or "") for item in items]
    assert ids == sorted(set(ids)), "event ids must strictly increase"


@pytest.mark.parametrize("clock_kind", ["fake"])
@pytest.mark.gen_test(timeout=30)
async def test_ping_comments_every_heartbeat(
    http_client: Any, base_url: str, http_port: int, token: str, clock: FakeClock,
    extension: ChatkitExtension, clock_kind: str,
) -> None:
    store = extension.state.threads
    thread_id, stream = await new_thread_stream(http_client, base_url, http_port, token)
    try:
        assert stream.status == 200
        for n in range(3):
            # Half a heartbeat on the service's clock: no ping yet. The stream sends an
            # event appended now, and nothing may come before it.
            clock.advance(HEARTBEAT / 2)
            await store.append_event(thread_id, "delta", {"n": n})
            before = await stream.until("delta", within=ENDS_WITHIN)
            assert [item.comment for item in before if item.comment == "ping"] == []
            # Past the heartbeat: a ping, and only one (the next round sees no other).
            clock.advance(HEARTBEAT)
            pinged = await stream.until(lambda i: i.comment == "ping", within=ENDS_WITHIN)
            assert [item for item in pinged if item.is_event] == []
    finally:
        await stream.close()


@pytest.mark.parametrize("clock_kind", ["fake"])
@pytest.mark.gen_test(timeout=30)
async def test_ping_comments_keep_coming_while_the_stream_is_busy(
    http_client: Any, base_url: str, http_port: int, token: str, clock: FakeClock,
    extension: ChatkitExtension, clock_kind: str,
) -> None:
    store = extension.state.threads
    thread_id, stream = await new_thread_stream(http_client, base_url, http_port, token)

    async def keep_busy() -> None:
        n = 0
        while True:
            n += 1
            await store.append_event(thread_id, "delta", {"n": n})
            await asyncio.sleep(HEARTBEAT / 10)

    writer = asyncio.ensure_future(keep_busy())
    try:
        # Never quiet: events keep arriving, yet each heartbeat that passes brings a ping.
        await stream.until("delta", within=ENDS_WITHIN)
        for _ in range(3):
            clock.advance(HEARTBEAT)
            await stream.until(lambda i: i.comment == "ping", within=ENDS_WITHIN)
            await stream.until("delta", within=ENDS_WITHIN)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await stream.close()
    assert [item.comment for item in stream.received].count("ping") == 3


# -- readers that fall behind ----------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_a_reply_longer_than_the_reader_queue_reaches_the_stream_whole(
    http_client: Any, base_url: str, http_port: int, token: str, upstream: Upstream
) -> None:
    # The echo model without a delay used to run a long reply without giving the loop a
    # turn: every reader's queue overflowed and the stream ended without a word.
    assert isinstance(upstream, EchoUpstream)
    assert upstream.delay == 0
    words = 2 * DEFAULT_QUEUE_SIZE + 100
    text = " ".join(f"w{n}" for n in range(words))
    thread_id, stream = await new_thread_stream(http_client, base_url, http_port, token)
    try:
        posted = await post_message(http_client, base_url, token, thread_id, text)
        items = only_events(await stream.until("done", within=15.0))
    finally:
        await stream.close()
    deltas = [item.json["text"] for item in items if item.event == "delta"]
    assert len(deltas) == words
    assert "".join(deltas) == text
    assert items[-1].json == {"response_id": posted["response_id"], "text": text}


@pytest.mark.parametrize("threads_kind", ["small-queue"])
@pytest.mark.gen_test(timeout=30)
async def test_a_reader_dropped_for_lagging_gets_stream_lagging_and_resumes(
    http_client: Any, base_url: str, http_port: int, token: str, threads_kind: str,
    extension: ChatkitExtension,
) -> None:
    store = extension.state.threads
    thread_id, stream = await new_thread_stream(http_client, base_url, http_port, token)
    try:
        assert stream.status == 200
        await store.append_event(thread_id, "delta", {"n": 1})
        first = only_events(await stream.until("delta"))
        assert first[-1].id == "1"
        # A burst larger than the reader's queue, with no turn for the reader in between:
        # the store drops the reader.
        for n in range(2, 2 * SMALL_QUEUE + 2):
            await store.append_event(thread_id, "delta", {"n": n})
        items = await assert_ends_with(stream, "error", within=ENDS_WITHIN)
    finally:
        await stream.close()
    assert items[-1].json == {"code": "stream_lagging"}
    assert items[-1].id == "1"  # the last thread event this reader was sent
    assert await eventually(lambda: len(extension.state.streams) == 0)

    # What the page does next: reconnect from that id and miss nothing.
    again = await open_events(http_port, events_path(thread_id),
                              {**bearer(token), "Last-Event-ID": items[-1].id})
    try:
        replayed = only_events(await again.until(lambda i: i.id == str(2 * SMALL_QUEUE + 1)))
    finally:
        await again.close()
    assert [item.json["n"] for item in replayed] == list(range(2, 2 * SMALL_QUEUE + 2))


# -- resume ----------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["header", "query"])
@pytest.mark.gen_test(timeout=10)
async def test_last_event_id_replays_only_the_events_after_it(
    http_client: Any, base_url: str, http_port: int, token: str, via: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    seen = await run_reply(http_client, base_url, http_port, token, thread_id, "one two three")
    resume_after = seen[1]  # the first delta
    assert resume_after.event == "delta"
    expected = [(item.id, item.event, item.data) for item in seen[2:]]

    if via == "header":
        stream = await open_events(http_port, events_path(thread_id),
                                   {**bearer(token), "Last-Event-ID": str(resume_after.id)})
    else:
        stream = await open_events(http_port,
                                   events_path(thread_id, f"last_event_id={resume_after.id}"),
                                   bearer(token))
    try:
        replayed = only_events(await stream.until("done"))
    finally:
        await stream.close()
    assert [(item.id, item.event, item.data) for item in replayed] == expected


@pytest.mark.parametrize(
    "value",
    ["abc", "-1", "+1", "1 2", "1.5", "1e3", "0x10", "٣", "9" * 19, "9" * 20, "9" * 5000, ""],
)
@pytest.mark.gen_test(timeout=10)
async def test_invalid_last_event_id_starts_at_the_live_tail(
    http_client: Any, base_url: str, http_port: int, token: str, value: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    seen = await run_reply(http_client, base_url, http_port, token, thread_id, "old words")
    header = value.encode("utf-8").decode("latin-1")  # the raw bytes as sent on the wire
    stream = await open_events(http_port, events_path(thread_id),
                               {**bearer(token), "Last-Event-ID": header})
    try:
        assert stream.status == 200, stream.body
        posted = await post_message(http_client, base_url, token, thread_id, "new words")
        items = only_events(await stream.until("done"))
    finally:
        await stream.close()
    # Nothing from before the stream was opened, the new message first.
    assert items[0].event == "message"
    assert items[0].json["id"] == posted["message_id"]
    assert int(items[0].id or "") > int(seen[-1].id or "")


# -- transport of the credential -------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_ticket_in_the_query_works_once(
    http_client: Any, base_url: str, http_port: int, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    ticket, stream = await open_by_ticket(http_client, base_url, http_port, token, thread_id)
    try:
        assert stream.status == 200
        await post_message(http_client, base_url, token, thread_id, "via a ticket")
        assert only_events(await stream.until("done"))[-1].json["text"] == "via a ticket"
    finally:
        await stream.close()

    reused = await open_events(http_port, events_path(thread_id, f"access_token={ticket}"))
    assert reused.status == 401
    assert reused.error["error"] == "invalid_token"
    assert 'error="invalid_token"' in reused.headers["www-authenticate"]


@pytest.mark.gen_test(timeout=10)
async def test_expired_ticket_is_401(
    http_client: Any, base_url: str, http_port: int, services: Services, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    an_hour_ago = TokenIssuer(services.config.tokens, services.ring,
                              clock=lambda: time.time() - 3600, sealer=services.sealer)
    session = an_hour_ago.issue_session(client_id="extension", sub="alice", skid="demo",
                                        secret=Secret("unused"), scope="chatkit", ttl=600)
    ticket = an_hour_ago.issue_ticket(session.claims).token
    stream = await open_events(http_port, events_path(thread_id, f"access_token={ticket}"))
    assert stream.status == 401
    assert stream.error["error"] == "invalid_token"


@pytest.mark.gen_test(timeout=10)
async def test_session_token_in_the_query_is_rejected_by_default(
    http_client: Any, base_url: str, http_port: int, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    stream = await open_events(http_port, events_path(thread_id, f"access_token={token}"))
    assert stream.status == 401
    assert stream.error["error"] == "invalid_token"


@pytest.mark.parametrize(
    "config",
    [chatkit_config(heartbeat=HEARTBEAT, tokens={"allow_session_token_in_query": True})],
)
@pytest.mark.gen_test(timeout=10)
async def test_session_token_in_the_query_when_allowed(
    http_client: Any, base_url: str, http_port: int, token: str, config: Config
) -> None:
    assert config.tokens.allow_session_token_in_query
    thread_id = await new_thread(http_client, base_url, token)
    stream = await open_events(http_port, events_path(thread_id, f"access_token={token}"))
    try:
        assert stream.status == 200
    finally:
        await stream.close()


@pytest.mark.gen_test(timeout=10)
async def test_token_in_header_and_query_is_400(
    http_client: Any, base_url: str, http_port: int, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    ticket = await new_ticket(http_client, base_url, token)
    both = await open_events(http_port, events_path(thread_id, f"access_token={ticket}"),
                             bearer(token))
    assert both.status == 400
    assert both.error["error"] == "invalid_request"
    twice = await open_events(
        http_port, events_path(thread_id, f"access_token={ticket}&access_token={ticket}")
    )
    assert twice.status == 400
    assert twice.error["error"] == "invalid_request"


# -- the end of a stream ---------------------------------------------------------------------


async def assert_ends_with(stream: SseStream, last: str, within: float) -> list[SseItem]:
    """Read until the server closes; the last event must be ``last``."""
    items = only_events(await stream.rest(within=within))
    assert items, "no event before the stream closed"
    assert items[-1].event == last, [item.event for item in items]
    assert items[-1].id is not None
    return items


@pytest.mark.parametrize("clock_kind", ["fake"])
@pytest.mark.gen_test(timeout=30)
async def test_token_expiring_then_session_expired_then_close(
    http_client: Any, base_url: str, http_port: int, services: Services, token: str,
    clock: FakeClock, clock_kind: str,
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    short = services.issuer.issue_session(client_id="extension", sub="alice", skid="demo",
                                          secret=Secret("unused"), scope="chatkit", ttl=2)
    assert short.claims.exp - clock.now < TOKEN_EXPIRING_LEAD
    stream = await open_events(http_port, events_path(thread_id), bearer(short.token))
    try:
        assert stream.status == 200
        warning = only_events(await stream.until("token_expiring", within=ENDS_WITHIN))
        assert warning[-1].json == {"expires_at": int(short.claims.exp)}
        clock.now = short.claims.exp
        items = await assert_ends_with(stream, "session_expired", within=ENDS_WITHIN)
        assert [item.event for item in items] == ["session_expired"]
    finally:
        await stream.close()


@pytest.mark.parametrize(
    "config", [chatkit_config(heartbeat=HEARTBEAT, tokens={"ticket_ttl": 1, "leeway": 0})]
)
@pytest.mark.parametrize("clock_kind", ["fake"])
@pytest.mark.gen_test(timeout=30)
async def test_stream_opened_by_ticket_lives_past_the_tickets_own_expiry(
    http_client: Any, base_url: str, http_port: int, token: str, config: Config,
    clock: FakeClock, clock_kind: str,
) -> None:
    # The ticket only opens the stream; it carries the session token's exp, which is what
    # bounds the stream (API.md section 2).
    thread_id = await new_thread(http_client, base_url, token)
    ticket, stream = await open_by_ticket(http_client, base_url, http_port, token, thread_id)
    try:
        assert stream.status == 200
        payload = ticket.split(".")[1]
        ticket_exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))[
            "exp"
        ]
        assert ticket_exp <= clock.now + config.tokens.ticket_ttl
        # Past the ticket's exp and a heartbeat: the stream re-checks its token and pings.
        clock.advance(config.tokens.ticket_ttl + HEARTBEAT)
        assert clock.now > ticket_exp
        items = await stream.until(lambda i: i.comment == "ping", within=ENDS_WITHIN)
        assert all(not i.is_event for i in items), items
    finally:
        await stream.close()


@pytest.mark.parametrize("threads_kind", ["flaky"])
@pytest.mark.gen_test(timeout=30)
async def test_thread_store_failure_mid_stream_ends_it_with_an_error_event(
    http_client: Any, base_url: str, http_port: int, token: str, threads_kind: str,
    threads: ThreadStore, extension: ChatkitExtension, caplog: Any,
) -> None:
    assert isinstance(threads, FlakyThreads)
    _, stream = await new_thread_stream(http_client, base_url, http_port, token)
    try:
        assert stream.status == 200
        await stream.until(lambda i: i.comment == "ping")
        threads.broken = True
        items = await assert_ends_with(stream, "error", within=ENDS_WITHIN)
    finally:
        await stream.close()
    assert items[-1].json == {"code": "temporarily_unavailable"}
    assert await eventually(lambda: len(extension.state.streams) == 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("clock_kind", ["fake"])
@pytest.mark.gen_test(timeout=30)
async def test_a_busy_stream_still_rechecks_every_heartbeat(
    http_client: Any, base_url: str, http_port: int, services: Services, token: str,
    extension: ChatkitExtension, clock: FakeClock, clock_kind: str,
) -> None:
    # Events arrive far more often than the stream waits, so it is never quiet; the
    # checks must run anyway. The one checked here: the token's signing key was retired.
    store = extension.state.threads
    thread_id, stream = await new_thread_stream(http_client, base_url, http_port, token)
    sent = 0

    async def keep_busy() -> None:
        nonlocal sent
        while True:
            sent += 1
            await store.append_event(thread_id, "delta", {"n": sent})
            await asyncio.sleep(HEARTBEAT / 10)

    writer = asyncio.ensure_future(keep_busy())
    try:
        assert stream.status == 200
        await stream.until(lambda i: i.event == "delta" and i.json["n"] >= 5,
                           within=ENDS_WITHIN)
        rotated = KeyRing([signing_key("sig-2")], [sealing_key()])
        services.ring = lambda: rotated
        clock.advance(HEARTBEAT)
        items = await assert_ends_with(stream, "session_expired", within=ENDS_WITHIN)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await stream.close()
    events = [i for i in items[:-1] if i.comment is None]
    assert events
    assert all(i.event == "delta" for i in events)


async def open_with_ticket(http_client: Any, base_url: str, http_port: int, token: str,
                           thread_id: str) -> SseStream:
    _, stream = await open_by_ticket(http_client, base_url, http_port, token, thread_id)
    assert stream.status == 200
    assert await stream.next() is not None  # "retry:": the handler is streaming
    return stream


@pytest.mark.parametrize(
    "revocation",
    ["delete-current", "revoke-user", "revoke-secret-key-id", "revoke-session-id"],
)
@pytest.mark.parametrize("clock_kind", ["fake"])
@pytest.mark.gen_test(timeout=30)
async def test_revocation_is_pushed_to_open_streams(
    http_client: Any, base_url: str, http_port: int, services: Services, token: str,
    extension: ChatkitExtension, revocation: str, clock: FakeClock, clock_kind: str,
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    by_ticket = await open_with_ticket(http_client, base_url, http_port, token, thread_id)
    by_header = await open_events(http_port, events_path(thread_id), bearer(token))
    bystander_token = mint(services, user="bob")
    bystander = await open_events(
        http_port, events_path(await new_thread(http_client, base_url, bystander_token)),
        bearer(bystander_token),
    )
    try:
        # Less than a heartbeat: no stream re-checks the list by itself from here on, so
        # whatever ends one below was pushed to it. (Revocations by user and secret_key_id
        # cover tokens issued up to their own time: this one is older.)
        clock.advance(HEARTBEAT / 2)
        if revocation == "delete-current":
            response = await fetch(http_client, base_url + "/sessions/current",
                                   method="DELETE", headers=bearer(token))
            assert response.code == 204
        else:
            body = {
                "revoke-user": {"user": "alice"},
                "revoke-secret-key-id": {"secret_key_id": "demo"},
                "revoke-session-id": {"session_id": services.verifier.verify(
                    token, "session").sid},
            }[revocation]
            response = await fetch(http_client, base_url + "/sessions/revoke", method="POST",
                                   headers={"Authorization": basic()}, body=body)
            assert response.code == 200, response.body
        for stream in (by_ticket, by_header):
            await assert_ends_with(stream, "revoked", within=ENDS_WITHIN)

        if revocation != "revoke-secret-key-id":  # bob's token has skid "demo" too
            # Only alice was revoked: bob's stream keeps going (its next heartbeat's check
            # passes), and alice's slots are free.
            clock.advance(HEARTBEAT)
            items = await bystander.until(lambda i: i.comment == "ping", within=ENDS_WITHIN)
            assert all(i.event != "revoked" for i in items)
            assert await eventually(lambda: len(extension.state.streams) == 1)
    finally:
        for stream in (by_ticket, by_header, bystander):
            await stream.close()


@pytest.mark.parametrize("upstream_kind", ["fake"])
@pytest.mark.parametrize("clock_kind", ["fake"])
@pytest.mark.gen_test(timeout=30)
async def test_revocation_cancels_a_running_reply_and_its_upstream_request(
    http_client: Any, base_url: str, http_port: int, token: str, fake: FakeUpstream,
    extension: ChatkitExtension, upstream_kind: str, clock_kind: str,
) -> None:
    fake.mode = "stall"  # one delta, then the upstream keeps the response open
    thread_id, stream = await new_thread_stream(http_client, base_url, http_port, token)
    try:
        posted = await post_message(http_client, base_url, token, thread_id, "hello")
        await stream.until("delta", within=ENDS_WITHIN)
        assert len(extension.state.replies) == 1
        response = await fetch(http_client, base_url + "/sessions/current", method="DELETE",
                               headers=bearer(token))
        assert response.code == 204
        # The service's clock stands still: the revocation itself ends the stream.
        await assert_ends_with(stream, "revoked", within=ENDS_WITHIN)
        # The reply task is gone and the upstream saw its request closed.
        await asyncio.wait_for(fake.closed.wait(), ENDS_WITHIN)
    finally:
        await stream.close()
    assert await eventually(lambda: len(extension.state.replies) == 0)
    log = await extension.state.threads.events_after(thread_id, 0)
    kinds = [event.kind for event in log]
    assert "done" not in kinds
    assert log[-1].kind == "error"
    assert log[-1].data == {"code": "cancelled", "response_id": posted["response_id"]}


@pytest.mark.gen_test(timeout=30)
async def test_revocation_cancels_a_slow_echo_reply(
    http_client: Any, base_url: str, http_port: int, token: str, upstream: Upstream,
    extension: ChatkitExtension,
) -> None:
    assert isinstance(upstream, EchoUpstream)
    upstream.delay = NEVER_ENDING_DELAY  # the first word at once, the second never
    thread_id, stream = await new_thread_stream(http_client, base_url, http_port, token)
    try:
        await post_message(http_client, base_url, token, thread_id, " ".join(["word"] * 50))
        await stream.until("delta", within=ENDS_WITHIN)
        await fetch(http_client, base_url + "/sessions/revoke", method="POST",
                    headers={"Authorization": basic()}, body={"user": "alice"})
        await assert_ends_with(stream, "revoked", within=ENDS_WITHIN)
    finally:
        await stream.close()
    assert await eventually(lambda: len(extension.state.replies) == 0)
    log = await extension.state.threads.events_after(thread_id, 0)
    assert [e.kind for e in log].count("delta") == 1
    assert log[-1].kind == "error"
    assert log[-1].data["code"] == "cancelled"


# -- the per-subject stream limit ------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_more_than_max_streams_per_subject_is_429(
    http_client: Any, base_url: str, http_port: int, services: Services, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    opened = await open_max_streams(http_port, thread_id, token)
    try:
        assert [s.status for s in opened] == [200] * MAX_STREAMS
        refused = await open_events(http_port, events_path(thread_id), bearer(token))
        assert refused.status == 429
        assert refused.error["error"] == "too_many_requests"
        assert int(refused.headers["retry-after"]) >= 1
        # The limit is per subject: bob still gets a stream.
        bob = mint(services, user="bob")
        other = await open_events(http_port,
                                  events_path(await new_thread(http_client, base_url, bob)),
                                  bearer(bob))
        assert other.status == 200
        await other.close()
    finally:
        for stream in opened:
            await stream.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_client_disconnect_frees_its_stream_slot(
    http_client: Any, base_url: str, http_port: int, extension: ChatkitExtension, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    opened = await open_max_streams(http_port, thread_id, token)
    try:
        for _ in range(3):  # several rounds: slots must not leak
            await opened.pop(0).close()
            deadline = asyncio.get_running_loop().time() + ENDS_WITHIN
            while True:
                again = await open_events(http_port, events_path(thread_id), bearer(token))
                if again.status == 200:
                    break
                assert again.status == 429
                assert asyncio.get_running_loop().time() < deadline, "slot never freed"
                await asyncio.sleep(0.05)
            opened.append(again)
            assert len(extension.state.streams) == MAX_STREAMS
    finally:
        for stream in opened:
            await stream.close()
    assert await eventually(lambda: len(extension.state.streams) == 0)


@pytest.mark.gen_test(timeout=10)
async def test_another_client_with_the_same_user_has_its_own_stream_slots(
    http_client: Any, base_url: str, http_port: int, services: Services, token: str,
    extension: ChatkitExtension,
) -> None:
    # Another client may mint tokens for "alice" too; that is not the same owner.
    other_alice = mint(services, user="alice", client_id=OTHER_CLIENT_ID)
    other_thread = await new_thread(http_client, base_url, other_alice)
    theirs = await open_max_streams(http_port, other_thread, other_alice)
    ours: list[SseStream] = []
    try:
        assert [s.status for s in theirs] == [200] * MAX_STREAMS
        refused = await open_events(http_port, events_path(other_thread), bearer(other_alice))
        assert refused.status == 429
        thread_id = await new_thread(http_client, base_url, token)
        ours = await open_max_streams(http_port, thread_id, token)
        assert [s.status for s in ours] == [200] * MAX_STREAMS
        # Nor can either open a stream on the other's thread.
        crossed = await open_events(http_port, events_path(thread_id), bearer(other_alice))
        ours.append(crossed)
        assert crossed.status == 404
        assert len(extension.state.streams) == 2 * MAX_STREAMS
    finally:
        for stream in theirs + ours:
            await stream.close()


# -- the per-owner reply limit ---------------------------------------------------------------


@pytest.mark.parametrize("upstream_kind", ["gated"])
@pytest.mark.gen_test(timeout=30)
async def test_more_than_max_running_replies_per_owner_is_429(
    http_client: Any, base_url: str, services: Services, token: str, upstream: Upstream,
    extension: ChatkitExtension, upstream_kind: str,
) -> None:
    assert isinstance(upstream, GatedEcho)  # every reply runs until the gate opens
    text = "one two three four five six"
    thread_id = await new_thread(http_client, base_url, token)
    for _ in range(DEFAULT_MAX_REPLIES_PER_OWNER):
        await post_message(http_client, base_url, token, thread_id, text)
    url = f"{base_url}/chatkit/threads/{thread_id}/messages"
    refused = await fetch(http_client, url, method="POST", headers=bearer(token),
                          body={"text": "one too many"})
    assert refused.code == 429
    assert json.loads(refused.body)["error"] == "too_many_requests"
    assert int(refused.headers["Retry-After"]) >= 1
    # The refused message was not stored (it would never get a reply).
    thread = json.loads((await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}",
                                     headers=bearer(token))).body)
    assert [m["text"] for m in thread["messages"]] == [text] * DEFAULT_MAX_REPLIES_PER_OWNER

    # Another owner (the same user of another client) is not held up.
    other_alice = mint(services, user="alice", client_id=OTHER_CLIENT_ID)
    other_thread = await new_thread(http_client, base_url, other_alice)
    await post_message(http_client, base_url, other_alice, other_thread, "mine")

    # As the replies finish, the slots come back.
    upstream.gate.set()
    assert await eventually(lambda: len(extension.state.replies) == 0)
    await post_message(http_client, base_url, token, thread_id, "room again")


# -- two processes, one Redis ----------------------------------------------------------------


@pytest.mark.gen_test(timeout=15)
async def test_events_reach_a_stream_on_another_process_through_redis(
    io_loop: Any, redis_url: str
) -> None:
    from chatkit.thread_redis import RedisThreadStore

    config = chatkit_config(heartbeat=HEARTBEAT)
    ring = make_ring()  # the same key ring on both "hosts"
    started: list[tuple[Services, ChatkitExtension, tornado.httpserver.HTTPServer, int]] = []
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    try:
        for _ in range(2):
            services = make_services(config=config, ring=ring)
            await services.revocations.start()
            extension = await start_extension(
                services, threads=RedisThreadStore(redis_url, block=0.2),
                upstream=EchoUpstream(delay=0.01),
            )
            sock, port = tornado.testing.bind_unused_port()
            server = tornado.httpserver.HTTPServer(make_app(services, [extension]))
            server.add_socket(sock)
            started.append((services, extension, server, port))
        (services_a, _, _, port_a), (services_b, _, _, port_b) = started
        url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        token_a = mint(services_a, user="carol")
        token_b = mint(services_b, user="carol")

        thread_id = await new_thread(client, url_a, token_a)
        seen_on_b = await fetch(client, f"{url_b}/chatkit/threads/{thread_id}",
                                headers=bearer(token_b))
        assert seen_on_b.code == 200
        assert json.loads(seen_on_b.body) == {"id": thread_id, "messages": []}
        stranger = await fetch(client, f"{url_b}/chatkit/threads/{thread_id}",
                               headers=bearer(mint(services_b, user="dave")))
        assert stranger.code == 404

        stream = await open_events(port_b, events_path(thread_id), bearer(token_b))
        try:
            assert stream.status == 200
            posted = await post_message(client, url_a, token_a, thread_id, "across two hosts")
            items = only_events(await stream.until("done"))
        finally:
            await stream.close()
        assert items[0].json["id"] == posted["message_id"]
        deltas = "".join(i.json["text"] for i in items if i.event == "delta")
        assert deltas == "across two hosts"
        assert items[-1].json == {"response_id": posted["response_id"],
                                  "text": "across two hosts"}
        ids = [int(i.id or "") for i in items]
        assert ids == sorted(set(ids))
        thread_on_b = json.loads((await fetch(client, f"{url_b}/chatkit/threads/{thread_id}",
                                              headers=bearer(token_b))).body)
        assert [m["role"] for m in thread_on_b["messages"]] == ["user", "assistant"]
    finally:
        client.close()
        for services, extension, server, _ in started:
            server.stop()
            await asyncio.wait_for(server.close_all_connections(), WAIT)
            await extension.close()
            await services.revocations.close()
