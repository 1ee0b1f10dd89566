"""Redis failures named by kind only (tokensvc/redis_reasons.py), and ThrottledLog (logs.py)."""

from __future__ import annotations

import errno
import logging
import socket
import ssl

import pytest
from redis import exceptions as redis_errors

from tests.conftest import FakeClock
from tokensvc.logs import ThrottledLog
from tokensvc.redis_reasons import describe_redis_failure

# What redis-py puts in its messages: host, port, and (here) a password.
LIBRARY_TEXT = "Error connecting to redis://:hunter2@db.internal:6379. Connect call failed"


def wrapped(outer: BaseException, cause: BaseException) -> BaseException:
    """``outer`` raised from ``cause``, the way redis-py wraps socket errors."""
    try:
        raise outer from cause
    except BaseException as err:  # building the chain is the point
        return err


@pytest.mark.parametrize(
    ("err", "reason"),
    [
        (wrapped(redis_errors.ConnectionError(LIBRARY_TEXT), ConnectionRefusedError(
            errno.ECONNREFUSED, "Connection refused")), "connection refused"),
        (redis_errors.AuthenticationError(LIBRARY_TEXT), "authentication failed"),
        (redis_errors.NoPermissionError(LIBRARY_TEXT), "permission denied by the server's ACL"),
        (redis_errors.TimeoutError(LIBRARY_TEXT), "timed out"),
        (TimeoutError(LIBRARY_TEXT), "timed out"),
        (wrapped(redis_errors.ConnectionError(LIBRARY_TEXT),
                 socket.gaierror(-2, "Name or service not known")), "host name not resolved"),
        (wrapped(redis_errors.ConnectionError(LIBRARY_TEXT),
                 FileNotFoundError(errno.ENOENT, LIBRARY_TEXT)), "no such socket file"),
        (wrapped(redis_errors.ConnectionError(LIBRARY_TEXT),
                 ssl.SSLError(1, LIBRARY_TEXT)), "TLS handshake failed"),
        (wrapped(redis_errors.ConnectionError(LIBRARY_TEXT),
                 OSError(errno.EADDRNOTAVAIL, LIBRARY_TEXT)), "network error (EADDRNOTAVAIL)"),
        (redis_errors.ConnectionError(LIBRARY_TEXT), "connection failed"),
        (redis_errors.ResponseError(LIBRARY_TEXT), "the server refused a command (ResponseError)"),
        (ValueError(LIBRARY_TEXT), "failed (ValueError)"),
    ],
)
def test_failure_is_named_by_kind_without_the_library_text(
    err: BaseException, reason: str
) -> None:
    assert describe_redis_failure(err) == reason


def test_a_cycle_in_the_exception_chain_ends_the_search() -> None:
    first = redis_errors.ConnectionError(LIBRARY_TEXT)
    second = redis_errors.ConnectionError(LIBRARY_TEXT)
    first.__context__, second.__context__ = second, first
    assert describe_redis_failure(first) == "connection failed"


def test_throttled_log_reports_at_once_then_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(now=100.0)
    logger = logging.getLogger("tests.throttled")
    throttled = ThrottledLog(logger, 30.0, monotonic=clock)
    caplog.set_level(logging.DEBUG, logger="tests.throttled")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    assert throttled.log(logging.WARNING, "down (%s)", "connection refused")
    clock.advance(29.9)
    assert not throttled.log(logging.WARNING, "down (%s)", "connection refused")
    assert not throttled.log(logging.WARNING, "down (%s)", "timed out")
    assert warnings() == ["down (connection refused)"]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug == ["down (connection refused) (repeat)", "down (timed out) (repeat)"]

    clock.advance(0.1)  # 30 s since the last report
    assert throttled.log(logging.WARNING, "down (%s)", "timed out")
    assert warnings()[-1] == "down (timed out) (2 more times since the last report)"

    throttled.reset()  # over: the next failure is news again
    assert throttled.log(logging.WARNING, "down (%s)", "connection refused")
    assert warnings()[-1] == "down (connection refused)"

    throttled.logged()  # reported elsewhere just now: the interval starts again
    assert not throttled.log(logging.WARNING, "down (%s)", "connection refused")


def test_throttled_log_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        ThrottledLog(logging.getLogger("tests.throttled"), 0)
