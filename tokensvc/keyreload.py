"""Live reload of the key ring: a rotation on disk reaches a running server by itself.

:class:`KeyRingReloader` holds the current :class:`~tokensvc.keys.KeyRing`. Its
:meth:`~KeyRingReloader.current` is the ``RingSource`` the services call on every request: a
plain attribute read, no I/O and no lock, since a ring is immutable and swapping the reference
is atomic. Every ``interval`` seconds (and on SIGHUP, wired by the caller to
``check(force=True)``) it compares a cheap fingerprint of the keys directory (name, inode,
size, mtime, ctime and mode of each file) and reloads only when that changed. A ring that
fails to load (corrupt, half-written, unsafe permissions, no active key) is logged once per
distinct failure and ignored: the last good ring keeps serving, and :attr:`status` /
:attr:`last_error` say so for ``/readyz``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from tornado.ioloop import PeriodicCallback

from tokensvc.errors import KeyRingError
from tokensvc.keys import KeyRing, SigningAlgorithm
from tokensvc.keystore import Passphrase, load_ring, ring_fingerprint

__all__ = ["KeyRingReloader", "ReloadStatus"]

log = logging.getLogger("tokensvc.keys")

ReloadStatus = Literal["ok", "stale"]
"""``ok``: the ring in use is the one on disk. ``stale``: the ring on disk is invalid and the
last good ring is still in use (verification and signing go on; an operator must look)."""

# A writer changes files one by one (key files, then the manifest, then deletions); a load
# that saw the directory move under it is retried a few times before waiting for the next
# check, and such a torn read is never reported as an error.
_ATTEMPTS = 3


def _log_error(message: str) -> None:
    log.error("key ring on disk is invalid, keeping the last good ring: %s", message)


class KeyRingReloader:
    """Holds the current key ring and reloads it when the files on disk change.

    The constructor loads the ring (raising :class:`KeyRingError` if it is unusable, which
    should stop start-up) unless ``ring`` is given, e.g. the one :func:`ensure_ring` just
    returned; then the first check reloads once to be sure it matches the disk.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        algorithm: SigningAlgorithm,
        passphrase: Passphrase = None,
        interval: float = 5.0,
        on_error: Callable[[str], None] = _log_error,
        ring: KeyRing | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        self.directory = Path(directory)
        self.algorithm = algorithm
        self.interval = interval
        self._passphrase = passphrase
        self._on_error = on_error
        self._clock = clock
        # One check at a time: the periodic one runs in a worker thread and SIGHUP may ask
        # for another; the second waits rather than loading the same files twice at once.
        self._check_lock = threading.Lock()
        self._periodic: PeriodicCallback | None = None
        self._last_error: str | None = None
        self._reported: str | None = None
        if ring is None:
            self._fingerprint: tuple[tuple[Any, ...], ...] | None = ring_fingerprint(directory)
            ring = self._load()
        else:
            self._fingerprint = None
        self._ring = ring
        self.loaded_at = clock()
        self.checked_at = self.loaded_at

    def current(self) -> KeyRing:
        """The ring in use (a ``RingSource``: cheap, no I/O)."""
        return self._ring

    @property
    def status(self) -> ReloadStatus:
        """``ok`` when the ring in use matches the disk, ``stale`` when the disk is invalid."""
        return "ok" if self._last_error is None else "stale"

    @property
    def last_error(self) -> str | None:
        """Why the ring on disk was rejected (names files, never key material), or None."""
        return self._last_error

    def check(self, force: bool = False) -> bool:
        """Reload if the files changed (or ``force``); True when a new ring was installed.

        Never raises for a bad ring on disk: it keeps the last good one, records
        :attr:`last_error` and reports each distinct failure once through ``on_error``.
        Blocking (file I/O, and scrypt when a passphrase is set): from the event loop,
        prefer :meth:`check_async`.
        """
        with self._check_lock:
            self.checked_at = self._clock()
            for _ in range(_ATTEMPTS):
                before = ring_fingerprint(self.directory)
                if before == self._fingerprint and not force:
                    return False
                error: str | None = None
                try:
                    ring = self._load()
                except KeyRingError as err:
                    error = str(err)
                except Exception as err:  # a bug must not stop the reloads; say what it was
                    log.exception("unexpected error while reloading the key ring")
                    error = f"unexpected {type(err).__name__} while loading the key ring"
                if ring_fingerprint(self.directory) != before:
                    force = True  # torn read: a writer is mid-way; look again
                    continue
                self._fingerprint = before
                if error is not None:
                    self._fail(error)
                    return False
                self._install(ring)
                return True
            return False  # still moving: the next check will see the settled files

    async def check_async(self, force: bool = False) -> bool:
        """:meth:`check` in a worker thread, so the event loop keeps serving meanwhile."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.check, force))

    def start(self) -> None:
        """Check every ``interval`` seconds on the running IOLoop (idempotent)."""
        if self._periodic is not None:
            return
        # PeriodicCallback awaits the coroutine before scheduling the next run, so slow
        # loads never pile up; the jitter spreads the checks of many worker processes.
        self._periodic = PeriodicCallback(self.check_async, self.interval * 1000, jitter=0.1)
        self._periodic.start()

    def stop(self) -> None:
        """Stop the periodic checks."""
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None

    def _load(self) -> KeyRing:
        return load_ring(self.directory, algorithm=self.algorithm, passphrase=self._passphrase)

    def _install(self, ring: KeyRing) -> None:
        recovered = self._last_error is not None
        self._ring = ring
        self.loaded_at = self._clock()
        self._last_error = None
        self._reported = None
        if recovered:
            log.warning("key ring on disk is valid again; reloaded it")
        else:
            log.info("key ring reloaded")

    def _fail(self, message: str) -> None:
        self._last_error = message
        if message != self._reported:
            self._reported = message
            self._on_error(message)
