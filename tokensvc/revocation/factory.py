"""Build the configured revocation store; the one place that picks a backend."""

from __future__ import annotations

import time
from collections.abc import Callable

from tokensvc.config import Config
from tokensvc.revocation.base import RevocationStore

__all__ = ["make_store"]


def make_store(config: Config, *, clock: Callable[[], float] = time.time) -> RevocationStore:
    """The store named by ``[revocation] backend``, not yet started.

    ``memory`` persists to ``config.revocation_path``; ``redis`` connects to
    ``[revocation] redis_url`` and fails closed after ``max_staleness`` seconds without a
    sync. Backends are imported here, lazily, so the core never imports one directly.
    """
    settings = config.revocation
    if settings.backend == "redis":
        from tokensvc.revocation.redis import RedisRevocationStore

        return RedisRevocationStore(
            settings.redis_url, max_staleness=settings.max_staleness, clock=clock
        )
    from tokensvc.revocation.memory import MemoryRevocationStore

    return MemoryRevocationStore(config.revocation_path, clock=clock)
