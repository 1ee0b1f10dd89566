"""Chat threads: the :class:`ThreadStore` protocol, its records and the subscription model.

A thread belongs to one owner, the session token's client and subject (:func:`owner_of`),
and holds its messages plus an event log. Every change to a thread is an :class:`Event`
with an id that increases by one per thread, starting at 1; those ids are the SSE ``id:``
lines and what a browser sends back in ``Last-Event-ID``. The log keeps the last
``history`` events of each thread so a reconnecting stream can replay what it missed.

Backends live in their own modules (``chatkit.thread_memory``, ``chatkit.thread_redis``);
this module never imports them.

Streaming a thread without gaps or duplicates is done by :func:`follow`: subscribe first,
replay second, and drop live events already replayed. Subscribing first matters: an event
appended between the replay and the subscription would otherwise be lost.
"""

from __future__ import annotations

import abc
import asyncio
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from tokensvc import Claims, InvalidRequest, NotFound, TemporarilyUnavailable

__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_TTL",
    "ROLES",
    "THREAD_ID_PATTERN",
    "Event",
    "Message",
    "Role",
    "Subscription",
    "SubscriptionClosed",
    "Thread",
    "ThreadFull",
    "ThreadNotFound",
    "ThreadStore",
    "ThreadStoreUnavailable",
    "check_event_kind",
    "check_message_text",
    "follow",
    "is_thread_id",
    "message_event_data",
    "owner_of",
]

Role = Literal["user", "assistant", "system"]
ROLES: frozenset[str] = frozenset({"user", "assistant", "system"})

#: The shape of every thread id; handlers can use it in their URL rule. Ids are generated
#: here (``thr_`` + random URL-safe text), so anything else names no thread.
THREAD_ID_PATTERN = r"thr_[A-Za-z0-9_-]{1,128}"
_THREAD_ID = re.compile(THREAD_ID_PATTERN)
# Event kinds become the SSE "event:" field; a fixed small alphabet keeps them inert there.
_EVENT_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")

DEFAULT_HISTORY = 500
#: Seconds an untouched thread is kept (7 days); every write starts the period again.
DEFAULT_TTL = 7 * 24 * 3600


@dataclass(frozen=True)
class Message:
    """One message of a thread, as ``GET /chatkit/threads/{id}`` shows it."""

    id: str
    role: str
    text: str


@dataclass(frozen=True)
class Thread:
    """A thread and its messages in the order they were added."""

    id: str
    owner: str
    messages: list[Message] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    """One entry of a thread's event log; ``data`` is JSON-compatible and read-only."""

    id: int
    kind: str
    data: dict[str, Any]


class ThreadNotFound(NotFound):
    """No such thread, or not one this owner may see; renders as 404 either way."""


class ThreadFull(InvalidRequest):
    """The thread holds as many messages as it may; renders as 400 ``invalid_request``."""

    description = "The thread is full; start a new thread."


class ThreadStoreUnavailable(TemporarilyUnavailable):
    """The thread store's backend did not answer; renders as 503."""


class SubscriptionClosed(Exception):
    """The subscription was closed (by its owner, by the store, or for falling behind)."""


def owner_of(claims: Claims) -> str:
    """The owner a token acts for: its client and its subject, ``"<client_id>:<sub>"``.

    The subject alone is not enough: each client names its own users, so two clients may
    both mint tokens for ``user="alice"``, and neither may see the other's threads or use up
    the other's limits. Client ids cannot contain ``:``, so the pair reads back unambiguously.
    """
    return f"{claims.client_id}:{claims.sub}"


def is_thread_id(value: str) -> bool:
    """Whether ``value`` has the shape of a thread id (it may still name no thread)."""
    return _THREAD_ID.fullmatch(value) is not None


def check_event_kind(kind: str) -> None:
    """Raise ValueError unless ``kind`` is a lower-case word usable as an SSE event name."""
    if not _EVENT_KIND.fullmatch(kind):
        raise ValueError("event kind must match [a-z][a-z0-9_]{0,31}")


