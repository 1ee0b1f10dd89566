"""Secrets from a local TOML file, re-read when it changes.

The file is one flat table of ``"<secret_key_id>" = "<secret>"`` pairs::

    "prod-openai" = "sk-..."
    "team.alpha:dev" = "sk-..."

Quote ids that contain ``.``: a bare dotted key is a nested table in TOML, not an id.

Every :meth:`FileSecretProvider.resolve` stats the file and re-reads it when its device,
inode, size, mtime or ctime changed, so an edit or an atomic replace takes effect on the next
``POST /sessions`` without a restart. (Lookups only happen there, so a stat per call is cheap.)

What happens when the file is not a good secrets file:

- **Missing**: there are no secrets; every id is unknown
  (:class:`~tokensvc.errors.UnknownSecret`) and one warning is logged each time the file
  goes missing. Deleting the file withdraws its secrets at once, just as deleting a line does:
  an operator who removes a secret expects it to stop being handed out.
- **Unreadable or invalid** (not UTF-8 TOML, too large, a nested table, a non-string value):
  if an earlier version was good, its content keeps being served and an error is logged
  (once per problem, not per lookup), so a half-written edit does not turn every new session
  into a 503. If no version was ever good, every lookup raises
  :class:`~tokensvc.errors.ProviderUnavailable`.
- **An empty string** as a value counts as "not set" (UnknownSecret), as with the env
  provider.

A file that the group or others may access is served, but logged once as a warning: it holds
every upstream secret in clear and should be mode 0600.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path

from tokensvc.errors import ProviderUnavailable, UnknownSecret
from tokensvc.redacted import Secret

__all__ = ["FileSecretProvider", "secrets_file_problem"]

log = logging.getLogger(__name__)

# A secrets file is a handful of lines; anything this big is a mistake (or an attack on memory).
MAX_FILE_SIZE = 1024 * 1024

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns). ctime is in because ``cp -p`` or
# ``rsync --inplace -t`` can rewrite a file in place keeping its size and mtime.
_Fingerprint = tuple[int, int, int, int, int]

# tomllib messages can quote a character of the document, which may be part of a secret:
# only the position is kept for the log.
_TOML_POSITION = re.compile(r"\(at (line \d+, column \d+|end of document)\)")


def _fingerprint(st: os.stat_result) -> _Fingerprint:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _BadFile(Exception):
    """The current version of the file cannot be used; the message is safe to log."""


class FileSecretProvider:
    """Resolves ids from a flat TOML table in a file, re-reading it when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        # Reads run in worker threads; the lock keeps the cached state consistent.
        self._lock = threading.Lock()
        self._seen: _Fingerprint | None = None  # the version last looked at, good or bad
        self._problem: str | None = None  # why the version in _seen is unusable, if it is
        self._secrets: Mapping[str, str] | None = None  # last good content; None = never good
        self._missing_warned = False
        self._mode_warned = False

    def __repr__(self) -> str:
        return f"FileSecretProvider({str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The secrets file."""
        return self._path

    async def resolve(self, secret_key_id: str) -> Secret:
        """The secret stored under ``secret_key_id`` in the current (or last good) file."""
        # The stat and any re-read run in a thread: a slow or network file system must not
        # stall the event loop that serves every other request.
        secrets = await asyncio.to_thread(self._current)
        value = secrets.get(secret_key_id)
        if not value:
            raise UnknownSecret(f"secret_key_id {secret_key_id!r} is not in {self._path}")
        return Secret(value)

    async def close(self) -> None:
        """Nothing to release: the file is opened only while it is read."""

    def _current(self) -> Mapping[str, str]:
        """The secrets to serve now; ProviderUnavailable if there never were good ones."""
        with self._lock:
            try:
                st = os.stat(self._path)
            except FileNotFoundError:
                return self._missing()
            except OSError as err:
                self._seen = None  # retry the stat on the next call
                self._set_problem(f"cannot stat ({err.strerror})")
                return self._usable()
            self._missing_warned = False
            if _fingerprint(st) != self._seen:
                self._reload()
            return self._usable()

    def _missing(self) -> Mapping[str, str]:
        if not self._missing_warned:
            log.warning("secrets file %s does not exist: no secret_key_id is known", self._path)
            self._missing_warned = True
        # A missing file is a good, empty version: a file that comes back broken must not
        # resurrect the secrets of the deleted one.
        self._seen, self._problem, self._secrets = None, None, {}
        return self._secrets

    def _reload(self) -> None:
        try:
            with open(self._path, "rb") as fh:
                # The fingerprint of what is actually read, not of what was stat-ed a moment
                # ago: the file may have been replaced in between.
                st = os.fstat(fh.fileno())
                self._warn_if_exposed(st)
                data = fh.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            self._missing()
            return
        except OSError as err:
            # _seen is left alone, so the next lookup tries again (e.g. after a chmod).
            self._set_problem(f"cannot read ({err.strerror})")
            return
        self._seen = _fingerprint(st)
        try:
            self._secrets = _parse(data)
        except _BadFile as err:
            self._set_problem(str(err))
            return
        if self._problem is not None:
            log.info("secrets file %s is valid again", self._path)
        self._problem = None
        log.info("loaded %d secret_key_id(s) from %s", len(self._secrets), self._path)

    def _set_problem(self, problem: str) -> None:
        # Log once per problem, not on every lookup.
        if problem != self._problem:
            if self._secrets is None:
                log.error("secrets file %s is unusable: %s", self._path, problem)
            else:
                log.error(
                    "secrets file %s is unusable: %s; serving its last good version",
                    self._path,
                    problem,
                )
        self._problem = problem

    def _usable(self) -> Mapping[str, str]:
        if self._problem is not None and self._secrets is None:
            raise ProviderUnavailable(f"secrets file {self._path} is unusable: {self._problem}")
        return self._secrets if self._secrets is not None else {}

    def _warn_if_exposed(self, st: os.stat_result) -> None:
        if self._mode_warned or os.name != "posix":
            return
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "secrets file %s is accessible by group or others (mode %o); chmod 600 it",
                self._path,
                stat.S_IMODE(st.st_mode),
            )
            self._mode_warned = True


def secrets_file_problem(path: Path) -> str | None:
    """Why the file at ``path`` cannot serve secrets now, or None if it can.

    For start-up, which reports a problem as a warning rather than waiting for the first
    ``POST /sessions`` to find it: the file may still appear or be fixed, and is re-read then.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    try:
        _parse(data)
    except _BadFile as err:
        return f"is unusable: {err}"
    return None


def _parse(data: bytes) -> dict[str, str]:
    """The flat table in ``data``; raises _BadFile with a message free of file content."""
    if len(data) > MAX_FILE_SIZE:
        raise _BadFile(f"larger than {MAX_FILE_SIZE} bytes")
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _BadFile("not UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        # ``from None``: the decode error may carry the document, secrets included.
        where = _TOML_POSITION.search(str(err))
        raise _BadFile(f"not valid TOML {where.group(0) if where else ''}".rstrip()) from None
    for key, value in table.items():
        if not isinstance(value, str):
            # The id is safe to name; the value is not shown.
            raise _BadFile(
                f"the value of {key!r} is not a string "
                '(one flat table of "<secret_key_id>" = "<secret>"; quote ids that contain ".")'
            )
    return table
