"""Client authentication (HTTP Basic), per-client rate limits and the first-run client."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from tokensvc.config import ClientConfig
from tokensvc.errors import ConfigError, InvalidClient, TooManyRequests

__all__ = [
    "DEFAULT_CLIENT_ID",
    "FAILED_AUTH_PER_MINUTE",
    "ClientRegistry",
    "RateLimiter",
    "bootstrap_client",
    "default_client_secret_path",
    "parse_basic",
]

DEFAULT_CLIENT_ID = "extension"
# Failed Basic authentications allowed per (address, client id) and minute.
FAILED_AUTH_PER_MINUTE = 20
# Compared against when the client id is unknown, so an unknown id costs the same
# hashing and comparison as a known one (no timing oracle for valid client ids).
_DUMMY_DIGEST = hashlib.sha256(b"tokensvc-no-such-client").hexdigest()


class ClientRegistry:
    """The configured clients, and HTTP Basic authentication against them."""

    def __init__(
        self,
        clients: Iterable[ClientConfig],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = {c.client_id: c for c in clients}
        self._failures = RateLimiter(clock=clock)

    def authenticate(self, authorization: str | None, remote_ip: str = "") -> ClientConfig:
        """The client named by ``Authorization: Basic ...``; InvalidClient otherwise.

        Failed attempts are throttled per (remote address, claimed client id): after
        FAILED_AUTH_PER_MINUTE failures even the right secret gets 429 until the bucket
        refills. Keyed on both, so nobody can lock a client out from another address.
        """
        client_id, secret = parse_basic(authorization)
        failure_key = f"{remote_ip}\x1f{client_id}"
        if not self._failures.available(failure_key, FAILED_AUTH_PER_MINUTE):
            raise TooManyRequests(
                "too many failed client authentications",
                retry_after=math.ceil(60 / FAILED_AUTH_PER_MINUTE),
            )
        client = self._clients.get(client_id)
        presented = hashlib.sha256(secret.encode()).hexdigest()
        expected = client.secret_sha256 if client is not None else _DUMMY_DIGEST
        if not hmac.compare_digest(presented, expected) or client is None:
            with contextlib.suppress(TooManyRequests):  # the next attempt will say so
                self._failures.take(failure_key, FAILED_AUTH_PER_MINUTE)
            raise InvalidClient("client authentication failed")
        return client


def parse_basic(authorization: str | None) -> tuple[str, str]:
    """``(client_id, secret)`` from an HTTP Basic header; InvalidClient if malformed."""
    if not authorization:
        raise InvalidClient("no client credentials")
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise InvalidClient("client credentials are not HTTP Basic")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError as err:
        # binascii.Error, UnicodeDecodeError, and the plain ValueError b64decode raises
        # for a non-ASCII header value (Tornado decodes headers as latin-1).
        raise InvalidClient("client credentials are not base64 UTF-8") from err
    raw_id, sep, raw_secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("client credentials lack a colon")
    # RFC 6749 section 2.3.1: both parts are form-urlencoded before base64.
    return unquote(raw_id), unquote(raw_secret)


@dataclass
class _Bucket:
    tokens: float
    updated: float
    capacity: float


class RateLimiter:
    """Token buckets by key: ``per_minute`` requests a minute, in bursts of up to that many.

    Per process: with N workers the effective limit is up to N times the configured one.
    Buckets that have refilled completely carry no information and are dropped now and
    then, so many distinct keys (say, remote addresses) cannot grow memory without bound.
    """

    PRUNE_EVERY = 1024

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._calls = 0

    def check(self, client: ClientConfig) -> None:
        """Take one ``POST /sessions`` from the client's bucket; TooManyRequests when empty."""
        self.take(f"client:{client.client_id}", client.rate_limit)

    def take(self, key: str, per_minute: int) -> None:
        """Take one request from ``key``'s bucket; TooManyRequests when it is empty."""
        bucket = self._refilled(key, per_minute)
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) * 60.0 / per_minute
            raise TooManyRequests("rate limit reached", retry_after=max(1, math.ceil(wait)))
        bucket.tokens -= 1.0

    def available(self, key: str, per_minute: int) -> bool:
        """Whether ``take`` would succeed now, without taking anything."""
        return self._refilled(key, per_minute).tokens >= 1.0

    def _refilled(self, key: str, per_minute: int) -> _Bucket:
        now = self._clock()
        self._calls += 1
        if self._calls % self.PRUNE_EVERY == 0:
            self._prune(now)
        capacity = float(per_minute)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(capacity, now, capacity)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(capacity, bucket.tokens + elapsed * capacity / 60.0)
        bucket.updated = now
        bucket.capacity = capacity
        return bucket

    def _prune(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            refill = (now - bucket.updated) * bucket.capacity / 60.0
            if bucket.tokens + refill >= bucket.capacity:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def default_client_secret_path(keys_dir: Path) -> Path:
    """Where the first-run client's secret lives: beside the key ring, mode 0600."""
    return keys_dir / f"{DEFAULT_CLIENT_ID}.client-secret"


def bootstrap_client(keys_dir: Path) -> tuple[ClientConfig, Path, bool]:
    """The ``extension`` client used when none is configured.

    Its secret is read from (or, on first run, written to) a 0600 file beside the key ring,
    so the extension can read it and restarts keep the same credentials. Returns the
    client, the file and whether it was just created.
    """
    path = default_client_secret_path(keys_dir)
    created = False
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"{path} is readable by group or others; run: chmod 600 {path}")
        secret = path.read_text(encoding="utf-8").strip()
        if len(secret) < 16:
            raise ConfigError(f"{path} does not hold a usable client secret")
    else:
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = secrets.token_urlsafe(32)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (secret + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        created = True
    client = ClientConfig(
        client_id=DEFAULT_CLIENT_ID,
        secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
    )
    return client, path, created
