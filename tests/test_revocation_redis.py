"""The Redis backend across processes: fan-out, shared tickets, resync, failing closed.

Staleness is judged by an injected monotonic clock: it stands still where a test is not
about staleness (so a busy machine cannot make a replica stale), and the staleness tests
move it themselves. Every wait is for a condition, with a generous bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tokensvc.errors import StoreUnavailable
from tokensvc.revocation import RevocationEntry
from tokensvc.revocation.redis import RedisRevocationStore

from .conftest import FakeClock
from .redis_support import PrivateRedis, free_port
from .test_revocation_store import ISS, make_claims, make_entry, running

STALENESS = 0.5
STORE_LOGGER = "tokensvc.revocation.redis"
# The longest any wait here for something that should happen soon may take.
WAIT = 10.0


class CountingClock(FakeClock):
    """A monotonic clock that moves only when told to, and counts how often it is read."""

    def __init__(self) -> None:
        super().__init__(now=1000.0)
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


@pytest.fixture
def monotonic() -> CountingClock:
    return CountingClock()


async def eventually(predicate: Callable[[], bool], within: float = WAIT) -> bool:
    """Poll ``predicate`` until it holds or ``within`` seconds pass; returns the last answer."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def unavailable(store: RedisRevocationStore) -> bool:
    """Whether ``is_revoked`` fails closed right now."""
    try:
        store.is_revoked(make_claims(time.time()))
    except StoreUnavailable:
        return True
    return False


def write_behind_the_channel(url: str, entry: RevocationEntry) -> None:
    """Store an entry the way another process would, but without publishing it."""
    client = redis.Redis.from_url(url)
    try:
        client.set("tokensvc:rev:" + entry.key, json.dumps(entry.to_json()))
    finally:
        client.close()


@pytest.fixture
def wall_clock(clock: Any) -> Any:
    clock.now = time.time()
    return clock


@pytest.mark.gen_test(timeout=3 * WAIT)
async def test_revocation_reaches_another_process(
    redis_url: str, wall_clock: Any, monotonic: CountingClock
) -> None:
    now = wall_clock.now
    heard_a: list[RevocationEntry] = []
    heard_b: list[RevocationEntry] = []
    store_a = RedisRevocationStore(
        redis_url, max_staleness=5, clock=wall_clock, monotonic=monotonic
    )
    store_b = RedisRevocationStore(
        redis_url, max_staleness=5, clock=wall_clock, monotonic=monotonic
    )
    async with running(store_a), running(store_b):
        store_a.subscribe(heard_a.append)
        store_b.subscribe(heard_b.append)
        entry = make_entry("sid", "sid-1", now)

        await store_a.revoke(entry)
        assert store_a.is_revoked(make_claims(now))
        # No periodic resync: only the channel can bring it to B.
        assert await eventually(lambda: heard_b == [entry])
        assert store_b.is_revoked(make_claims(now))

        # A's own message comes back over the channel; it is not news the second time.
        # B's next message reaches A after it (one channel, in order), so once A has
        # heard that one, its own has come back too.
        later = make_entry("sid", "sid-2", now)
        await store_b.revoke(later)
        assert await eventually(lambda: len(heard_a) >= 2)
        assert heard_a == [entry, later]


def steady(
    url: str, wall_clock: Any, monotonic: CountingClock, **kwargs: Any
) -> RedisRevocationStore:
    """A store for tests not about staleness: its monotonic clock stands still."""
    return RedisRevocationStore(
        url, max_staleness=5, clock=wall_clock, monotonic=monotonic, **kwargs
    )


@pytest.mark.gen_test
async def test_ticket_used_in_one_process_is_refused_in_another(
    redis_url: str, wall_clock: Any, monotonic: CountingClock
) -> None:
    expires_at = wall_clock.now + 60
    store_a = steady(redis_url, wall_clock, monotonic)
    store_b = steady(redis_url, wall_clock, monotonic)
    async with running(store_a), running(store_b):
        assert await store_a.consume_ticket(ISS, "ticket-1", expires_at) is True
        assert await store_b.consume_ticket(ISS, "ticket-1", expires_at) is False
        assert await store_b.consume_ticket(ISS, "ticket-2", expires_at) is True
        assert await store_a.consume_ticket(ISS, "ticket-2", expires_at) is False


@pytest.mark.gen_test
async def test_start_resyncs_entries_made_before_it(
    redis_url: str, wall_clock: Any, monotonic: CountingClock
) -> None:
    now = wall_clock.now
    async with running(steady(redis_url, wall_clock, monotonic)) as a:
        await a.revoke(make_entry("sub", "alice", now))
        await a.revoke(make_entry("jti", "jti-9", now))

    heard: list[RevocationEntry] = []
    late = steady(redis_url, wall_clock, monotonic)
    late.subscribe(heard.append)
    async with running(late):
        assert late.ready
        assert late.is_revoked(make_claims(now))
        assert late.is_revoked(make_claims(now, sub="bob", jti="jti-9"))
        assert not late.is_revoked(make_claims(now, sub="bob"))
        assert sorted(entry.kind for entry in heard) == ["jti", "sub"]