def check_message_text(text: str) -> None:
    """Raise ValueError unless ``text`` is a str that UTF-8 can encode.

    JSON bodies may carry lone surrogates (``"\\ud800"``); Redis cannot store them, so both
    backends refuse them alike and the handler can answer 400 instead of 500.
    """
    if not isinstance(text, str):
        raise ValueError("message text must be a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("message text is not valid Unicode") from None


def message_event_data(message: Message) -> dict[str, Any]:
    """The ``data`` of the ``message`` event published when ``message`` is added."""
    return {"id": message.id, "role": message.role, "text": message.text}


class Subscription(abc.ABC):
    """New events of one thread, in id order, from the moment of subscribing.

    Read with ``await get(timeout)`` (None when nothing arrived in time, so a caller can
    send keep-alives) or ``async for event in subscription``. :meth:`queue_replay` puts a
    replay in front of the live events and drops live events it already covers, which is
    what :func:`follow` uses. After :meth:`close`, :meth:`get` raises
    :class:`SubscriptionClosed` and iteration stops.
    """

    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        self._backlog: deque[Event] = deque()
        self._last_id = 0  # highest id handed out; live events at or below it are repeats
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the subscription is closed; a closed one delivers nothing more."""
        return self._closed

    def queue_replay(self, events: Sequence[Event]) -> None:
        """Deliver ``events`` (ascending ids) before any live event not already among them."""
        self._backlog.extend(events)
        if events:
            self._last_id = max(self._last_id, events[-1].id)

    # A timeout parameter rather than asyncio.timeout() around the call: cancelling a
    # pending Redis read would cost its connection, while a timeout here leaves the read
    # running for the next call.
    async def get(self, timeout: float | None = None) -> Event | None:  # noqa: ASYNC109
        """The next event, or None if none arrived within ``timeout`` seconds.

        Raises :class:`SubscriptionClosed` once closed, and the store's
        :class:`ThreadStoreUnavailable` if its backend fails (the subscription stays open).
        """
        if self._closed:
            raise SubscriptionClosed
        if self._backlog:
            return self._backlog.popleft()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        while True:
            event = await self._receive(deadline)
            if event is None:
                return None
            if event.id > self._last_id:
                self._last_id = event.id
                return event

    def close(self) -> None:
        """Stop the subscription now; a pending :meth:`get` wakes up. Idempotent."""
        if not self._closed:
            self._closed = True
            self._backlog.clear()
            self._on_close()

    async def aclose(self) -> None:
        """:meth:`close`, then wait until background reads have finished."""
        self.close()
        await self._wait_closed()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        try:
            event = await self.get()
        except SubscriptionClosed:
            raise StopAsyncIteration from None
        assert event is not None  # get() without a timeout never gives up
        return event

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def _receive(self, deadline: float | None) -> Event | None:
        """The next live event, None at ``deadline`` (loop time); raise when closed."""

    @abc.abstractmethod
    def _on_close(self) -> None:
        """Wake a pending :meth:`_receive` and detach from the store."""

    async def _wait_closed(self) -> None:
        """Wait for background work started by :meth:`_receive` to end."""
        return None


class ThreadStore(Protocol):
    """Where threads, their messages and their event logs live.

    Ownership is checked where an owner is given; the event-log methods take none because
    the handlers call them only after :meth:`get_thread` has said yes.
    """

    async def create_thread(self, owner: str) -> str:
        """Create an empty thread for ``owner`` and return its new random id."""
        ...

    async def get_thread(self, thread_id: str, owner: str) -> Thread | None:
        """The thread, or None when it does not exist *or* belongs to another owner."""
        ...

    async def add_message(
        self, thread_id: str, owner: str, role: Role, text: str, *, limit: int | None = None
    ) -> Message:
        """Append a message and publish a ``message`` event for it.

        Raises :class:`ThreadNotFound` when the thread is missing or not ``owner``'s, and
        :class:`ThreadFull` when ``limit`` is given and the thread already holds that many
        messages (checked and added in one step, so concurrent writers cannot overshoot).
        """
        ...

    async def append_event(self, thread_id: str, kind: str, data: dict[str, Any]) -> int:
        """Append an event and return its id; raises :class:`ThreadNotFound` if no thread.

        ``kind`` must pass :func:`check_event_kind` and ``data`` must be JSON-serialisable
        (ValueError / TypeError otherwise). Readers get a JSON copy, never ``data`` itself.
        """
        ...

    async def events_after(self, thread_id: str, last_id: int | None) -> list[Event]:
        """Retained events with an id above ``last_id``, oldest first, at most ``history``.

        ``last_id=None`` means "live tail only" and gives an empty list.
        """
        ...

    async def subscribe(self, thread_id: str) -> Subscription:
        """A subscription that receives every event appended after this call returns."""
        ...

    async def close(self) -> None:
        """Close every subscription and release the backend's resources."""
        ...


async def follow(store: ThreadStore, thread_id: str, last_id: int | None) -> Subscription:
    """Subscribe to a thread and queue the replay of events after ``last_id`` in front.

    The result yields each event once, in id order, with no gap between the replay and
    the live events. The caller closes it (``aclose`` or ``async with``).
    """
    subscription = await store.subscribe(thread_id)
    try:
        replay = await store.events_after(thread_id, last_id)
    except BaseException:
        await subscription.aclose()
        raise
    subscription.queue_replay(replay)
    return subscription
