"""Why a Redis call failed, in words that are safe to log.

redis-py's messages name the host and port, quote the server's error text and, for some
failures, parts of the request; a connection URL may carry a password. A log line about a
failing Redis therefore says only what *kind* of failure it was ("connection refused",
"authentication failed", "timed out"), found from the exception's type and the operating
system error behind it, never from its text.
"""

from __future__ import annotations

import errno
import socket
import ssl

__all__ = ["describe_redis_failure"]

_ERRNO_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ENOENT: "no such socket file",
    errno.EACCES: "permission denied",
}


def describe_redis_failure(err: BaseException) -> str:
    """The category of ``err``: a short phrase without any text taken from the exception."""
    try:
        from redis import exceptions as redis_errors
    except ImportError:  # pragma: no cover - only called with redis-py's own errors
        redis_errors = None  # type: ignore[assignment]
    if redis_errors is not None:
        if isinstance(err, redis_errors.AuthenticationError):
            return "authentication failed"
        if isinstance(err, redis_errors.NoPermissionError):
            return "permission denied by the server's ACL"
        if isinstance(err, redis_errors.TimeoutError):
            return "timed out"
        if isinstance(err, redis_errors.ResponseError):
            return f"the server refused a command ({type(err).__name__})"
    if isinstance(err, TimeoutError):
        return "timed out"
    os_error = _os_error_behind(err)
    if os_error is not None:
        if isinstance(os_error, socket.gaierror):
            return "host name not resolved"
        if isinstance(os_error, ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(os_error, TimeoutError):
            return "timed out"
        reason = _ERRNO_REASONS.get(os_error.errno or 0)
        if reason is not None:
            return reason
        code = errno.errorcode.get(os_error.errno or 0, type(os_error).__name__)
        return f"network error ({code})"
    if redis_errors is not None and isinstance(err, redis_errors.ConnectionError):
        return "connection failed"
    return f"failed ({type(err).__name__})"


def _os_error_behind(err: BaseException) -> OSError | None:
    """``err`` itself or the first OSError it was raised from (redis-py wraps them)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        current = current.__cause__ or current.__context__
    return None
