"""The RevocationStore contract, run against every backend."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import FakeClock
from tokensvc.claims import Claims
from tokensvc.errors import StoreUnavailable
from tokensvc.revocation import RevocationEntry, RevocationKind, RevocationStore
from tokensvc.revocation.memory import MemoryRevocationStore
from tokensvc.revocation.redis import RedisRevocationStore

ISS = "https://issuer.test"
CLIENT = "extension"


def make_claims(now: float, **overrides: Any) -> Claims:
    """A session token's claims, issued 10 s before ``now``."""
    values: dict[str, Any] = {
        "token_type": "session",
        "iss": ISS,
        "aud": "chatkit",
        "sub": "alice",
        "client_id": CLIENT,
        "skid": "sk-1",
        "sid": "sid-1",
        "jti": "jti-1",
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 3600,
        "scope": frozenset({"chatkit"}),
        "session_exp": now + 3600,
        "session_end": now + 86400,
    }
    values.update(overrides)
    return Claims(**values)


def make_entry(
    kind: RevocationKind,
    value: str,
    now: float,
    *,
    client_id: str = CLIENT,
    ttl: float = 3600,
    not_after: float | None = None,
) -> RevocationEntry:
    """An entry made at ``now``; bounded kinds cover tokens issued up to ``now``."""
    if not_after is None and kind in ("sub", "skid", "client"):
        not_after = now
    return RevocationEntry(
        kind=kind,
        value=value,
        client_id=client_id,
        iss=ISS,
        expires_at=now + ttl,
        not_after=not_after,
    )


StoreT = TypeVar("StoreT", bound=RevocationStore)


@asynccontextmanager
async def running(store: StoreT) -> AsyncIterator[StoreT]:
    """``store``, started for the ``async with`` block and closed after it."""
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def wall_clock(clock: Any) -> Any:
    """The fake clock, started at the real time: Redis expires keys by its own clock."""
    clock.now = time.time()
    return clock


