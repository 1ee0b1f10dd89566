"""Bookkeeping for open event streams: the per-subject limit and revocation fan-out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from tokensvc import Claims, RevocationEntry, TooManyRequests

__all__ = ["OpenStream", "StreamRegistry"]

STREAM_LIMIT_RETRY_AFTER = 5


class OpenStream:
    """One open stream: who it belongs to, and how to end it when revoked."""

    def __init__(self, claims: Claims, on_revoked: Callable[[], None]) -> None:
        self.claims = claims
        self.on_revoked = on_revoked


class StreamRegistry:
    """Counts open streams per subject and ends the ones a revocation matches.

    One registry per process; the revocation store calls :meth:`revoked` for every entry,
    whichever process recorded it, so a revocation reaches every open stream everywhere.
    The per-subject limit is per process: with N workers a subject may hold up to N times
    ``max_streams_per_subject`` streams in all.
    """

    def __init__(self, max_per_subject: int) -> None:
        self._max = max_per_subject
        self._per_subject: Counter[str] = Counter()
        self._open: set[OpenStream] = set()

    def open(self, claims: Claims, on_revoked: Callable[[], None]) -> OpenStream:
        """Register a stream; TooManyRequests when the subject is at its limit."""
        if self._per_subject[claims.sub] >= self._max:
            raise TooManyRequests(
                "subject at its stream limit", retry_after=STREAM_LIMIT_RETRY_AFTER
            )
        stream = OpenStream(claims, on_revoked)
        self._per_subject[claims.sub] += 1
        self._open.add(stream)
        return stream

    def close(self, stream: OpenStream) -> None:
        if stream in self._open:
            self._open.discard(stream)
            self._per_subject[stream.claims.sub] -= 1
            if self._per_subject[stream.claims.sub] <= 0:
                del self._per_subject[stream.claims.sub]

    def revoked(self, entry: RevocationEntry) -> None:
        """End every open stream whose token the entry matches (a store listener)."""
        for stream in list(self._open):
            if entry.matches(stream.claims):
                stream.on_revoked()

    def __len__(self) -> int:
        return len(self._open)
