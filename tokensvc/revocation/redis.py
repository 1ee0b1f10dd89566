"""The shared revocation store: Redis as the source of truth, a local replica per process.

Layout under ``prefix`` (``tokensvc:`` by default):

- ``<prefix>rev:<entry.key>`` -> the entry as JSON, ``EXAT`` its ``expires_at``;
- ``<prefix>revocations`` -> pub/sub channel carrying every stored entry;
- ``<prefix>ticket:<iss>:<jti>`` -> ``1``, set with ``NX`` so a ticket is used once across
  every process.

``is_revoked`` is on the hot path and never waits on Redis: it answers from the replica,
which a background task keeps current (full resync on every (re)subscribe, then pub/sub).
Resyncs merge into the replica: an entry leaves it only by expiring.
The replica is trusted for ``max_staleness`` seconds after its last confirmed sync; past
that ``is_revoked`` raises :class:`StoreUnavailable` so requests fail closed (503) instead
of waving through a token that was revoked while this process was not listening.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, WatchError

from tokensvc.claims import Claims
from tokensvc.errors import StoreUnavailable
from tokensvc.logs import ThrottledLog
from tokensvc.redis_reasons import describe_redis_failure
from tokensvc.revocation.base import RevocationEntry
from tokensvc.revocation.index import TICKET_GRACE, RevocationIndex, widen
from tokensvc.revocation.listeners import Listener, Listeners
from tokensvc.revocation.redis_codec import dump_entry, glob_escape, parse_entry

__all__ = ["RedisRevocationStore"]

log = logging.getLogger(__name__)

# Reconnect delays: quick after a blip, capped so a long outage costs little.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0
_PING_PAYLOAD = b"tokensvc-revocation-sync"
_SCAN_BATCH = 500
_WATCH_ATTEMPTS = 5
#: While the feed keeps failing, its reason is logged at most once per this many seconds.
FAILURE_LOG_INTERVAL = 30.0


class RedisRevocationStore:
    """Revocations shared by every process through Redis, answered from a local replica.

    ``max_staleness`` is how long the replica may go without a confirmed sync before
    ``is_revoked`` fails closed. While healthy, the feed is confirmed every
    ``max_staleness / 3`` seconds with a PING on the subscription connection: its PONG
    arrives after every message published before it, so an idle replica never goes stale.
    ``resync_interval``, if set, adds a periodic full resync on top (belt and braces).

    ``socket_timeout`` bounds each Redis command, so ``revoke`` and ``consume_ticket``
    answer :class:`StoreUnavailable` within about twice that when Redis is down, never
    a false success. ``start_timeout`` bounds how long :meth:`start` waits for the first
    sync; if Redis is not reachable by then, start-up continues and the store fails
    closed (``ready`` False) until the background task gets through.

    While the feed fails, why (``connection refused``, ``authentication failed``,
    ``timed out``: the kind of failure only, never redis-py's text, which names hosts and
    may quote more) is logged at once, then at most every ``failure_log_interval`` seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        max_staleness: float,
        prefix: str = "tokensvc:",
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        resync_interval: float | None = None,
        socket_timeout: float = 2.0,
        start_timeout: float = 5.0,
        failure_log_interval: float = FAILURE_LOG_INTERVAL,
    ) -> None:
        if max_staleness <= 0:
            raise ValueError("max_staleness must be positive")
        if resync_interval is not None and resync_interval <= 0:
            raise ValueError("resync_interval must be positive")
        if socket_timeout <= 0:
            raise ValueError("socket_timeout must be positive")
        self._url = url  # may hold a password: never logged, never in a repr
        self._max_staleness = max_staleness
        self._prefix = prefix
        self._key_prefix = f"{prefix}rev:"
        self._channel = f"{prefix}revocations"
        self._clock = clock
        self._monotonic = monotonic
        self._resync_interval = resync_interval
        self._socket_timeout = socket_timeout
        self._start_timeout = start_timeout
        self._index = RevocationIndex(now=clock())
        self._listeners = Listeners()
        self._last_sync: float | None = None
        self._synced: asyncio.Event | None = None
        self._client: Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._feed_healthy = False  # only to log state changes once, not every retry
        self._failure: str | None = None  # why the feed last failed, while it is down
        self._failure_log = ThrottledLog(log, failure_log_interval, monotonic=monotonic)

    def __repr__(self) -> str:
        return f"RedisRevocationStore(prefix={self._prefix!r})"

    @property
    def ready(self) -> bool:
        """True when the replica has synced within ``max_staleness``."""
        return self._fresh()

    async def start(self) -> None:
        """Connect, start following Redis and wait (bounded) for the first full sync."""
        if self._client is not None:
            return
        self._synced = asyncio.Event()
        self._client = Redis.from_url(
            self._url,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=self._socket_timeout,
            # No silent retries: redis-py would otherwise retry with backoff for many
            # seconds, and a revoke must answer "unavailable" promptly instead.
            retry=Retry(NoBackoff(), 0),
        )
        self._task = asyncio.create_task(self._follow_forever(), name="revocation-sync")
        try:
            async with asyncio.timeout(self._start_timeout):
                await self._synced.wait()
        except TimeoutError:
            log.warning(
                "revocation store not synced with Redis within %g s (%s); "
                "failing closed until it is",
                self._start_timeout,
                self._failure or "no answer yet",
            )

    async def close(self) -> None:
        """Stop the background task and close every connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self._last_sync = None

    def is_revoked(self, claims: Claims) -> bool:
        """Answer from the replica; raise :class:`StoreUnavailable` if it is stale.

        No I/O here. A replica that has not heard from Redis within ``max_staleness`` may
        be missing revocations made elsewhere, so it refuses to answer rather than guess.
        """
        if not self._fresh():
            raise StoreUnavailable("revocation replica is not in sync with Redis")
        return self._index.is_revoked(claims, self._clock())

    async def revoke(self, entry: RevocationEntry) -> None:
        """Store ``entry`` in Redis, publish it, then apply it here and tell the listeners.

        Raises :class:`StoreUnavailable` if Redis did not confirm the write: a revocation
        is reported done only once every process can see it. An entry that has already
        expired can match no live token and is ignored.
        """
        client = self._require_client()
        if entry.expires_at <= self._clock():
            return
        try:
            async with asyncio.timeout(2 * self._socket_timeout):
                stored = await self._store(client, entry)
        except (RedisError, OSError, TimeoutError) as err:
            raise StoreUnavailable(
                f"cannot record revocation in Redis: {describe_redis_failure(err)}"
            ) from err
        self._apply(stored)

    async def consume_ticket(self, iss: str, jti: str, expires_at: float) -> bool:
        """``SET NX``: True for the one process that uses the ticket first, else False.

        Raises :class:`StoreUnavailable` if Redis does not answer: a ticket is never
        accepted without the shared record that makes it single-use.
        """
        client = self._require_client()
        key = f"{self._prefix}ticket:{iss}:{jti}"
        keep_until = math.ceil(max(expires_at, self._clock()) + TICKET_GRACE)
        try:
            async with asyncio.timeout(2 * self._socket_timeout):
                created = await client.set(key, b"1", nx=True, exat=keep_until)
        except (RedisError, OSError, TimeoutError) as err:
            raise StoreUnavailable(
                f"cannot record ticket use in Redis: {describe_redis_failure(err)}"
            ) from err
        return bool(created)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every new entry, made here or in another process."""
        return self._listeners.subscribe(listener)

    # -- writes -----------------------------------------------------------------------

    def _require_client(self) -> Redis:
        if self._client is None:
            raise StoreUnavailable("revocation store not started")
        return self._client

    async def _store(self, client: Redis, entry: RevocationEntry) -> RevocationEntry:
        """Merge ``entry`` with what Redis holds, atomically; returns what was stored.

        WATCH/MULTI so two processes revoking the same subject at once cannot overwrite a
        wider bound with a narrower one; SET and PUBLISH in one transaction so nothing is
        published that was not stored.
        """
        key = self._key_prefix + entry.key
        async with client.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_ATTEMPTS):
                try:
                    await pipe.watch(key)
                    current = parse_entry(await pipe.get(key))
                    stored = entry
                    if current is not None and current.key == entry.key:
                        stored = widen(current, entry)
                    payload = dump_entry(stored)
                    pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py
                    pipe.set(key, payload, exat=math.ceil(stored.expires_at))
                    pipe.publish(self._channel, payload)
                    await pipe.execute()
                    return stored
                except WatchError:
                    continue  # another process changed the entry: merge again
        raise StoreUnavailable("revocation entry kept changing concurrently")

    def _apply(self, entry: RevocationEntry) -> None:
        changed = self._index.add(entry, self._clock())
        if changed is not None:
            # Only news reaches the listeners: our own PUBLISH comes back over the
            # subscription and must not close streams twice.
            self._listeners.notify(changed)

    # -- the feed ---------------------------------------------------------------------

    def _fresh(self) -> bool:
        return (
            self._last_sync is not None
            and self._monotonic() - self._last_sync <= self._max_staleness
        )

    def _mark_synced(self, as_of: float) -> None:
        """Everything published before monotonic time ``as_of`` is in the replica."""
        if self._last_sync is None or as_of > self._last_sync:
            self._last_sync = as_of
        if self._synced is not None:
            self._synced.set()

    async def _follow_forever(self) -> None:
        """Subscribe and follow; on any failure reconnect with bounded backoff."""
        client = self._require_client()
        delay = BACKOFF_MIN
        while True:
            pubsub = client.pubsub()
            reason = "subscription ended"
            try:
                await self._follow(pubsub)
            except (RedisError, OSError, TimeoutError) as err:
                reason = describe_redis_failure(err)
            except Exception:
                # Unexpected, but the task must survive it: if it died, the replica would
                # go stale for good and every request would be a 503.
                log.exception("revocation feed failed")
                reason = "unexpected error"
            finally:
                # A fresh PubSub per attempt: redis-py would otherwise reconnect and
                # resubscribe silently, and messages missed meanwhile would go unnoticed.
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            if self._feed_healthy:
                delay = BACKOFF_MIN  # this connection worked: retry promptly
            self._feed_lost(reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _feed_lost(self, reason: str) -> None:
        self._failure = reason
        if self._feed_healthy:
            log.warning("lost the Redis revocation feed (%s); reconnecting", reason)
            self._failure_log.logged()
        else:
            self._failure_log.log(
                logging.WARNING,
                "cannot follow the Redis revocation feed (%s); %s; retrying, "
                "reported at most every %g s while it fails",
                reason,
                "answering from the replica until it is stale"
                if self._fresh()
                else "failing closed",
                self._failure_log.interval,
            )
        self._feed_healthy = False

    async def _follow(self, pubsub: PubSub) -> None:
        """Follow one subscription until it fails (it never returns normally)."""
        loop = asyncio.get_running_loop()
        interval = self._max_staleness / 3
        next_ping = loop.time() + interval
        next_resync = math.inf
        ping_sent_at: float | None = None  # loop time of the unanswered PING
        ping_as_of = 0.0  # monotonic time when that PING was sent
        synced = False  # a full resync has completed on this connection
        self._feed_healthy = False
        await pubsub.subscribe(self._channel)
        while True:
            wake = min(next_ping, next_resync)
            message = await pubsub.get_message(timeout=max(0.0, wake - loop.time()))
            kind = None if message is None else message["type"]
            if kind == "subscribe":
                # Subscribed first, scanned second: anything stored after the scan passed
                # its key arrives as a message, so nothing falls in between.
                await self._resync()
                synced = True
                if self._resync_interval is not None:
                    next_resync = loop.time() + self._resync_interval
            elif kind == "message":
                self._on_message(message["data"])
            elif kind == "pong" and ping_sent_at is not None and message["data"] == _PING_PAYLOAD:
                ping_sent_at = None
                if synced:
                    self._mark_synced(ping_as_of)
            elif kind in ("unsubscribe", "punsubscribe"):
                raise ConnectionError("unsubscribed from the revocation channel")

            now = loop.time()
            if now >= next_resync:
                await self._resync()
                next_resync = now + (self._resync_interval or math.inf)
            if now >= next_ping:
                if ping_sent_at is None:
                    ping_sent_at, ping_as_of = now, self._monotonic()
                    await pubsub.ping(_PING_PAYLOAD)
                elif now - ping_sent_at > self._max_staleness:
                    # The socket looks open but Redis is not answering (hung server,
                    # dead peer behind a NAT): reconnect instead of waiting forever.
                    raise TimeoutError("no answer to PING on the revocation feed")
                next_ping = now + interval

    async def _resync(self) -> None:
        """Read every entry from Redis into the replica and tell listeners what was new.

        Entries are merged into the replica rather than replacing it: an entry can leave
        only by expiring, so a Redis that restarted empty cannot make this process forget
        a revocation it already knew.
        """
        client = self._require_client()
        as_of = self._monotonic()
        entries = await self._fetch_all(client)
        now = self._clock()
        news = [changed for e in entries if (changed := self._index.add(e, now)) is not None]
        self._index.prune(now)
        self._mark_synced(as_of)
        if not self._feed_healthy:
            log.info("revocation replica synced with Redis (%d live entries)", len(self._index))
            self._failure = None
            self._failure_log.reset()
        self._feed_healthy = True
        for entry in news:
            self._listeners.notify(entry)

    async def _fetch_all(self, client: Redis) -> list[RevocationEntry]:
        keys: list[bytes] = [
            key
            async for key in client.scan_iter(
                match=glob_escape(self._key_prefix) + "*", count=_SCAN_BATCH
            )
        ]
        entries: list[RevocationEntry] = []
        for start in range(0, len(keys), _SCAN_BATCH):
            values = await client.mget(keys[start : start + _SCAN_BATCH])
            for value in values:
                entry = parse_entry(value)  # None: expired between SCAN and MGET, or damaged
                if entry is not None:
                    entries.append(entry)
        return entries

    def _on_message(self, data: Any) -> None:
        entry = parse_entry(data)
        if entry is None:
            log.warning("ignoring an unreadable message on the revocation channel")
            return
        self._apply(entry)
