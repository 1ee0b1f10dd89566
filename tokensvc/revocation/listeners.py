"""Fan-out of new revocations to in-process listeners (open streams)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tokensvc.revocation.base import RevocationEntry

__all__ = ["Listener", "Listeners"]

log = logging.getLogger(__name__)

Listener = Callable[[RevocationEntry], None]


class Listeners:
    """A set of revocation listeners, called synchronously in subscription order."""

    def __init__(self) -> None:
        self._listeners: dict[int, Listener] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._listeners)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; the returned function removes it (calling it twice is fine)."""
        listener_id = self._next_id
        self._next_id += 1
        self._listeners[listener_id] = listener

        def unsubscribe() -> None:
            self._listeners.pop(listener_id, None)

        return unsubscribe

    def notify(self, entry: RevocationEntry) -> None:
        """Call every listener with ``entry``.

        A failing listener is logged and skipped: one broken stream must not stop the others
        from hearing about a revocation, nor make the revocation itself look failed.
        """
        for listener in list(self._listeners.values()):  # listeners may unsubscribe here
            try:
                listener(entry)
            except Exception:
                log.exception("revocation listener failed (kind=%s)", entry.kind)
