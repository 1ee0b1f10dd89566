"""Client authentication (HTTP Basic), per-client rate limits, the first-run client."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import FakeClock
from tests.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_CLIENT_ID,
    OTHER_CLIENT_SECRET,
    basic,
    client,
)
from tokensvc.clients import (
    DEFAULT_CLIENT_ID,
    FAILED_AUTH_PER_MINUTE,
    ClientRegistry,
    RateLimiter,
    bootstrap_client,
    default_client_secret_path,
)
from tokensvc.errors import ConfigError, InvalidClient, TooManyRequests


@pytest.fixture
def registry() -> ClientRegistry:
    return ClientRegistry(
        [client(CLIENT_ID, CLIENT_SECRET), client(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET)]
    )


def encoded(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


# -- Basic authentication ------------------------------------------------------------


def test_basic_auth_returns_the_client(registry: ClientRegistry) -> None:
    assert registry.authenticate(basic()).client_id == CLIENT_ID
    assert registry.authenticate(basic(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET)).client_id == (
        OTHER_CLIENT_ID
    )


def test_scheme_name_is_case_insensitive(registry: ClientRegistry) -> None:
    assert registry.authenticate("basic " + basic().split(" ", 1)[1]).client_id == CLIENT_ID


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Basic",
        "Basic ",
        basic(CLIENT_ID, CLIENT_SECRET + "x"),
        basic(CLIENT_ID, CLIENT_SECRET[:-1]),
        basic(CLIENT_ID, ""),
        basic(CLIENT_ID, OTHER_CLIENT_SECRET),  # another client's secret
        basic("nobody", CLIENT_SECRET),
        basic("", CLIENT_SECRET),
        basic(CLIENT_ID.upper(), CLIENT_SECRET),
        "Basic !!!not-base64!!!",
        "Basic \xff\xfe",  # a non-ASCII header value, as Tornado decodes it (latin-1)
        "Basic é" + basic().split(" ", 1)[1],
        "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()[:-2],
        encoded(f"{CLIENT_ID}{CLIENT_SECRET}".encode()),  # no colon
        encoded(b"\xff\xfe:\xff"),  # not UTF-8
        "Bearer " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode(),
        "Digest username=extension",
        f"{CLIENT_ID}:{CLIENT_SECRET}",
    ],
)
def test_bad_credentials_are_invalid_client(
    registry: ClientRegistry, authorization: str | None
) -> None:
    with pytest.raises(InvalidClient) as caught:
        registry.authenticate(authorization)
    # The rendered error never says which part failed, nor echoes the secret.
    assert caught.value.challenge() == 'Basic realm="tokensvc"'
    assert CLIENT_SECRET not in str(caught.value)


def test_form_urlencoded_id_and_secret_are_decoded() -> None:
    # RFC 6749 section 2.3.1: id and secret are form-urlencoded before base64, so a
    # colon or percent sign in either travels escaped.
    secret = "p@ss:w%rd/with-odd-chars-0123"
    registry = ClientRegistry([client("team.a-b", secret)])
    raw = f"{quote('team.a-b', safe='')}:{quote(secret, safe='')}"
    assert registry.authenticate(encoded(raw.encode())).client_id == "team.a-b"


def test_unencoded_colon_in_secret_is_kept() -> None:
    # Only the first colon separates id and secret.
    secret = "left:right-and-long-enough"
    registry = ClientRegistry([client("c", secret)])
    assert registry.authenticate(basic("c", secret)).client_id == "c"


def test_burst_up_to_rate_limit_then_too_many_requests(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    limited = client(CLIENT_ID, CLIENT_SECRET, rate_limit=5)
    for _ in range(5):
        limiter.check(limited)
    with pytest.raises(TooManyRequests) as caught:
        limiter.check(limited)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1
    assert caught.value.response_headers()["Retry-After"] == str(caught.value.retry_after)


def test_rate_limit_refills_over_time(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    limited = client(CLIENT_ID, CLIENT_SECRET, rate_limit=60)  # one per second
    for _ in range(60):
        limiter.check(limited)
    with pytest.raises(TooManyRequests) as caught:
        limiter.check(limited)
    assert caught.value.retry_after == 1
    clock.advance(0.5)
    with pytest.raises(TooManyRequests):
        limiter.check(limited)
    clock.advance(0.5)
    limiter.check(limited)  # one token back after a second
    with pytest.raises(TooManyRequests):
        limiter.check(limited)
    clock.advance(3600)
    for _ in range(60):  # full again, but never above the burst size
        limiter.check(limited)
    with pytest.raises(TooManyRequests):
        limiter.check(limited)


def test_retry_after_says_when_a_request_will_pass(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    slow = client(CLIENT_ID, CLIENT_SECRET, rate_limit=2)  # one per 30 s
    limiter.check(slow)
    limiter.check(slow)
    with pytest.raises(TooManyRequests) as caught:
        limiter.check(slow)
    assert caught.value.retry_after == 30
    clock.advance(29)
    with pytest.raises(TooManyRequests):
        limiter.check(slow)
    clock.advance(1)
    limiter.check(slow)


def test_rate_limits_are_per_client(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    first = client(CLIENT_ID, CLIENT_SECRET, rate_limit=2)
    second = client(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET, rate_limit=2)
    limiter.check(first)
    limiter.check(first)
    with pytest.raises(TooManyRequests):
        limiter.check(first)
    limiter.check(second)
    limiter.check(second)
    with pytest.raises(TooManyRequests):
        limiter.check(second)


def test_a_clock_going_backwards_does_not_grant_requests(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    limited = client(CLIENT_ID, CLIENT_SECRET, rate_limit=1)
    limiter.check(limited)
    clock.advance(-3600)
    with pytest.raises(TooManyRequests):
        limiter.check(limited)


# -- first-run client ----------------------------------------------------------------


def test_bootstrap_creates_a_private_file_with_a_random_secret(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    made, path, created = bootstrap_client(keys)
    assert created is True
    assert path == default_client_secret_path(keys)
    assert path.parent == keys
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text(encoding="utf-8").strip()
    assert len(secret) >= 32
    assert made.client_id == DEFAULT_CLIENT_ID
    assert made.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert ClientRegistry([made]).authenticate(basic(DEFAULT_CLIENT_ID, secret)) == made
    # No temp file left behind.
    assert sorted(p.name for p in keys.iterdir()) == [path.name]

    other_made, other_path, _ = bootstrap_client(tmp_path / "other-keys")
    assert other_path.read_text(encoding="utf-8").strip() != secret
    assert other_made.secret_sha256 != made.secret_sha256


def test_bootstrap_reuses_the_secret_on_the_next_start(tmp_path: Path) -> None:
    first, path, _ = bootstrap_client(tmp_path)
    before = path.read_text(encoding="utf-8")
    second, same_path, created = bootstrap_client(tmp_path)
    assert created is False
    assert same_path == path
    assert second.secret_sha256 == first.secret_sha256
    assert path.read_text(encoding="utf-8") == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_bootstrap_refuses_a_group_or_world_readable_secret_file(
    tmp_path: Path, mode: int
) -> None:
    _, path, _ = bootstrap_client(tmp_path)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        bootstrap_client(tmp_path)


def test_bootstrap_refuses_an_empty_secret_file(tmp_path: Path) -> None:
    path = default_client_secret_path(tmp_path)
    path.write_text("short\n", encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="usable client secret"):
        bootstrap_client(tmp_path)


def test_available_does_not_consume(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    limiter.take("k", 1)
    assert not limiter.available("k", 1)
    assert not limiter.available("k", 1)
    clock.advance(60)
    assert limiter.available("k", 1)
    assert limiter.available("k", 1)  # still there: available() took nothing
    limiter.take("k", 1)
    with pytest.raises(TooManyRequests):
        limiter.take("k", 1)


def test_refilled_buckets_are_pruned(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    for n in range(RateLimiter.PRUNE_EVERY - 1):
        limiter.take(f"ip-{n}", 10)
    assert len(limiter) == RateLimiter.PRUNE_EVERY - 1
    clock.advance(60)  # every bucket is full again
    limiter.take("fresh", 10)  # the PRUNE_EVERY-th call prunes first
    assert len(limiter) == 1


def test_failed_authentications_are_throttled_per_address_and_client(clock: FakeClock) -> None:
    registry = ClientRegistry([client("c", "right-secret-0123456789")], clock=clock)
    for _ in range(FAILED_AUTH_PER_MINUTE):
        with pytest.raises(InvalidClient):
            registry.authenticate(basic("c", "wrong-guess-0123456789"), "10.0.0.9")
    # Now even the right secret waits, from that address, for that client id...
    with pytest.raises(TooManyRequests) as caught:
        registry.authenticate(basic("c", "right-secret-0123456789"), "10.0.0.9")
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1
    # ...but not from another address: nobody can lock a client out from elsewhere.
    assert registry.authenticate(basic("c", "right-secret-0123456789"), "10.0.0.7")
    clock.advance(60)
    assert registry.authenticate(basic("c", "right-secret-0123456789"), "10.0.0.9")


def test_successful_authentications_are_not_throttled(clock: FakeClock) -> None:
    registry = ClientRegistry([client("c", "right-secret-0123456789")], clock=clock)
    for _ in range(FAILED_AUTH_PER_MINUTE * 3):
        registry.authenticate(basic("c", "right-secret-0123456789"), "10.0.0.9")
