"""Bookkeeping for open event streams: the per-owner limit and revocation fan-out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from chatkit.threads import owner_of
from tokensvc import Claims, RevocationEntry, TooManyRequests

__all__ = ["OpenStream", "StreamRegistry"]

STREAM_LIMIT_RETRY_AFTER = 5


class OpenStream:
    """One open stream: who it belongs to, and how to end it when revoked."""

    def __init__(self, claims: Claims, on_revoked: Callable[[], None]) -> None:
        self.claims = claims
        self.owner = owner_of(claims)
        self.on_revoked = on_revoked


class StreamRegistry:
    """Counts open streams per owner and ends the ones a revocation matches.

    The owner is the token's client and subject (:func:`~chatkit.threads.owner_of`), so
    another client minting tokens for the same ``user`` cannot use up this one's streams.
    One registry per process; the revocation store calls :meth:`revoked` for every entry,
    whichever process recorded it, so a revocation reaches every open stream everywhere.
    The limit (``max_streams_per_subject``) is per process: with N workers an owner may hold
    up to N times that many streams in all.
    """

    def __init__(self, max_per_owner: int) -> None:
        self._max = max_per_owner
        self._per_owner: Counter[str] = Counter()
        self._open: set[OpenStream] = set()

    def open(self, claims: Claims, on_revoked: Callable[[], None]) -> OpenStream:
        """Register a stream; TooManyRequests when its owner is at the limit."""
        stream = OpenStream(claims, on_revoked)
        if self._per_owner[stream.owner] >= self._max:
            raise TooManyRequests("owner at its stream limit", retry_after=STREAM_LIMIT_RETRY_AFTER)
        self._per_owner[stream.owner] += 1
        self._open.add(stream)
        return stream

    def close(self, stream: OpenStream) -> None:
        if stream in self._open:
            self._open.discard(stream)
            self._per_owner[stream.owner] -= 1
            if self._per_owner[stream.owner] <= 0:
                del self._per_owner[stream.owner]

    def revoked(self, entry: RevocationEntry) -> None:
        """End every open stream whose token the entry matches (a store listener)."""
        for stream in list(self._open):
            if entry.matches(stream.claims):
                stream.on_revoked()

    def __len__(self) -> int:
        return len(self._open)
