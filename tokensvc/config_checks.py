"""The checks a built configuration must pass: ranges, and settings that must agree.

Types are checked while the configuration is built (:mod:`tokensvc.config`); what is left
here is what needs the whole object: ``ttl <= max_ttl``, several workers only with Redis,
URLs that must be usable, an env provider prefix that cannot be read as configuration.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tokensvc.config_env import ENV_PREFIX
from tokensvc.errors import ConfigError

if TYPE_CHECKING:
    from tokensvc.config import Config

__all__ = ["MAX_LEEWAY", "MAX_TICKET_TTL", "validate"]

MAX_LEEWAY = 60
MAX_TICKET_TTL = 300


def _is_http_url(url: str) -> bool:
    """An http(s) URL with a host (``https://`` alone would fail only at the first call)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def validate(config: Config, sections: list[str]) -> None:
    """ConfigError, with a one-line message, for the first value out of range or in conflict."""
    s, t, k, r, sec, c = (
        config.server,
        config.tokens,
        config.keys,
        config.revocation,
        config.secrets,
        config.chatkit,
    )
    checks: list[tuple[bool, str]] = [
        (0 <= s.port <= 65535, "[server] port must be 0..65535"),
        (s.workers >= 1, "[server] workers must be at least 1"),
        (
            s.workers == 1 or r.backend == "redis",
            "[server] workers > 1 needs [revocation] backend = \"redis\" "
            "(a memory revocation list is per process)",
        ),
        (bool(t.issuer), "[tokens] issuer must not be empty"),
        (bool(t.audience), "[tokens] audience must not be empty"),
        (t.ttl >= 10, "[tokens] ttl must be at least 10 seconds"),
        (t.max_ttl >= 10, "[tokens] max_ttl must be at least 10 seconds"),
        (t.ttl <= t.max_ttl, "[tokens] ttl must not exceed max_ttl"),
        (
            t.session_max_lifetime >= t.max_ttl,
            "[tokens] session_max_lifetime must be at least max_ttl",
        ),
        (0 <= t.leeway <= MAX_LEEWAY, f"[tokens] leeway must be 0..{MAX_LEEWAY} seconds"),
        (
            1 <= t.ticket_ttl <= MAX_TICKET_TTL,
            f"[tokens] ticket_ttl must be 1..{MAX_TICKET_TTL} seconds",
        ),
        (0 <= t.jwks_max_age <= 86400, "[tokens] jwks_max_age must be 0..86400 seconds"),
        (k.reload_interval > 0, "[keys] reload_interval must be positive"),
        (r.max_staleness > 0, "[revocation] max_staleness must be positive"),
        (
            r.backend != "redis" or r.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "[revocation] redis_url must be a redis://, rediss:// or unix:// URL",
        ),
        (0 < sec.timeout <= 60, "[secrets] timeout must be in (0, 60] seconds"),
        (
            sec.provider != "http" or _is_http_url(sec.url),
            "[secrets] url must be an http(s) URL when provider = \"http\"",
        ),
        (bool(sec.env_prefix), "[secrets] env_prefix must not be empty"),
        (c.max_streams_per_subject >= 1, "[chatkit] max_streams_per_subject must be at least 1"),
        (c.heartbeat > 0, "[chatkit] heartbeat must be positive"),
        (c.history >= 1, "[chatkit] history must be at least 1"),
        (c.writes_per_minute >= 1, "[chatkit] writes_per_minute must be at least 1"),
        (c.max_replies_per_subject >= 1, "[chatkit] max_replies_per_subject must be at least 1"),
        (c.max_thread_messages >= 1, "[chatkit] max_thread_messages must be at least 1"),
        (
            c.upstream_url in ("", "echo") or _is_http_url(c.upstream_url),
            "[chatkit] upstream_url must be \"\", \"echo\" or an http(s) URL",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    clashing = [f"{ENV_PREFIX}{name.upper()}_" for name in sections]
    if any(sec.env_prefix.upper().startswith(prefix) for prefix in clashing):
        raise ConfigError(
            "[secrets] env_prefix must not start with a configuration prefix such as "
            f"{ENV_PREFIX}SECRETS_ (those variables are read as configuration)"
        )
    for origin in s.cors_origins:
        if origin == "*" or origin.lower() == "null":
            raise ConfigError("[server] cors_origins must list origins, never \"*\" or \"null\"")
        # fullmatch: with re.match, "$" would also accept a trailing newline.
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*://(\*|[^\s/*]+)", origin):
            raise ConfigError(
                f"[server] cors_origins entry {origin!r} must be scheme://host[:port] "
                "or scheme://*"
            )
