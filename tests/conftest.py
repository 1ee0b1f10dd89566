"""Shared fixtures: a fake clock, a real Redis, and a private redis-server to stop or freeze."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_support import PrivateRedis, private_redis_server, redis_server_binary


class FakeClock:
    """A settable ``time.time`` stand-in, so no test sleeps to reach an expiry."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def _close_stray_event_loop() -> Iterator[None]:
    """Close an event loop a test left installed as the thread's current loop.

    pytest-tornado's io_loop fixture leaves an (unclosed) asyncio loop set as current; a
    later ``asyncio.run`` replaces it, and the garbage collector then reports it as an
    unclosed loop, a ResourceWarning that filterwarnings=error turns into a failure in
    whichever test happens to be running.
    """
    yield
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)
    loop = getattr(local, "_loop", None)
    if loop is not None and not loop.is_running() and not loop.is_closed():
        loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis base URL: TOKENSVC_TEST_REDIS_URL, else a private redis-server, else skip.

    With TOKENSVC_TEST_REQUIRE_REDIS set (CI sets it) a missing Redis fails instead.
    """
    configured = os.environ.get("TOKENSVC_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    server = PrivateRedis(redis_server_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """A Redis URL whose database is emptied before the test (tests share one server)."""
    import redis

    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server_url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, to stop, freeze and restart (see redis_support)."""
    with private_redis_server(tmp_path / "redis") as server:
        yield server
