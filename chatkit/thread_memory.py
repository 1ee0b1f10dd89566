"""The in-process :class:`~chatkit.threads.ThreadStore`: one process, no Redis.

Fan-out is asyncio-only: every subscriber has a bounded queue, and ``append_event`` puts the
event in each queue without waiting. A subscriber whose queue is full is closed rather than
allowed to grow memory without bound (or to slow down the writer); its browser reconnects
with ``Last-Event-ID`` and replays from the retained history. ``append_event`` never gives the
event loop a turn, so a writer producing many events in a row must (the reply task yields
after every delta): otherwise no reader runs and every subscriber overflows at once.

Threads untouched for ``ttl`` seconds are dropped, so abandoned threads do not accumulate in
a long-running process. With several worker processes or hosts use the Redis backend:
threads here are invisible to every other process.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    check_event_kind,
    check_message_text,
    is_thread_id,
    message_event_data,
)

__all__ = ["DEFAULT_QUEUE_SIZE", "MemoryThreadStore"]

#: Events a subscriber may have waiting before it counts as too slow and is closed.
DEFAULT_QUEUE_SIZE = 1024


def _new_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits: thread ids are unguessable


@dataclass
class _ThreadState:
    owner: str
    history: int
    touched_at: float
    messages: dict[str, Message] = field(default_factory=dict)  # insertion-ordered
    events: deque[Event] = field(init=False)
    last_event_id: int = 0

    def __post_init__(self) -> None:
        self.events = deque(maxlen=self.history)


class _MemorySubscription(Subscription):
    def __init__(
        self,
        thread_id: str,
        queue_size: int,
        detach: Callable[[_MemorySubscription], None],
    ) -> None:
        super().__init__(thread_id)
        # None is the close sentinel, so a pending get() wakes up on close().
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(queue_size)
        self._detach = detach

    def offer(self, event: Event) -> None:
        """Queue ``event`` without waiting; close the subscription if it is full."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.close()

    async def _receive(self, deadline: float | None) -> Event | None:
        if not self._queue.empty():
            # Without a detour through the loop: a reader that gets a turn drains what is
            # queued at once, rather than one event per several turns of the writer's.
            item = self._queue.get_nowait()
        else:
            loop = asyncio.get_running_loop()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                return None
        if item is None or self.closed:
            raise SubscriptionClosed
        return item

    def _on_close(self) -> None:
        # Drop what is queued (the reader resumes from history) to make room for the
        # sentinel even when the queue overflowed.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
        self._detach(self)


class MemoryThreadStore:
    """Threads in this process's memory. See the module docstring for limits.

    ``history`` is the number of events kept per thread for replay, ``ttl`` the seconds
    after the last write at which a thread is forgotten, ``queue_size`` the events a
    subscriber may lag behind before it is closed. ``clock`` and ``new_id`` are
    injectable for tests.
    """

    def __init__(
        self,
        *,
        history: int = DEFAULT_HISTORY,
        ttl: float = DEFAULT_TTL,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        clock: Callable[[], float] = time.monotonic,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.history = history
        self.ttl = ttl
        self._queue_size = queue_size
        self._clock = clock
        self._new_id = new_id
        # Least recently written first, so expiry only ever looks at the front.
        self._threads: OrderedDict[str, _ThreadState] = OrderedDict()
        self._subscribers: dict[str, set[_MemorySubscription]] = {}

    def __repr__(self) -> str:
        return f"MemoryThreadStore(threads={len(self._threads)}, history={self.history})"

    async def create_thread(self, owner: str) -> str:
        """Create an empty thread for ``owner`` and return its id."""
        _check_owner(owner)
        self._expire()
        thread_id = f"thr_{self._new_id()}"
        while thread_id in self._threads:  # pragma: no cover - 128 random bits
            thread_id = f"thr_{self._new_id()}"
        self._threads[thread_id] = _ThreadState(owner, self.history, self._clock())
        return thread_id

    async def get_thread(self, thread_id: str, owner: str) -> Thread | None:
        """The thread if it exists and belongs to ``owner``, else None."""
        state = self._owned(thread_id, owner)
        if state is None:
            return None
        return Thread(thread_id, state.owner, list(state.messages.values()))

    async def add_message(
        self, thread_id: str, owner: str, role: Role, text: str, *, limit: int | None = None
    ) -> Message:
        """Append a message and publish its ``message`` event; ThreadFull past ``limit``."""
        if role not in ROLES:
            raise ValueError("unknown message role")
        check_message_text(text)
        state = self._owned(thread_id, owner)
        if state is None:
            raise ThreadNotFound("add_message: no such thread for this owner")
        if limit is not None and len(state.messages) >= limit:
            raise ThreadFull(f"add_message: thread holds {limit} messages")
        message = Message(f"msg_{self._new_id()}", role, text)
        state.messages[message.id] = message
        self._publish(thread_id, state, "message", message_event_data(message))
        return message

    async def append_event(self, thread_id: str, kind: str, data: dict[str, Any]) -> int:
        """Append an event to the thread's log, fan it out, and return its id."""
        check_event_kind(kind)
        state = self._live(thread_id)
        if state is None:
            raise ThreadNotFound("append_event: no such thread")
        return self._publish(thread_id, state, kind, data)

    async def events_after(self, thread_id: str, last_id: int | None) -> list[Event]:
        """Retained events after ``last_id``; empty for None (live tail)."""
        state = self._live(thread_id)
        if state is None or last_id is None:
            return []
        return [event for event in state.events if event.id > last_id]

    async def subscribe(self, thread_id: str) -> Subscription:
        """Receive every event appended to ``thread_id`` from now on."""
        if not is_thread_id(thread_id):
            raise ThreadNotFound("subscribe: malformed thread id")
        subscription = _MemorySubscription(thread_id, self._queue_size, self._detach)
        self._subscribers.setdefault(thread_id, set()).add(subscription)
        return subscription

    async def close(self) -> None:
        """Close every subscription and forget every thread."""
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                subscription.close()
        self._subscribers.clear()
        self._threads.clear()

    def _publish(self, thread_id: str, state: _ThreadState, kind: str, data: dict[str, Any]) -> int:
        # A JSON round trip gives the same failures and the same copy semantics as the
        # Redis backend: the caller's dict is never shared with readers.
        payload = json.loads(json.dumps(data, allow_nan=False))
        state.last_event_id += 1
        event = Event(state.last_event_id, kind, payload)
        state.events.append(event)
        self._touch(thread_id, state)
        for subscription in list(self._subscribers.get(thread_id, ())):
            subscription.offer(event)
        return event.id

    def _detach(self, subscription: _MemorySubscription) -> None:
        subscribers = self._subscribers.get(subscription.thread_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.thread_id]

    def _owned(self, thread_id: str, owner: str) -> _ThreadState | None:
        state = self._live(thread_id)
        if state is None or state.owner != owner:
            return None
        return state

    def _live(self, thread_id: str) -> _ThreadState | None:
        self._expire()
        return self._threads.get(thread_id)

    def _touch(self, thread_id: str, state: _ThreadState) -> None:
        state.touched_at = self._clock()
        self._threads.move_to_end(thread_id)

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl
        while self._threads:
            thread_id, state = next(iter(self._threads.items()))
            if state.touched_at > cutoff:
                break
            del self._threads[thread_id]


def _check_owner(owner: str) -> None:
    if not isinstance(owner, str) or not owner:
        raise ValueError("owner must be a non-empty string")
