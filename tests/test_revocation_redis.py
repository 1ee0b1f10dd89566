"""The Redis backend across processes: fan-out, shared tickets, resync, failing closed."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tokensvc.errors import StoreUnavailable
from tokensvc.revocation import RevocationEntry
from tokensvc.revocation.redis import RedisRevocationStore

from .redis_support import PrivateRedis, free_port
from .test_revocation_store import ISS, make_claims, make_entry, running

STALENESS = 0.5


async def eventually(predicate: Callable[[], bool], within: float = 2.0) -> bool:
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


@pytest.mark.gen_test
async def test_revocation_reaches_another_process_within_a_second(
    redis_url: str, wall_clock: Any
) -> None:
    now = wall_clock.now
    heard_a: list[RevocationEntry] = []
    heard_b: list[RevocationEntry] = []
    store_a = RedisRevocationStore(redis_url, max_staleness=5, clock=wall_clock)
    store_b = RedisRevocationStore(redis_url, max_staleness=5, clock=wall_clock)
    async with running(store_a), running(store_b):
        store_a.subscribe(heard_a.append)
        store_b.subscribe(heard_b.append)
        entry = make_entry("sid", "sid-1", now)

        started = time.monotonic()
        await store_a.revoke(entry)
        assert store_a.is_revoked(make_claims(now))
        assert await eventually(lambda: heard_b == [entry], within=1.0)
        assert store_b.is_revoked(make_claims(now))
        assert time.monotonic() - started < 1.0

        # A's own message comes back over the channel; it is not news the second time.
        await asyncio.sleep(0.1)
        assert heard_a == [entry]


@pytest.mark.gen_test
async def test_ticket_used_in_one_process_is_refused_in_another(
    redis_url: str, wall_clock: Any
) -> None:
    expires_at = wall_clock.now + 60
    store_a = RedisRevocationStore(redis_url, max_staleness=5, clock=wall_clock)
    store_b = RedisRevocationStore(redis_url, max_staleness=5, clock=wall_clock)
    async with running(store_a), running(store_b):
        assert await store_a.consume_ticket(ISS, "ticket-1", expires_at) is True
        assert await store_b.consume_ticket(ISS, "ticket-1", expires_at) is False
        assert await store_b.consume_ticket(ISS, "ticket-2", expires_at) is True
        assert await store_a.consume_ticket(ISS, "ticket-2", expires_at) is False


@pytest.mark.gen_test
async def test_start_resyncs_entries_made_before_it(redis_url: str, wall_clock: Any) -> None:
    now = wall_clock.now
    async with running(RedisRevocationStore(redis_url, max_staleness=5, clock=wall_clock)) as a:
        await a.revoke(make_entry("sub", "alice", now))
        await a.revoke(make_entry("jti", "jti-9", now))

    heard: list[RevocationEntry] = []
    late = RedisRevocationStore(redis_url, max_staleness=5, clock=wall_clock)
    late.subscribe(heard.append)
    async with running(late):
        assert late.ready
        assert late.is_revoked(make_claims(now))
        assert late.is_revoked(make_claims(now, sub="bob", jti="jti-9"))
        assert not late.is_revoked(make_claims(now, sub="bob"))
        assert sorted(entry.kind for entry in heard) == ["jti", "sub"]


@pytest.mark.gen_test
async def test_concurrent_revocations_of_one_subject_keep_the_wider_bound(
    redis_url: str, wall_clock: Any
) -> None:
    now = wall_clock.now
    store_a = RedisRevocationStore(redis_url, max_staleness=5, clock=wall_clock)
    store_b = RedisRevocationStore(redis_url, max_staleness=5, clock=wall_clock)
    token_issued_between = make_claims(now, iat=now + 5)
    async with running(store_a), running(store_b):
        await store_a.revoke(make_entry("sub", "alice", now + 10))
        await store_b.revoke(make_entry("sub", "alice", now))  # older, narrower, arrives late
        assert store_b.is_revoked(token_issued_between)

    async with running(RedisRevocationStore(redis_url, max_staleness=5, clock=wall_clock)) as c:
        assert c.is_revoked(token_issued_between)


@pytest.mark.gen_test
async def test_periodic_resync_finds_entries_whose_message_was_lost(
    redis_url: str, wall_clock: Any
) -> None:
    now = wall_clock.now
    store = RedisRevocationStore(
        redis_url, max_staleness=5, clock=wall_clock, resync_interval=0.2
    )
    heard: list[RevocationEntry] = []
    store.subscribe(heard.append)
    async with running(store):
        lost = make_entry("sid", "sid-3", now)
        write_behind_the_channel(redis_url, lost)
        assert await eventually(lambda: heard == [lost], within=2)
        assert store.is_revoked(make_claims(now, sid="sid-3"))


@pytest.mark.gen_test(timeout=10)
async def test_idle_healthy_replica_never_goes_stale(redis_url: str, wall_clock: Any) -> None:
    # A second of staleness, not half: this test must not fail on a busy machine's hiccup.
    store = RedisRevocationStore(redis_url, max_staleness=1.0, clock=wall_clock)
    async with running(store):
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert store.ready
            assert not store.is_revoked(make_claims(wall_clock.now))
            await asyncio.sleep(0.05)


@pytest.mark.gen_test(timeout=10)
async def test_start_without_redis_fails_closed(wall_clock: Any) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    store = RedisRevocationStore(
        url, max_staleness=STALENESS, clock=wall_clock, start_timeout=0.3
    )
    started = time.monotonic()
    async with running(store):
        assert time.monotonic() - started < 2
        assert not store.ready
        assert unavailable(store)
        with pytest.raises(StoreUnavailable):
            await store.revoke(make_entry("sid", "sid-1", wall_clock.now))
        with pytest.raises(StoreUnavailable):
            await store.consume_ticket(ISS, "ticket-1", wall_clock.now + 60)


@pytest.mark.gen_test(timeout=20)
async def test_fails_closed_while_redis_is_down_and_recovers(
    private_redis: PrivateRedis, wall_clock: Any
) -> None:
    now = wall_clock.now
    heard: list[RevocationEntry] = []
    store = RedisRevocationStore(
        private_redis.url, max_staleness=STALENESS, clock=wall_clock, socket_timeout=0.5
    )
    store.subscribe(heard.append)
    async with running(store):
        assert store.ready
        private_redis.stop()

        assert await eventually(lambda: unavailable(store), within=STALENESS + 1)
        assert not store.ready
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.revoke(make_entry("sid", "sid-1", now))
        with pytest.raises(StoreUnavailable):
            await store.consume_ticket(ISS, "ticket-1", now + 60)
        assert time.monotonic() - started < 2.5

        # Redis comes back (empty: no persistence) holding a revocation made meanwhile by
        # another process; the replica must resync to see it, not just reconnect.
        private_redis.start()
        missed = make_entry("sid", "sid-2", now)
        write_behind_the_channel(private_redis.url, missed)

        assert await eventually(lambda: store.ready, within=5)
        assert store.is_revoked(make_claims(now, sid="sid-2"))
        assert not store.is_revoked(make_claims(now, sid="sid-1"))  # that revoke failed
        assert heard == [missed]

        await store.revoke(make_entry("sid", "sid-1", now))
        assert store.is_revoked(make_claims(now, sid="sid-1"))


@pytest.mark.gen_test(timeout=20)
@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP/SIGCONT")
async def test_fails_closed_when_redis_hangs_and_recovers(
    private_redis: PrivateRedis, wall_clock: Any
) -> None:
    now = wall_clock.now
    store = RedisRevocationStore(
        private_redis.url, max_staleness=STALENESS, clock=wall_clock, socket_timeout=0.5
    )
    async with running(store):
        assert store.ready
        private_redis.freeze()  # sockets stay open, nothing answers
        try:
            assert await eventually(lambda: unavailable(store), within=STALENESS + 1)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.revoke(make_entry("sid", "sid-1", now))
            assert time.monotonic() - started < 1.5
        finally:
            private_redis.thaw()

        assert await eventually(lambda: store.ready, within=5)
        assert not store.is_revoked(make_claims(now))


@pytest.mark.gen_test
async def test_prefix_separates_deployments_sharing_one_redis(
    redis_url: str, wall_clock: Any
) -> None:
    now = wall_clock.now
    blue = RedisRevocationStore(redis_url, max_staleness=5, prefix="blue:", clock=wall_clock)
    green = RedisRevocationStore(redis_url, max_staleness=5, prefix="green:", clock=wall_clock)
    async with running(blue), running(green):
        await blue.revoke(make_entry("sid", "sid-1", now))
        assert await eventually(lambda: blue.is_revoked(make_claims(now)))
        await asyncio.sleep(0.1)  # time enough for a stray message to arrive
        assert not green.is_revoked(make_claims(now))
        assert await green.consume_ticket(ISS, "ticket-1", now + 60)
        assert await blue.consume_ticket(ISS, "ticket-1", now + 60)


def test_store_repr_never_shows_the_url() -> None:
    store = RedisRevocationStore("redis://:hunter2hunter2@127.0.0.1:1/0", max_staleness=1)
    assert "hunter2" not in repr(store)
    assert "hunter2" not in str(store)
