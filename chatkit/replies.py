"""Assistant replies: stream from the upstream into the thread's event log.

A reply runs as a background task after ``POST .../messages`` has answered 202. It is
bounded three ways so no upstream call is left running: an overall timeout, cancellation
when a revocation matches the session that asked for it, and cancellation at shutdown.
Cancelling the task closes the upstream HTTP stream (the upstream client's generator is
closed as the task unwinds).

What one owner (:func:`~chatkit.threads.owner_of`: a client and its subject) may cause is
bounded too, per process: at most ``max_per_owner`` replies running at once (past it, 429);
the write rate is the extension's (``[chatkit] writes_per_minute``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Iterator

from chatkit.threads import ThreadStore
from chatkit.upstream import Upstream
from tokensvc import Claims, RevocationEntry, Secret, TooManyRequests, UpstreamError

__all__ = [
    "DEFAULT_MAX_REPLIES_PER_OWNER",
    "ReplySlot",
    "ReplyTasks",
]

log = logging.getLogger("chatkit.replies")

DEFAULT_REPLY_TIMEOUT = 300.0
# How many earlier messages of the thread go to the upstream with the new one.
CONTEXT_MESSAGES = 50
#: Replies one owner may have running at once, per process; one more message is a 429.
DEFAULT_MAX_REPLIES_PER_OWNER = 4
# A running reply usually ends within seconds; ask for a retry after about that long.
REPLY_LIMIT_RETRY_AFTER = 5


class ReplySlot:
    """One of an owner's reply slots, held from before its message is stored.

    :meth:`start` hands the slot to the reply task, which frees it when it ends; see
    :meth:`ReplyTasks.reserve`.
    """

    def __init__(self, replies: ReplyTasks, owner: str) -> None:
        self.owner = owner
        self.started = False
        self._replies = replies

    def start(self, claims: Claims, thread_id: str, response_id: str, secret: Secret) -> None:
        """Start the reply to the thread's latest message in the background."""
        if self.started:
            raise RuntimeError("this reply slot has already started a reply")
        self._replies._start(self.owner, claims, thread_id, response_id, secret)
        self.started = True  # only now: the task frees the slot from here on


class ReplyTasks:
    """Starts, tracks, limits and cancels the reply tasks of this process.
    """

    def __init__(
        self,
        threads: ThreadStore,
        upstream: Upstream,
        model: str,
        *,
        timeout: float = DEFAULT_REPLY_TIMEOUT,
        max_per_owner: int = DEFAULT_MAX_REPLIES_PER_OWNER,
    ) -> None:
        if max_per_owner < 1:
            raise ValueError("max_per_owner must be at least 1")
        self._threads = threads
        self._upstream = upstream
        self._model = model
        self._timeout = timeout
        self._max_per_owner = max_per_owner
        self._tasks: dict[asyncio.Task[None], Claims] = {}
        self._busy: Counter[str] = Counter()  # replies running or reserved, per owner

    @contextlib.contextmanager
    def reserve(self, owner: str) -> Iterator[ReplySlot]:
        """Hold one of ``owner``'s reply slots while the message that asks for it is stored.

        TooManyRequests when the owner already has ``max_per_owner`` replies running or
        reserved. Taken *before* the message is stored, so a refused request leaves no
        message without a reply. Call ``slot.start(...)`` inside the block; if the block
        ends without it (the store refused the message, say), the slot is freed.
        """
        if self._busy[owner] >= self._max_per_owner:
            raise TooManyRequests(
                "owner at its concurrent reply limit", retry_after=REPLY_LIMIT_RETRY_AFTER
            )
        self._busy[owner] += 1
        slot = ReplySlot(self, owner)
        try:
            yield slot
        finally:
            if not slot.started:
                self._release(owner)

    def _start(
        self, owner: str, claims: Claims, thread_id: str, response_id: str, secret: Secret
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run(owner, thread_id, response_id, secret)
        )
        self._tasks[task] = claims
        task.add_done_callback(functools.partial(self._finished, owner))

    def _finished(self, owner: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._release(owner)

    def _release(self, owner: str) -> None:
        self._busy[owner] -= 1
        if self._busy[owner] <= 0:
            del self._busy[owner]

    def revoked(self, entry: RevocationEntry) -> None:
        """Cancel the replies of every session the entry matches (a store listener)."""
        for task, claims in list(self._tasks.items()):
            if entry.matches(claims):
                task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)

    async def _run(self, owner: str, thread_id: str, response_id: str, secret: Secret) -> None:
        threads = self._threads
        try:
            thread = await threads.get_thread(thread_id, owner)
            if thread is None:
                return
            history = [
                {"role": m.role, "content": m.text} for m in thread.messages[-CONTEXT_MESSAGES:]
            ]
            parts: list[str] = []
            reply = self._upstream.stream_reply(secret, self._model, history)
            # aclosing: if anything below raises (a store error, the timeout, a cancel),
            # the upstream HTTP stream is closed now, not whenever the GC gets to it.
            async with asyncio.timeout(self._timeout), contextlib.aclosing(reply):
                async for delta in reply:
                    if not delta:
                        continue
                    parts.append(delta)
                    await threads.append_event(
                        thread_id, "delta", {"response_id": response_id, "text": delta}
                    )
                    # Give the thread's readers a turn after every delta: an upstream that
                    # hands over many deltas at once (or a store that never waits) would
                    # otherwise fill every reader's queue before any of them runs.
                    await asyncio.sleep(0)
            text = "".join(parts)
            await threads.add_message(thread_id, owner, "assistant", text)
            await threads.append_event(
                thread_id, "done", {"response_id": response_id, "text": text}
            )
        except UpstreamError as err:
            log.warning("reply %s failed: %s", response_id, err.log_message)
            await self._report(thread_id, response_id, "upstream_error")
        except TimeoutError:
            log.warning("reply %s timed out after %.0f s", response_id, self._timeout)
            await self._report(thread_id, response_id, "upstream_timeout")
        except asyncio.CancelledError:
            # Revoked or shutting down: the upstream stream is closed as we unwind.
            await asyncio.shield(self._report(thread_id, response_id, "cancelled"))
            raise
        except Exception:
            log.exception("reply %s failed", response_id)
            await self._report(thread_id, response_id, "internal_error")

    async def _report(self, thread_id: str, response_id: str, code: str) -> None:
        try:
            await self._threads.append_event(
                thread_id, "error", {"code": code, "response_id": response_id}
            )
        except Exception:  # the store itself may be what failed
            log.warning("could not record %s for reply %s", code, response_id)
