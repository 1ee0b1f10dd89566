"""The single-process revocation store: a dict in memory, an append-only file on disk.

File format: JSON lines, one record per line, appended and never edited in place. A record
is either a revocation entry (``RevocationEntry.to_json()``) or a used stream ticket
(``{"ticket": {"iss", "jti", "expires_at"}}``). A later entry with the same key widens an
earlier one, so replaying the file in order rebuilds the list exactly.

Durability:

- A revocation is written, then ``fsync``'ed, before :meth:`MemoryRevocationStore.revoke`
  returns: once a client has been told a session is revoked, a crash or power cut must not
  bring it back. If the write fails the entry is not applied in memory either and
  :class:`~tokensvc.errors.StoreUnavailable` is raised, so there is never a false success.
- Used tickets are appended too, so a restart does not make a ticket usable again; but they
  are not ``fsync``'ed. Opening a stream is far more frequent than revoking, a ticket lives
  for at most a few minutes, and the write still reaches the kernel before the stream opens,
  so only a power cut within a ticket's lifetime could forget one.
- Writes are plain synchronous ``os.write`` + ``os.fsync`` on the event loop: a record is a
  few hundred bytes, revocations are rare, and keeping the append synchronous makes the
  in-memory list and the file change in the same order with no lock.
- A crash mid-write leaves a torn last line. Replay skips any line that does not parse
  (logging it) and the next append starts on a fresh line, so one torn record costs only
  that record, which was never acknowledged.
- When most lines are dead (expired or superseded), the file is rewritten atomically: a temp
  file in the same folder, ``fsync``, ``os.replace``, ``fsync`` of the folder.

The file holds subjects and session ids, so it is created 0600 in a folder created 0700.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tokensvc.claims import Claims
from tokensvc.errors import StoreUnavailable
from tokensvc.revocation.base import RevocationEntry
from tokensvc.revocation.index import PRUNE_INTERVAL, TICKET_GRACE, RevocationIndex
from tokensvc.revocation.listeners import Listener, Listeners

__all__ = ["COMPACT_MIN_LINES", "MemoryRevocationStore"]

log = logging.getLogger(__name__)

COMPACT_MIN_LINES = 1000
"""The file is compacted once it has more lines than this and over half of them are dead."""

_FILE_MODE = 0o600
_DIR_MODE = 0o700


class MemoryRevocationStore:
    """Revocations in this process only, persisted to ``path`` (or nowhere if None).

    Fit for a single worker: other processes neither see these revocations nor share the
    used-ticket set. ``is_revoked`` raises :class:`StoreUnavailable` only before
    :meth:`start` has loaded the file (answering from an empty list would wave revoked
    tokens through); ``revoke`` and ``consume_ticket`` raise it when the file cannot be
    written.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], float] = time.time,
        compact_min_lines: int = COMPACT_MIN_LINES,
    ) -> None:
        self._path = path
        self._clock = clock
        self._compact_min_lines = compact_min_lines
        self._index = RevocationIndex(now=clock())
        self._tickets: dict[tuple[str, str], float] = {}
        self._next_ticket_prune = clock() + PRUNE_INTERVAL
        self._listeners = Listeners()
        self._file_records = 0  # non-blank lines in the file, live or dead
        self._torn = False  # the file does not end with a newline
        self._started = False
        self._closed = False

    @property
    def path(self) -> Path | None:
        """The persistence file, or None for a purely in-memory store."""
        return self._path

    @property
    def ready(self) -> bool:
        """True once the file has been replayed, until :meth:`close`."""
        return self._started and not self._closed

    async def start(self) -> None:
        """Replay the file (creating its folder if needed); compact it if mostly dead.

        Raises :class:`StoreUnavailable` if the file exists but cannot be read: serving
        without the revocations it holds would accept revoked tokens.
        """
        self._closed = False
        if self._started:
            return
        if self._path is not None:
            self._replay(self._path)
            self._maybe_compact()
        self._started = True

    async def close(self) -> None:
        """Mark the store not ready; there is nothing to flush or release.

        Every acknowledged record was written (and revocations fsync'ed) before the call
        that made it returned.
        """
        self._closed = True

    def is_revoked(self, claims: Claims) -> bool:
        """Whether a live entry matches ``claims`` (dict lookups only, no I/O)."""
        if not self._started:
            raise StoreUnavailable("revocation store not started")
        return self._index.is_revoked(claims, self._clock())

    async def revoke(self, entry: RevocationEntry) -> None:
        """Record ``entry`` durably, then apply it and tell the listeners.

        Re-revoking something already covered changes nothing and writes nothing. An entry
        that has already expired can match no live token and is ignored.
        """
        if not self._started:
            raise StoreUnavailable("revocation store not started")
        now = self._clock()
        merged = self._index.merged(entry, now)
        if merged is None:
            return
        # Write first, apply second: if the disk refuses, the caller gets StoreUnavailable
        # and memory does not claim a revocation that a restart would forget.
        self._append(merged.to_json(), durable=True)
        self._index.add(merged, now)
        self._listeners.notify(merged)
        self._maybe_compact()

    async def consume_ticket(self, iss: str, jti: str, expires_at: float) -> bool:
        """True the first time ``(iss, jti)`` is seen, False on any reuse.

        Raises :class:`StoreUnavailable` if the use cannot be recorded: accepting a ticket
        whose use a restart would forget would make it replayable.
        """
        if not self._started:
            raise StoreUnavailable("revocation store not started")
        now = self._clock()
        self._prune_tickets(now)
        key = (iss, jti)
        if key in self._tickets:
            return False
        keep_until = max(expires_at, now) + TICKET_GRACE
        self._append({"ticket": {"iss": iss, "jti": jti, "expires_at": keep_until}}, durable=False)
        self._tickets[key] = keep_until
        self._maybe_compact()
        return True

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` synchronously for every new entry; returns an unsubscribe."""
        return self._listeners.subscribe(listener)

    # -- file ---------------------------------------------------------------------------

    def _replay(self, path: Path) -> None:
        try:
            data = path.read_bytes()
            if path.stat().st_mode & 0o077:
                # New files are created 0600; tighten one that was loosened by hand.
                log.warning("revocation file %s was readable by others; setting 0600", path)
                path.chmod(_FILE_MODE)
        except FileNotFoundError:
            return
        except OSError as err:
            raise StoreUnavailable(
                f"cannot read revocation file {path}: {err.strerror}"
            ) from err
        now = self._clock()
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            self._file_records += 1
            try:
                self._apply_record(json.loads(line), now)
            except (ValueError, TypeError):
                # A torn last line after a crash, or damage: skip it, keep the rest. The
                # line's content is not logged; it holds subjects and session ids.
                log.warning("skipping unreadable line %d of revocation file %s", number, path)
        self._torn = bool(data) and not data.endswith(b"\n")

    def _apply_record(self, record: object, now: float) -> None:
        if not isinstance(record, dict):
            raise ValueError("record is not an object")
        ticket = record.get("ticket")
        if ticket is None:
            self._index.add(RevocationEntry.from_json(record), now)
            return
        if not isinstance(ticket, dict):
            raise ValueError("bad ticket record")
        iss, jti, expires_at = ticket.get("iss"), ticket.get("jti"), ticket.get("expires_at")
        if not isinstance(iss, str) or not isinstance(jti, str):
            raise ValueError("bad ticket identity")
        if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
            raise ValueError("bad ticket expiry")
        if expires_at > now:
            self._tickets[(iss, jti)] = float(expires_at)

    def _append(self, record: dict[str, object], *, durable: bool) -> None:
        """Append one record; raises StoreUnavailable if it may not have reached the file."""
        if self._path is None:
            return
        line = json.dumps(record, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        if self._torn:
            line = b"\n" + line  # never glue a record onto a torn one
        try:
            self._path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(
                self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE
            )
        except OSError as err:
            raise StoreUnavailable(
                f"cannot open revocation file {self._path}: {err.strerror}"
            ) from err
        try:
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        except OSError as err:
            # Part of the line may be in the file: start the next one on a fresh line.
            self._torn = True
            raise StoreUnavailable(
                f"cannot write revocation file {self._path}: {err.strerror}"
            ) from err
        finally:
            os.close(fd)
        self._torn = False
        self._file_records += 1

    def _prune_tickets(self, now: float) -> None:
        if now < self._next_ticket_prune:
            return
        self._next_ticket_prune = now + PRUNE_INTERVAL
        for key in [k for k, until in self._tickets.items() if until <= now]:
            del self._tickets[key]

    def _maybe_compact(self) -> None:
        if self._path is None or self._file_records <= self._compact_min_lines:
            return
        now = self._clock()
        self._index.prune(now)
        self._next_ticket_prune = now  # force the sweep below
        self._prune_tickets(now)
        live = len(self._index) + len(self._tickets)
        if live * 2 >= self._file_records:
            return
        try:
            self._compact(self._path)
        except OSError as err:
            # The old file is still complete and correct, only larger: keep serving.
            log.warning("could not compact revocation file %s: %s", self._path, err.strerror)

    def _compact(self, path: Path) -> None:
        records: list[dict[str, object]] = [entry.to_json() for entry in self._index]
        records += [
            {"ticket": {"iss": iss, "jti": jti, "expires_at": until}}
            for (iss, jti), until in self._tickets.items()
        ]
        body = b"".join(
            json.dumps(r, separators=(",", ":"), sort_keys=True).encode() + b"\n"
            for r in records
        )
        # mkstemp creates the file 0600; same folder so os.replace is an atomic rename.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(body)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        _fsync_dir(path.parent)  # make the rename itself survive a power cut
        log.info(
            "compacted revocation file %s: %d lines -> %d", path, self._file_records, len(records)
        )
        self._file_records = len(records)
        self._torn = False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
