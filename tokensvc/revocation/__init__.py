"""The revocation list: the one piece of state shared by every process."""

from tokensvc.revocation.base import RevocationEntry, RevocationKind, RevocationStore

__all__ = ["RevocationEntry", "RevocationKind", "RevocationStore"]