@pytest.mark.gen_test
async def test_concurrent_revocations_of_one_subject_keep_the_wider_bound(
    redis_url: str, wall_clock: Any, monotonic: CountingClock
) -> None:
    now = wall_clock.now
    store_a = steady(redis_url, wall_clock, monotonic)
    store_b = steady(redis_url, wall_clock, monotonic)
    token_issued_between = make_claims(now, iat=now + 5)
    async with running(store_a), running(store_b):
        await store_a.revoke(make_entry("sub", "alice", now + 10))
        await store_b.revoke(make_entry("sub", "alice", now))  # older, narrower, arrives late
        assert store_b.is_revoked(token_issued_between)

    async with running(steady(redis_url, wall_clock, monotonic)) as c:
        assert c.is_revoked(token_issued_between)


@pytest.mark.gen_test(timeout=3 * WAIT)
async def test_periodic_resync_finds_entries_whose_message_was_lost(
    redis_url: str, wall_clock: Any, monotonic: CountingClock
) -> None:
    now = wall_clock.now
    store = steady(redis_url, wall_clock, monotonic, resync_interval=0.2)
    heard: list[RevocationEntry] = []
    store.subscribe(heard.append)
    async with running(store):
        lost = make_entry("sid", "sid-3", now)
        write_behind_the_channel(redis_url, lost)
        assert await eventually(lambda: heard == [lost])
        assert store.is_revoked(make_claims(now, sid="sid-3"))


@pytest.mark.gen_test(timeout=6 * WAIT)
async def test_idle_healthy_replica_never_goes_stale(
    redis_url: str, wall_clock: Any, monotonic: CountingClock
) -> None:
    # The replica confirms its feed with a PING every max_staleness / 3 (real time), each
    # stamped with the injected clock when sent. Each step moves that clock most of the way
    # to stale; the replica is fresh at once only if PINGs of the step before came back.
    # Three reads of the clock by the store after a step mean at least one PING sent in the
    # step was answered: a PING is not sent while the one before it is unanswered, and a
    # resync (after a reconnect) reads the clock before it syncs.
    staleness = 1.0
    store = RedisRevocationStore(
        redis_url, max_staleness=staleness, clock=wall_clock, monotonic=monotonic
    )
    async with running(store):
        assert store.ready
        for _ in range(4):  # 3.6 times max_staleness in all, with no traffic at all
            monotonic.advance(0.9 * staleness)
            assert store.ready
            assert not store.is_revoked(make_claims(wall_clock.now))
            sent = monotonic.reads + 3
            assert await eventually(lambda sent=sent: monotonic.reads >= sent), "no PINGs"


@pytest.mark.gen_test(timeout=3 * WAIT)
async def test_start_without_redis_fails_closed(wall_clock: Any) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    store = RedisRevocationStore(
        url, max_staleness=STALENESS, clock=wall_clock, start_timeout=0.3
    )
    try:
        # Nothing ever answers: only start_timeout lets start() return.
        await asyncio.wait_for(store.start(), WAIT)
        assert not store.ready
        assert unavailable(store)
        with pytest.raises(StoreUnavailable):
            await store.revoke(make_entry("sid", "sid-1", wall_clock.now))
        with pytest.raises(StoreUnavailable):
            await store.consume_ticket(ISS, "ticket-1", wall_clock.now + 60)
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=3 * WAIT)
async def test_unreachable_redis_is_logged_with_its_reason_at_a_bounded_rate(
    wall_clock: Any, monotonic: CountingClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=STORE_LOGGER)
    # Nothing listens there; the password must never reach a log line.
    url = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    store = RedisRevocationStore(
        url, max_staleness=STALENESS, clock=wall_clock, monotonic=monotonic,
        start_timeout=0.3, failure_log_interval=30.0,
    )

    def feed_reports(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == STORE_LOGGER and r.levelno == level and "feed" in r.getMessage()]

    try:
        await asyncio.wait_for(store.start(), WAIT)
        start_line = [r.getMessage() for r in caplog.records if "within 0.3 s" in r.getMessage()]
        assert start_line == [
            "revocation store not synced with Redis within 0.3 s (connection refused); "
            "failing closed until it is"
        ]
        assert feed_reports(logging.WARNING) == [
            "cannot follow the Redis revocation feed (connection refused); failing closed; "
            "retrying, reported at most every 30 s while it fails"
        ]
        # Retries go on failing (backoff from 0.1 s): within the interval, DEBUG only.
        assert await eventually(lambda: len(feed_reports(logging.DEBUG)) >= 2)
        assert len(feed_reports(logging.WARNING)) == 1

        monotonic.advance(30.0)  # the interval has passed: the next failure is reported
        assert await eventually(lambda: len(feed_reports(logging.WARNING)) == 2)
        assert "more times since the last report" in feed_reports(logging.WARNING)[1]
        assert "(connection refused)" in feed_reports(logging.WARNING)[1]
    finally:
        await store.close()
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tokensvc"))
    for leak in ("hunter2", "127.0.0.1", "Connect call failed", "Error 111"):
        assert leak not in ours


