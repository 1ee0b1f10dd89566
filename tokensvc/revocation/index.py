"""The in-process revocation list that both backends answer ``is_revoked`` from.

A check is a handful of dict lookups, never a scan: entries are bucketed by the claim values
they can match, and :meth:`RevocationEntry.matches` stays the single definition of what
matches. Entries are pruned lazily once they have expired, so the list stays small.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokensvc.claims import Claims
from tokensvc.config import MAX_LEEWAY
from tokensvc.revocation.base import RevocationEntry

__all__ = ["PRUNE_INTERVAL", "TICKET_GRACE", "RevocationIndex", "widen"]

PRUNE_INTERVAL = 60.0
"""Seconds (of the injected clock) between sweeps that drop expired entries."""

TICKET_GRACE = float(MAX_LEEWAY)
"""Seconds a used ticket is remembered past its ``exp``.

The verifier accepts a ticket up to ``leeway`` (at most ``MAX_LEEWAY``) after it expires, so
forgetting it exactly at ``exp`` would let it be replayed inside that window.
"""

_Bucket = tuple[str, ...]


def _bucket(entry: RevocationEntry) -> _Bucket:
    """The lookup key of the tokens ``entry`` can match (mirrors ``RevocationEntry.matches``)."""
    if entry.kind == "jti":
        return ("jti", entry.iss, entry.value)  # a jti names one token whatever its client
    if entry.kind == "client":
        return ("client", entry.iss, entry.client_id)
    return (entry.kind, entry.iss, entry.client_id, entry.value)


def _buckets(claims: Claims) -> tuple[_Bucket, ...]:
    return (
        ("jti", claims.iss, claims.jti),
        ("sid", claims.iss, claims.client_id, claims.sid),
        ("sub", claims.iss, claims.client_id, claims.sub),
        ("skid", claims.iss, claims.client_id, claims.skid),
        ("client", claims.iss, claims.client_id),
    )


def widen(current: RevocationEntry, new: RevocationEntry) -> RevocationEntry:
    """Merge two entries with the same key into one that matches everything either does.

    Re-revoking must never narrow a revocation: a ``sub`` revocation made later (larger
    ``not_after``) and one arriving late from another process (smaller) both leave the
    larger bound in place, and the entry lives as long as the longer-lived of the two.
    """
    if current.key != new.key:
        raise ValueError("only entries with the same key can be merged")
    bounds = [b for b in (current.not_after, new.not_after) if b is not None]
    return RevocationEntry(
        kind=current.kind,
        value=current.value,
        client_id=current.client_id,
        iss=current.iss,
        expires_at=max(current.expires_at, new.expires_at),
        not_after=max(bounds) if bounds else None,
    )


class RevocationIndex:
    """Live revocation entries, indexed for constant-time checks.

    Time is passed in (``now``) rather than read here, so each backend decides which clock
    counts and tests can move it.
    """

    def __init__(self, entries: Iterable[RevocationEntry] = (), *, now: float = 0.0) -> None:
        self._entries: dict[str, RevocationEntry] = {}
        self._buckets: dict[_Bucket, dict[str, RevocationEntry]] = {}
        self._next_prune = now + PRUNE_INTERVAL
        for entry in entries:
            self.add(entry, now)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[RevocationEntry]:
        return iter(list(self._entries.values()))

    def get(self, key: str) -> RevocationEntry | None:
        """The stored entry with this :attr:`RevocationEntry.key`, expired or not."""
        return self._entries.get(key)

    def merged(self, entry: RevocationEntry, now: float) -> RevocationEntry | None:
        """What :meth:`add` would store for ``entry``, or None if it would change nothing.

        None means the entry is already covered (idempotent re-revocation) or has expired.
        """
        if entry.expires_at <= now:
            return None
        current = self._entries.get(entry.key)
        if current is None or current.expires_at <= now:
            return entry
        result = widen(current, entry)
        return None if result == current else result

    def add(self, entry: RevocationEntry, now: float) -> RevocationEntry | None:
        """Store ``entry`` (merged with any entry of the same key).

        Returns the stored entry when coverage grew, None when nothing changed, so callers
        notify listeners and persist only real news.
        """
        result = self.merged(entry, now)
        if result is not None:
            self._entries[result.key] = result
            self._buckets.setdefault(_bucket(result), {})[result.key] = result
        return result

    def is_revoked(self, claims: Claims, now: float) -> bool:
        """Whether a live entry matches ``claims``: five dict lookups, no scan."""
        if now >= self._next_prune:
            self.prune(now)
        for bucket_key in _buckets(claims):
            bucket = self._buckets.get(bucket_key)
            if bucket:
                for entry in bucket.values():
                    if entry.expires_at > now and entry.matches(claims):
                        return True
        return False

    def prune(self, now: float) -> int:
        """Drop every expired entry; returns how many went."""
        self._next_prune = now + PRUNE_INTERVAL
        dead = [entry for entry in self._entries.values() if entry.expires_at <= now]
        for entry in dead:
            del self._entries[entry.key]
            bucket_key = _bucket(entry)
            bucket = self._buckets[bucket_key]
            del bucket[entry.key]
            if not bucket:
                del self._buckets[bucket_key]
        return len(dead)
