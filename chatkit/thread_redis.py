"""The Redis :class:`~chatkit.threads.ThreadStore`, for several processes and hosts.

Keys, for a thread ``<T>`` and the ``<prefix>`` (default ``tokensvc:chatkit:``)::

    <prefix>{<T>}:meta      hash    owner, last_event_id (the per-thread event counter)
    <prefix>{<T>}:order     list    message ids in the order they were added
    <prefix>{<T>}:messages  hash    "<message id>:role" and "<message id>:text"
    <prefix>{<T>}:events    stream  the event log, trimmed with MAXLEN ~ history

The literal braces are a Redis Cluster hash tag, so a thread's keys share one slot and its Lua
scripts may touch them together.

Event ids: each write runs one Lua script that increments ``last_event_id`` and adds the
stream entry with the explicit stream id ``<n>-0``. The stream id *is* the event id, so
replay is an ``XREVRANGE`` from ``<last+1>-0`` and a subscription is an ``XREAD`` from
``<cursor>-0``; the script makes the increment and the append atomic, so concurrent writers
in different processes can never add ids out of order.

Expiry: every write sets the TTL of all of the thread's keys to ``ttl`` seconds (default 7
days), so a thread lives that long after its last write and abandoned threads do not grow
Redis for ever. Reads do not extend it.

Subscriptions poll with ``XREAD BLOCK`` for at most ``block`` seconds at a time, one
connection from the pool per subscription while it waits. :meth:`Subscription.close`
cancels a pending read, so closing is immediate.

Timeouts: every command, ``XREAD BLOCK`` included, must answer within ``block +
command_timeout`` seconds and a connection must open within ``command_timeout``; redis-py's
own retries are off. A Redis that hangs (alive, accepting, never answering) therefore turns
into :class:`~chatkit.threads.ThreadStoreUnavailable` (503) within about 3 s by default,
instead of holding requests and streams for as long as it hangs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from chatkit.threads import (
    DEFAULT_HISTORY,
    DEFAULT_TTL,
    ROLES,
    Event,
    Message,
    Role,
    Subscription,
    SubscriptionClosed,
    Thread,
    ThreadFull,
    ThreadNotFound,
    ThreadStoreUnavailable,
    check_event_kind,
    check_message_text,
    is_thread_id,
    message_event_data,
)

__all__ = ["DEFAULT_BLOCK", "DEFAULT_COMMAND_TIMEOUT", "DEFAULT_PREFIX", "RedisThreadStore"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "tokensvc:chatkit:"
#: Longest single XREAD BLOCK, seconds.
DEFAULT_BLOCK = 1.0
#: Seconds a command may take beyond its own blocking time (and to open a connection).
DEFAULT_COMMAND_TIMEOUT = 2.0
_READ_COUNT = 256  # entries per XREAD: bounds one reply's size for a far-behind reader

# KEYS of every script: meta, order, messages, events (all of one thread).
_REFRESH_TTL = """
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
"""

# HGET, not the HINCRBY reply: Lua numbers are doubles and print large ones as 1e+14.
_APPEND = """
redis.call('HINCRBY', KEYS[1], 'last_event_id', 1)
local id = redis.call('HGET', KEYS[1], 'last_event_id')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], id .. '-0',
           'kind', ARGV[3], 'data', ARGV[4])
"""

# ARGV: ttl, owner
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'last_event_id', 0)
""" + _REFRESH_TTL + "return 1"

# ARGV: ttl, history, kind, data, owner, message id, role, text, limit ("" for none).
# Returns nil for "no such thread for this owner", -1 for "full", else the event id.
_ADD_MESSAGE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[5] then return false end
if ARGV[9] ~= '' and redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[9]) then return -1 end
redis.call('RPUSH', KEYS[2], ARGV[6])
redis.call('HSET', KEYS[3], ARGV[6] .. ':role', ARGV[7], ARGV[6] .. ':text', ARGV[8])
""" + _APPEND + _REFRESH_TTL + "return id"

# ARGV: ttl, history, kind, data
_APPEND_EVENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
""" + _APPEND + _REFRESH_TTL + "return id"