@pytest.mark.gen_test(timeout=6 * WAIT)
async def test_fails_closed_while_redis_is_down_and_recovers(
    private_redis: PrivateRedis, wall_clock: Any, monotonic: CountingClock
) -> None:
    now = wall_clock.now
    heard: list[RevocationEntry] = []
    store = RedisRevocationStore(
        private_redis.url, max_staleness=STALENESS, clock=wall_clock, monotonic=monotonic,
        socket_timeout=0.5,
    )
    store.subscribe(heard.append)
    async with running(store):
        assert store.ready
        private_redis.stop()

        # Past max_staleness with Redis gone: nothing can have synced the replica since.
        monotonic.advance(STALENESS + 0.1)
        assert unavailable(store)
        assert not store.ready
        # Refused, not waited for: the command timeout bounds each (no silent retries).
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.revoke(make_entry("sid", "sid-1", now)), WAIT)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.consume_ticket(ISS, "ticket-1", now + 60), WAIT)

        # Redis comes back (empty: no persistence) holding a revocation made meanwhile by
        # another process; the replica must resync to see it, not just reconnect.
        private_redis.start()
        missed = make_entry("sid", "sid-2", now)
        write_behind_the_channel(private_redis.url, missed)

        assert await eventually(lambda: store.ready, within=3 * WAIT)
        assert store.is_revoked(make_claims(now, sid="sid-2"))
        assert not store.is_revoked(make_claims(now, sid="sid-1"))  # that revoke failed
        assert heard == [missed]

        await store.revoke(make_entry("sid", "sid-1", now))
        assert store.is_revoked(make_claims(now, sid="sid-1"))


@pytest.mark.gen_test(timeout=6 * WAIT)
@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP/SIGCONT")
async def test_fails_closed_when_redis_hangs_and_recovers(
    private_redis: PrivateRedis, wall_clock: Any, monotonic: CountingClock
) -> None:
    now = wall_clock.now
    store = RedisRevocationStore(
        private_redis.url, max_staleness=STALENESS, clock=wall_clock, monotonic=monotonic,
        socket_timeout=0.5,
    )
    async with running(store):
        assert store.ready
        private_redis.freeze()  # sockets stay open, nothing answers
        try:
            # Past max_staleness with Redis frozen: no PING sent since can be answered.
            monotonic.advance(STALENESS + 0.1)
            assert unavailable(store)
            # A frozen Redis would hold a revoke for good: only the timeout ends it.
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.revoke(make_entry("sid", "sid-1", now)), WAIT)
        finally:
            private_redis.thaw()

        assert await eventually(lambda: store.ready, within=3 * WAIT)
        assert not store.is_revoked(make_claims(now))


@pytest.mark.gen_test(timeout=3 * WAIT)
async def test_prefix_separates_deployments_sharing_one_redis(
    redis_url: str, wall_clock: Any, monotonic: CountingClock
) -> None:
    now = wall_clock.now
    blue = steady(redis_url, wall_clock, monotonic, prefix="blue:")
    green = steady(redis_url, wall_clock, monotonic, prefix="green:")
    other_green = steady(redis_url, wall_clock, monotonic, prefix="green:")
    heard_green: list[RevocationEntry] = []
    green.subscribe(heard_green.append)
    async with running(blue), running(green), running(other_green):
        await blue.revoke(make_entry("sid", "sid-1", now))
        assert blue.is_revoked(make_claims(now))
        # A message published after blue's reaches green after it would have, had the two
        # shared a channel: once green has heard it, no stray message is still on its way.
        green_entry = make_entry("sid", "sid-2", now)
        await other_green.revoke(green_entry)
        assert await eventually(lambda: len(heard_green) >= 1)
        assert heard_green == [green_entry]
        assert not green.is_revoked(make_claims(now))
        assert await green.consume_ticket(ISS, "ticket-1", now + 60)
        assert await blue.consume_ticket(ISS, "ticket-1", now + 60)


def test_store_repr_never_shows_the_url() -> None:
    store = RedisRevocationStore("redis://:hunter2hunter2@127.0.0.1:1/0", max_staleness=1)
    assert "hunter2" not in repr(store)
    assert "hunter2" not in str(store)
