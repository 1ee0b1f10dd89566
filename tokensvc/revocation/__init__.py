"""The revocation list: the one piece of state shared by every process."""

from tokensvc.revocation.base import RevocationEntry, RevocationKind, RevocationStore
from tokensvc.revocation.factory import make_store

__all__ = ["RevocationEntry", "RevocationKind", "RevocationStore", "make_store"]