# ARGV: owner. Returns nil for "no such thread for this owner", else id, role, text, ...
_GET_THREAD = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return false end
local out = {}
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local fields = redis.call('HMGET', KEYS[3], id .. ':role', id .. ':text')
  if fields[1] and fields[2] then
    out[#out + 1] = id
    out[#out + 1] = fields[1]
    out[#out + 1] = fields[2]
  end
end
return out
"""


def _new_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits: thread ids are unguessable


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextmanager
def _redis_errors(operation: str) -> Iterator[None]:
    # One boundary for Redis failures: callers see a 503-shaped error. The log message
    # names the operation and the error class only; the connection URL may hold a password.
    try:
        yield
    except RedisError as err:
        raise ThreadStoreUnavailable(
            f"thread store: {operation} failed ({type(err).__name__})", retry_after=1
        ) from err


def _parse_entry(entry: object) -> Event | None:
    try:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise ValueError("not a stream entry")
        entry_id, fields = entry
        if not isinstance(fields, dict):
            raise ValueError("stream entry without fields")
        kind = fields["kind"]
        data = json.loads(fields["data"])
        check_event_kind(kind)
        if not isinstance(data, dict):
            raise ValueError("event data is not an object")
        return Event(_entry_number(entry_id), kind, data)
    except (KeyError, TypeError, ValueError):
        # Someone else wrote to our key space; skip the entry rather than end the stream.
        log.warning("skipping a malformed thread event entry")
        return None


def _entry_number(entry_id: object) -> int:
    """The event id of a stream entry id ``<n>-0``; ValueError for anything else."""
    if not isinstance(entry_id, str):
        raise ValueError("stream entry id is not text")
    return int(entry_id.split("-", 1)[0])


def _parse_entries(entries: Iterable[object]) -> list[Event]:
    events: list[Event] = []
    for entry in entries:
        event = _parse_entry(entry)
        if event is not None:
            events.append(event)
    return events


def _xread_entries(reply: object) -> list[object]:
    """The entries of a one-stream XREAD reply, in RESP2 (list) or RESP3 (dict) shape."""
    if isinstance(reply, dict):
        streams = list(reply.values())
    elif isinstance(reply, list | tuple):
        streams = [stream[1] for stream in reply]
    else:
        return []
    return [entry for entries in streams for entry in entries or ()]


class _RedisSubscription(Subscription):
    def __init__(self, store: RedisThreadStore, thread_id: str, cursor: int) -> None:
        super().__init__(thread_id)
        self._store = store
        self._cursor = cursor  # id of the last stream entry read
        self._buffer: deque[Event] = deque()
        self._read: asyncio.Task[None] | None = None

    async def _receive(self, deadline: float | None) -> Event | None:
        loop = asyncio.get_running_loop()
        while not self._buffer:
            if self.closed:
                raise SubscriptionClosed
            if self._read is None:
                self._read = asyncio.create_task(self._read_batch())
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            # A read that outlives this get() is kept for the next one rather than
            # cancelled: cancelling a command mid-reply costs the pooled connection.
            done, _ = await asyncio.wait({self._read}, timeout=timeout)
            if self.closed:
                raise SubscriptionClosed
            if not done:
                return None
            task, self._read = self._read, None
            task.result()  # re-raises ThreadStoreUnavailable
        return self._buffer.popleft()

    async def _read_batch(self) -> None:
        key = self._store._key(self.thread_id, "events")
        with _redis_errors("read events"):
            reply = await self._store._redis.xread(
                {key: f"{self._cursor}-0"}, count=_READ_COUNT, block=self._store._block_ms
            )
        entries = _xread_entries(reply)
        for entry in entries:
            if isinstance(entry, list | tuple) and entry:
                # Advance past every entry, malformed ones too, or they would be re-read.
                with suppress(ValueError):
                    self._cursor = max(self._cursor, _entry_number(entry[0]))
        self._buffer.extend(_parse_entries(entries))

    def _on_close(self) -> None:
        if self._read is not None:
            self._read.cancel()  # wakes the get() waiting on it
        self._store._subscriptions.discard(self)

    async def _wait_closed(self) -> None:
        task, self._read = self._read, None
        if task is not None:
            # Only to let the cancelled read clean up; its outcome no longer matters.
            await asyncio.gather(task, return_exceptions=True)


class RedisThreadStore:
    """Threads in Redis, shared by every process and host using the same Redis.

    ``url`` is a redis-py URL (``redis://``, ``rediss://``, ``unix://``); ``prefix`` starts
    every key; ``history`` is the events kept per thread (approximately: the stream is
    trimmed with ``MAXLEN ~``, replay returns at most ``history``); ``ttl`` the seconds a
    thread lives after its last write; ``block`` the longest single ``XREAD BLOCK``;
    ``command_timeout`` the seconds a command may take beyond that (see the module
    docstring for the key layout and the timeouts).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        history: int = DEFAULT_HISTORY,
        ttl: int = DEFAULT_TTL,
        block: float = DEFAULT_BLOCK,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        if not isinstance(ttl, int) or ttl < 1:
            raise ValueError("ttl must be a positive number of seconds")
        if not 0 < block <= 60:
            raise ValueError("block must be in (0, 60] seconds")
        if not 0 < command_timeout <= 60:
            raise ValueError("command_timeout must be in (0, 60] seconds")
        self.prefix = prefix
        self.history = history
        self.ttl = ttl
        self._block_ms = max(1, int(block * 1000))  # 0 would mean "block for ever"
        self._new_id = new_id
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            # One timeout for every command: the longest legitimate wait is an XREAD
            # blocking for ``block`` seconds, so that plus a margin; a hung Redis then
            # fails requests promptly instead of holding them.
            socket_timeout=block + command_timeout,
            socket_connect_timeout=command_timeout,
            # No silent retries: redis-py would retry with backoff for several seconds more,
            # and re-sending a script whose answer was lost could add a message twice.
            retry=Retry(NoBackoff(), 0),
        )
        self._create = self._redis.register_script(_CREATE)
        self._add_message = self._redis.register_script(_ADD_MESSAGE)
        self._append_event = self._redis.register_script(_APPEND_EVENT)
        self._get_thread = self._redis.register_script(_GET_THREAD)
        self._subscriptions: set[_RedisSubscription] = set()

    def __repr__(self) -> str:
        # No URL: it may carry a password.
        return f"RedisThreadStore(prefix={self.prefix!r}, history={self.history})"

    def _key(self, thread_id: str, part: str) -> str:
        return f"{self.prefix}{{{thread_id}}}:{part}"

    def _keys(self, thread_id: str) -> list[str]:
        return [self._key(thread_id, part) for part in ("meta", "order", "messages", "events")]

    async def create_thread(self, owner: str) -> str:
        """Create an empty thread for ``owner`` and return its id."""
        if not isinstance(owner, str) or not owner or not _encodable(owner):
            raise ValueError("owner must be a non-empty, UTF-8 encodable string")
        for _ in range(3):  # a clash of 128 random bits means a broken new_id
            thread_id = f"thr_{self._new_id()}"
            with _redis_errors("create thread"):
                created = await self._create(self._keys(thread_id), [self.ttl, owner])
            if created:
                return thread_id
        raise RuntimeError("could not allocate a fresh thread id")

    async def get_thread(self, thread_id: str, owner: str) -> Thread | None:
        """The thread if it exists and belongs to ``owner``, else None."""
        if not is_thread_id(thread_id) or not _encodable(owner):
            return None
        with _redis_errors("get thread"):
            reply = await self._get_thread(self._keys(thread_id)[:3], [owner])
        if reply is None:
            return None
        messages = [
            Message(reply[i], reply[i + 1], reply[i + 2]) for i in range(0, len(reply) - 2, 3)
        ]
        return Thread(thread_id, owner, messages)

    async def add_message(
        self, thread_id: str, owner: str, role: Role, text: str, *, limit: int | None = None
    ) -> Message:
        """Append a message and publish its ``message`` event, in one atomic script."""
        if role not in ROLES:
            raise ValueError("unknown message role")
        check_message_text(text)
        if not is_thread_id(thread_id) or not _encodable(owner):
            raise ThreadNotFound("add_message: malformed thread id or owner")
        message = Message(f"msg_{self._new_id()}", role, text)
        data = json.dumps(message_event_data(message))
        args: list[str | int] = [self.ttl, self.history, "message", data, owner]
        args += [message.id, role, text, "" if limit is None else limit]
        with _redis_errors("add message"):
            event_id = await self._add_message(self._keys(thread_id), args)
        if event_id is None:
            raise ThreadNotFound("add_message: no such thread for this owner")
        if event_id == -1:
            raise ThreadFull(f"add_message: thread holds {limit} messages")
        return message

    async def append_event(self, thread_id: str, kind: str, data: dict[str, Any]) -> int:
        """Append an event to the thread's stream and return its id."""
        check_event_kind(kind)
        if not is_thread_id(thread_id):
            raise ThreadNotFound("append_event: malformed thread id")
        payload = json.dumps(data, allow_nan=False)
        with _redis_errors("append event"):
            event_id = await self._append_event(
                self._keys(thread_id), [self.ttl, self.history, kind, payload]
            )
        if event_id is None:
            raise ThreadNotFound("append_event: no such thread")
        return int(event_id)

    async def events_after(self, thread_id: str, last_id: int | None) -> list[Event]:
        """The newest retained events after ``last_id`` (at most ``history``), oldest first."""
        if last_id is None or not is_thread_id(thread_id):
            return []
        with _redis_errors("replay events"):
            entries = await self._redis.xrevrange(
                self._key(thread_id, "events"),
                max="+",
                min=f"{last_id + 1}-0",
                count=self.history,
            )
        return _parse_entries(reversed(list(entries or [])))

    async def subscribe(self, thread_id: str) -> Subscription:
        """Receive every event appended to ``thread_id`` after this call, from any process."""
        if not is_thread_id(thread_id):
            raise ThreadNotFound("subscribe: malformed thread id")
        # The counter and the stream move together (one script), so the counter is
        # exactly the position after which this subscription must start.
        with _redis_errors("subscribe"):
            current = await self._redis.hget(self._key(thread_id, "meta"), "last_event_id")
        subscription = _RedisSubscription(self, thread_id, int(current or 0))
        self._subscriptions.add(subscription)
        return subscription

    async def close(self) -> None:
        """Close every subscription, wait for their reads to stop, close the pool."""
        subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()
        await asyncio.gather(*(s.aclose() for s in subscriptions))
        await self._redis.aclose()

