"""The revocation store protocol and its entries.

Entries are keyed on claims, never on the token string or a hash of it: ECDSA signatures
and base64 encodings are malleable, so one token has many spellings, but its claims have one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from tokensvc.claims import Claims

__all__ = ["RevocationEntry", "RevocationKind", "RevocationStore"]

RevocationKind = Literal["jti", "sid", "sub", "skid", "client"]


@dataclass(frozen=True)
class RevocationEntry:
    """One revocation.

    - ``jti``: the single token ``(iss, value)``.
    - ``sid``: every token and ticket of session ``value`` of client ``client_id``.
    - ``sub`` / ``skid``: every token of ``client_id`` whose subject / secret_key_id is
      ``value`` and that was issued at or before ``not_after`` (by its precise issue time,
      :attr:`Claims.issue_time`, so a token issued later in the same second is spared).
    - ``client``: every token of client ``value`` issued at or before ``not_after``.

    ``expires_at`` is when the last token the entry can match expires (plus leeway); after
    it the entry can match nothing and is dropped.
    """

    kind: RevocationKind
    value: str
    client_id: str
    iss: str
    expires_at: float
    not_after: float | None = None

    @property
    def key(self) -> str:
        """A stable identity for storage: re-revoking the same thing overwrites."""
        return f"{self.kind}\x1f{self.iss}\x1f{self.client_id}\x1f{self.value}"

    def matches(self, claims: Claims) -> bool:
        if claims.iss != self.iss:
            return False
        if self.kind == "jti":
            return claims.jti == self.value
        if claims.client_id != self.client_id:
            return False
        if self.kind == "sid":
            return claims.sid == self.value
        issued_before = self.not_after is not None and claims.issue_time <= self.not_after
        if self.kind == "sub":
            return issued_before and claims.sub == self.value
        if self.kind == "skid":
            return issued_before and claims.skid == self.value
        return issued_before  # kind == "client": value is the client_id itself

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "value": self.value,
            "client_id": self.client_id,
            "iss": self.iss,
            "expires_at": self.expires_at,
            "not_after": self.not_after,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> RevocationEntry:
        """Rebuild an entry; raises ValueError on anything malformed."""
        kind = data.get("kind")
        if kind not in ("jti", "sid", "sub", "skid", "client"):
            raise ValueError("bad revocation kind")
        value, client_id, iss = data.get("value"), data.get("client_id"), data.get("iss")
        if not all(isinstance(v, str) for v in (value, client_id, iss)):
            raise ValueError("bad revocation identity")
        expires_at, not_after = data.get("expires_at"), data.get("not_after")
        if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
            raise ValueError("bad revocation expiry")
        if not_after is not None and (
            isinstance(not_after, bool) or not isinstance(not_after, int | float)
        ):
            raise ValueError("bad revocation bound")
        return cls(
            kind=kind,
            value=str(value),
            client_id=str(client_id),
            iss=str(iss),
            expires_at=float(expires_at),
            not_after=None if not_after is None else float(not_after),
        )


class RevocationStore(Protocol):
    """Where revocations and used stream tickets live.

    ``is_revoked`` is on the hot path of every request and must not do I/O: backends keep
    a local replica. When the replica cannot be trusted (not synced within the staleness
    bound) it raises :class:`~tokensvc.errors.StoreUnavailable` so callers fail closed.
    """

    async def start(self) -> None:
        """Load or sync state; called once before serving."""

    async def close(self) -> None:
        """Release connections and background tasks."""

    def is_revoked(self, claims: Claims) -> bool:
        """Whether any live entry matches; raises StoreUnavailable when stale."""

    async def revoke(self, entry: RevocationEntry) -> None:
        """Record an entry durably (and tell every process); StoreUnavailable on failure."""

    async def consume_ticket(self, iss: str, jti: str, expires_at: float) -> bool:
        """Mark a stream ticket used: True the first time, False on any reuse."""

    def subscribe(self, listener: Callable[[RevocationEntry], None]) -> Callable[[], None]:
        """Call ``listener`` for every new entry (local or from another process).

        Returns a function that unsubscribes. Open streams use it to close within 1 s.
        """

    @property
    def ready(self) -> bool:
        """True when the store is in sync and answering."""