@pytest.fixture(params=["memory", "redis"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, wall_clock: Any
) -> Callable[[], RevocationStore]:
    """A factory of unstarted stores sharing one backend (one file, or one Redis)."""
    if request.param == "memory":
        return functools.partial(
            MemoryRevocationStore, tmp_path / "revocations.jsonl", clock=wall_clock
        )
    redis_url = request.getfixturevalue("redis_url")
    # A monotonic clock that stands still: no test here is about staleness, and a busy
    # machine must not make the replica stale under one (test_revocation_redis.py is).
    return functools.partial(
        RedisRevocationStore, redis_url, max_staleness=5.0, clock=wall_clock,
        monotonic=FakeClock(),
    )


# kind, value, claims overrides that must match, claims overrides that must not.
MATCH_CASES = [
    pytest.param(
        "jti",
        "jti-1",
        [{}, {"client_id": "other", "sid": "sid-9"}],
        [{"jti": "jti-2"}, {"iss": "https://elsewhere.test"}],
        id="jti",
    ),
    pytest.param(
        "sid",
        "sid-1",
        [{}, {"jti": "jti-2"}, {"token_type": "ticket", "aud": "chatkit:stream"}],
        [{"sid": "sid-2"}, {"client_id": "other"}, {"iss": "https://elsewhere.test"}],
        id="sid",
    ),
    pytest.param(
        "sub",
        "alice",
        [{}, {"sid": "sid-2", "jti": "jti-2"}, {"iat": "now"}],
        [
            {"iat": "now+1"},
            {"sub": "bob"},
            {"client_id": "other"},
            {"iss": "https://elsewhere.test"},
        ],
        id="sub",
    ),
    pytest.param(
        "skid",
        "sk-1",
        [{}, {"sub": "bob", "sid": "sid-2"}, {"iat": "now"}],
        [
            {"iat": "now+1"},
            {"skid": "sk-2"},
            {"client_id": "other"},
            {"iss": "https://elsewhere.test"},
        ],
        id="skid",
    ),
    pytest.param(
        "client",
        CLIENT,
        [{}, {"sub": "bob", "skid": "sk-2", "sid": "sid-2"}, {"iat": "now"}],
        [{"iat": "now+1"}, {"client_id": "other"}, {"iss": "https://elsewhere.test"}],
        id="client",
    ),
]


def _claims_for(now: float, overrides: dict[str, Any]) -> Claims:
    times = {"now": now, "now+1": now + 1}
    resolved = {k: times.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}
    return make_claims(now, **resolved)


@pytest.mark.gen_test
@pytest.mark.parametrize(("kind", "value", "hits", "misses"), MATCH_CASES)
async def test_entry_revokes_exactly_the_tokens_it_names(
    make_store: Callable[[], RevocationStore],
    wall_clock: Any,
    kind: RevocationKind,
    value: str,
    hits: list[dict[str, Any]],
    misses: list[dict[str, Any]],
) -> None:
    now = wall_clock.now
    async with running(make_store()) as store:
        for overrides in hits + misses:
            assert not store.is_revoked(_claims_for(now, overrides))

        await store.revoke(make_entry(kind, value, now))

        for overrides in hits:
            assert store.is_revoked(_claims_for(now, overrides)), overrides
        for overrides in misses:
            assert not store.is_revoked(_claims_for(now, overrides)), overrides


@pytest.mark.gen_test
async def test_entry_stops_matching_once_expired(
    make_store: Callable[[], RevocationStore], wall_clock: Any
) -> None:
    now = wall_clock.now
    claims = make_claims(now)
    async with running(make_store()) as store:
        await store.revoke(make_entry("sid", "sid-1", now, ttl=100))
        wall_clock.advance(99)
        assert store.is_revoked(claims)
        wall_clock.advance(2)
        assert not store.is_revoked(claims)

    # A store starting afresh (restart, resync) does not bring the expired entry back.
    async with running(make_store()) as fresh:
        assert not fresh.is_revoked(claims)


@pytest.mark.gen_test
async def test_already_expired_entry_is_not_recorded(
    make_store: Callable[[], RevocationStore], wall_clock: Any
) -> None:
    now = wall_clock.now
    heard: list[RevocationEntry] = []
    async with running(make_store()) as store:
        store.subscribe(heard.append)
        await store.revoke(make_entry("sid", "sid-1", now - 100, ttl=50))
        assert not store.is_revoked(make_claims(now))
    assert heard == []


@pytest.mark.gen_test
async def test_ticket_is_single_use(
    make_store: Callable[[], RevocationStore], wall_clock: Any
) -> None:
    now = wall_clock.now
    async with running(make_store()) as store:
        assert await store.consume_ticket(ISS, "ticket-1", now + 60) is True
        assert await store.consume_ticket(ISS, "ticket-1", now + 60) is False
        assert await store.consume_ticket(ISS, "ticket-2", now + 60) is True
        assert await store.consume_ticket("https://elsewhere.test", "ticket-1", now + 60) is True

        # The verifier accepts a ticket for `leeway` past its exp: it must stay used then.
        wall_clock.advance(61)
        assert await store.consume_ticket(ISS, "ticket-1", now + 60) is False


@pytest.mark.gen_test
async def test_listeners_hear_each_new_entry_until_unsubscribed(
    make_store: Callable[[], RevocationStore], wall_clock: Any
) -> None:
    now = wall_clock.now
    heard: list[RevocationEntry] = []

    def broken(entry: RevocationEntry) -> None:
        raise RuntimeError("a broken stream")

    async with running(make_store()) as store:
        store.subscribe(broken)  # must not stop the others or fail the revocation
        unsubscribe = store.subscribe(heard.append)
        first = make_entry("sid", "sid-1", now)
        await store.revoke(first)
        assert heard == [first]
        assert store.is_revoked(make_claims(now))

        unsubscribe()
        unsubscribe()  # harmless twice
        await store.revoke(make_entry("sid", "sid-2", now))
        assert heard == [first]


@pytest.mark.gen_test
async def test_rerevoking_is_idempotent_and_never_narrows(
    make_store: Callable[[], RevocationStore], wall_clock: Any
) -> None:
    now = wall_clock.now
    heard: list[RevocationEntry] = []
    early_token = make_claims(now, iat=now - 10)
    later_token = make_claims(now, iat=now + 5, jti="jti-2")
    async with running(make_store()) as store:
        store.subscribe(heard.append)
        entry = make_entry("sub", "alice", now)
        await store.revoke(entry)
        await store.revoke(entry)
        assert heard == [entry]  # nothing new the second time
        assert store.is_revoked(early_token)
        assert not store.is_revoked(later_token)

        wider = make_entry("sub", "alice", now + 10)  # revoked again later: covers more
        await store.revoke(wider)
        assert heard == [entry, wider]
        assert store.is_revoked(later_token)

        await store.revoke(entry)  # a late, narrower copy leaves the wider bound
        assert store.is_revoked(later_token)
        assert heard == [entry, wider]

    async with running(make_store()) as restarted:
        assert restarted.is_revoked(early_token)
        assert restarted.is_revoked(later_token)


@pytest.mark.gen_test
async def test_not_ready_and_fails_closed_until_started(
    make_store: Callable[[], RevocationStore], wall_clock: Any
) -> None:
    store = make_store()
    assert not store.ready
    with pytest.raises(StoreUnavailable):
        store.is_revoked(make_claims(wall_clock.now))
    async with running(store):
        assert store.ready
        assert not store.is_revoked(make_claims(wall_clock.now))
    assert not store.ready
