"""One lookup per id at a time, bounded in time: the wrapper every configured provider gets.

Concurrent :meth:`SingleFlightProvider.resolve` calls for the same ``secret_key_id`` share a
single call to the inner provider, so a burst of ``POST /sessions`` does not become a burst
at the secret holder. The shared call is forgotten as soon as it finishes: nothing is cached
beyond it, and the next lookup asks the holder again (a withdrawn secret stops being handed
out at once).

The shared call is bounded by ``timeout``; past it every waiter gets
:class:`~tokensvc.errors.ProviderUnavailable`, so a slow holder is a 503, never a hung
request. A waiter that is cancelled (its client went away) leaves the shared call running for
the others. Anything other than UnknownSecret and ProviderUnavailable escaping the inner
provider is wrapped into ProviderUnavailable.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from tokensvc.errors import ProviderUnavailable, UnknownSecret
from tokensvc.providers.base import SecretProvider
from tokensvc.redacted import Secret

__all__ = ["SingleFlightProvider"]


@dataclass(frozen=True)
class _Flight:
    """One shared inner call and the loop time by which it must have answered."""

    task: asyncio.Task[Secret]
    deadline: float


class SingleFlightProvider:
    """Shares concurrent lookups of one id and bounds them by ``timeout`` seconds."""

    def __init__(self, inner: SecretProvider, timeout: float) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        self._inner = inner
        self._timeout = timeout
        self._flights: dict[str, _Flight] = {}

    def __repr__(self) -> str:
        return f"SingleFlightProvider({self._inner!r}, timeout={self._timeout:g})"

    @property
    def inner(self) -> SecretProvider:
        """The wrapped provider."""
        return self._inner

    async def resolve(self, secret_key_id: str) -> Secret:
        """The inner provider's answer for ``secret_key_id``, shared with concurrent callers."""
        loop = asyncio.get_running_loop()
        flight = self._flights.get(secret_key_id)
        if flight is None:
            deadline = loop.time() + self._timeout
            task = asyncio.create_task(self._call(secret_key_id, deadline))
            flight = _Flight(task, deadline)
            self._flights[secret_key_id] = flight
            task.add_done_callback(lambda done: self._land(secret_key_id, done))
        try:
            # shield: cancelling this waiter must not cancel the call the others wait on.
            # The bound here, and not only the one in _call, is what guarantees the caller its
            # answer by the deadline: an inner provider that swallows its cancellation can
            # keep _call running, but not this caller waiting.
            return await asyncio.wait_for(
                asyncio.shield(flight.task), flight.deadline - loop.time()
            )
        except TimeoutError:
            # Forget an overdue call, so the next lookup starts afresh instead of joining it.
            self._forget(secret_key_id, flight.task)
            raise self._timed_out(secret_key_id) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if flight.task.cancelled() and current is not None and not current.cancelling():
                # The shared call was cancelled (close() at shutdown), not this caller.
                raise ProviderUnavailable("secret provider is shutting down") from None
            raise

    async def close(self) -> None:
        """Cancel lookups still in flight and close the inner provider."""
        tasks = [flight.task for flight in self._flights.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._inner.close()

    async def _call(self, secret_key_id: str, deadline: float) -> Secret:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self._inner.resolve(secret_key_id), remaining)
        except (UnknownSecret, ProviderUnavailable):
            raise
        except TimeoutError:
            raise self._timed_out(secret_key_id) from None
        except Exception as err:
            # A bug or an unexpected library error in a backend is still "the holder could
            # not answer": a 503, never a 500. Only the type is named: the message of a
            # foreign exception is not known to be free of secrets.
            raise ProviderUnavailable(
                f"secret provider failed for {secret_key_id!r}: {type(err).__name__}"
            ) from err

    def _timed_out(self, secret_key_id: str) -> ProviderUnavailable:
        return ProviderUnavailable(
            f"secret provider did not answer for {secret_key_id!r} within {self._timeout:g} s"
        )

    def _forget(self, secret_key_id: str, task: asyncio.Task[Secret]) -> None:
        flight = self._flights.get(secret_key_id)
        if flight is not None and flight.task is task:
            del self._flights[secret_key_id]

    def _land(self, secret_key_id: str, task: asyncio.Task[Secret]) -> None:
        # Forget the call as soon as it is done, so the next lookup asks again.
        self._forget(secret_key_id, task)
        if not task.cancelled():
            # Mark the outcome as seen: when every waiter has gone (cancelled or timed out),
            # asyncio would otherwise log "exception was never retrieved".
            task.exception()
