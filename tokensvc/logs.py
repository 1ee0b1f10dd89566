"""Logging that cannot leak credentials: masked query strings, redacted tokens, JSON lines.

Two layers. Request URIs are masked where they are formatted (access log, error summaries):
any query parameter whose name contains ``token``, ``key``, ``secret``, ``auth`` or
``code`` loses its value. And every formatted record passes through :class:`RedactingFormatter`,
which replaces anything shaped like a JWT or a bearer credential, including inside exception
traces, as a last line of defence against a library that puts one in its message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit

if TYPE_CHECKING:
    from tornado.web import RequestHandler

__all__ = [
    "JsonFormatter",
    "RedactingFormatter",
    "ThrottledLog",
    "configure_logging",
    "log_request",
    "mask_uri",
    "redact",
]

_SENSITIVE_PARTS = ("token", "key", "secret", "auth", "code")
_MASK = "***"
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_API_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")

access_log = logging.getLogger("tokensvc.access")


def _is_sensitive(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in _SENSITIVE_PARTS)


def mask_uri(uri: str) -> str:
    """The URI with the values of credential-like query parameters replaced by ``***``."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    if not parts.query:
        return uri
    # ";" is split on too: Tornado does not take it as a separator, but a client that does
    # would otherwise put "access_token=..." inside another parameter's logged value.
    pairs = parse_qsl(parts.query.replace(";", "&"), keep_blank_values=True)
    masked = "&".join(
        f"{quote(name, safe='')}={_MASK if _is_sensitive(name) else quote(value, safe='')}"
        for name, value in pairs
    )
    return f"{parts.path}?{masked}"


def redact(text: str) -> str:
    """Remove JWT-shaped strings, Basic/Bearer credentials and API-key-shaped strings."""
    text = _JWT_LIKE.sub("[redacted-jwt]", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} [redacted]", text)
    return _API_KEY_LIKE.sub("[redacted-key]", text)


class RedactingFormatter(logging.Formatter):
    """A text formatter whose output, traces included, is passed through :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, redacted like the text format."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("method", "path", "status", "duration_ms", "remote_ip"):
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, ensure_ascii=False))


def configure_logging(
    log_format: Literal["text", "json"] = "text", level: int = logging.INFO
) -> None:
    """Route all logging to stderr with the chosen, redacting formatter."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Tornado's own access logger is replaced by log_request below.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


def log_request(handler: RequestHandler) -> None:
    """Tornado ``log_function``: one access line per request, query string masked."""
    status = handler.get_status()
    request = handler.request
    services = handler.settings.get("tokensvc")
    if services is not None:
        services.metrics.inc("tokensvc_http_requests_total", "code", str(status))
    duration_ms = round(1000.0 * request.request_time(), 2)
    path = mask_uri(request.uri or "")
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    access_log.log(
        level,
        "%d %s %s %.2fms",
        status,
        request.method,
        path,
        duration_ms,
        extra={
            "method": request.method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "remote_ip": request.remote_ip,
        },
    )


class ThrottledLog:
    """A repeating report (a dependency that keeps failing) at most once per ``interval``.

    The first report is logged at once; repeats within ``interval`` seconds of the last
    logged one go to DEBUG, and the next report that is logged says how many there were.
    :meth:`reset` (the failure is over) makes the next report log at once again. Time comes
    from ``monotonic``, so tests can move it.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._logger = logger
        self._monotonic = monotonic
        self._last: float | None = None
        self._held_back = 0

    def log(self, level: int, message: str, *args: Any) -> bool:
        """Log ``message % args`` at ``level`` unless one was logged within ``interval``."""
        now = self._monotonic()
        if self._last is not None and now - self._last < self.interval:
            self._held_back += 1
            self._logger.debug(message + " (repeat)", *args)
            return False
        if self._held_back:
            message += " (%d more times since the last report)"
            args = (*args, self._held_back)
        self._logger.log(level, message, *args)
        self._last, self._held_back = now, 0
        return True

    def logged(self) -> None:
        """Count a report logged elsewhere as this one's last (the interval starts now)."""
        self._last, self._held_back = self._monotonic(), 0

    def reset(self) -> None:
        """The condition is over: the next report is logged at once."""
        self._last, self._held_back = None, 0

