"""Assistant replies: stream from the upstream into the thread's event log.

A reply runs as a background task after ``POST .../messages`` has answered 202. It is
bounded three ways so no upstream call is left running: an overall timeout, cancellation
when a revocation matches the session that asked for it, and cancellation at shutdown.
Cancelling the task closes the upstream HTTP stream (the upstream client's generator is
closed as the task unwinds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from chatkit.threads import ThreadStore
from chatkit.upstream import Upstream
from tokensvc import Claims, RevocationEntry, Secret, UpstreamError

__all__ = ["ReplyTasks"]

log = logging.getLogger("chatkit.replies")

DEFAULT_REPLY_TIMEOUT = 300.0
# How many earlier messages of the thread go to the upstream with the new one.
CONTEXT_MESSAGES = 50


class ReplyTasks:
    """Starts, tracks and cancels the reply tasks of this process."""

    def __init__(
        self,
        threads: ThreadStore,
        upstream: Upstream,
        model: str,
        *,
        timeout: float = DEFAULT_REPLY_TIMEOUT,
    ) -> None:
        self._threads = threads
        self._upstream = upstream
        self._model = model
        self._timeout = timeout
        self._tasks: dict[asyncio.Task[None], Claims] = {}

    def start(self, claims: Claims, thread_id: str, response_id: str, secret: Secret) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run(claims, thread_id, response_id, secret)
        )
        self._tasks[task] = claims
        task.add_done_callback(self._tasks.pop)

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

    async def _run(
        self, claims: Claims, thread_id: str, response_id: str, secret: Secret
    ) -> None:
        threads = self._threads
        try:
            thread = await threads.get_thread(thread_id, claims.sub)
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
            text = "".join(parts)
            await threads.add_message(thread_id, claims.sub, "assistant", text)
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
