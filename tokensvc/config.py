"""One frozen, validated configuration, built once at start-up.

Sources, later ones winning: the embedded defaults, the TOML file (``--config``), the
``TOKENSVC_<SECTION>_<KEY>`` environment variables, then command-line flags. Every mistake
(unknown key, wrong type, out-of-range value) raises :class:`ConfigError` naming the key, and
the CLI turns that into a one-line message and exit status 2.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from tokensvc.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "ChatkitConfig",
    "ClientConfig",
    "Config",
    "KeysConfig",
    "RevocationConfig",
    "SecretsConfig",
    "ServerConfig",
    "TokensConfig",
    "load_config",
]

ENV_PREFIX = "TOKENSVC_"
# Environment variables under the prefix that are not configuration keys.
_RESERVED_ENV = {"TOKENSVC_KEYS_PASSPHRASE"}
MAX_LEEWAY = 60
MAX_TICKET_TTL = 300


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    workers: int = 1
    cors_origins: tuple[str, ...] = ("vscode-webview://*",)
    log_format: Literal["text", "json"] = "text"
    demo: bool = False


@dataclass(frozen=True)
class TokensConfig:
    issuer: str = "tokensvc"
    audience: str = "chatkit"
    algorithm: Literal["ES256", "EdDSA"] = "ES256"
    ttl: int = 3600
    max_ttl: int = 3600
    session_max_lifetime: int = 86400
    leeway: int = 5
    ticket_ttl: int = 60
    allow_session_token_in_query: bool = False
    jwks_max_age: int = 300

    @property
    def stream_audience(self) -> str:
        return f"{self.audience}:stream"


@dataclass(frozen=True)
class KeysConfig:
    dir: Path = Path("keys")
    reload_interval: float = 5.0


@dataclass(frozen=True)
class RevocationConfig:
    backend: Literal["memory", "redis"] = "memory"
    path: Path | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    max_staleness: float = 30.0


@dataclass(frozen=True)
class SecretsConfig:
    provider: Literal["file", "env", "http"] = "file"
    path: Path = Path("secrets.toml")
    env_prefix: str = "TOKENSVC_SECRET_"
    url: str = ""
    auth: str = field(default="", repr=False)
    timeout: float = 2.0


@dataclass(frozen=True)
class ClientConfig:
    client_id: str
    # Only the SHA-256 of the secret is kept, so a leaked config or core dump does not
    # hand out client credentials.
    secret_sha256: str = field(repr=False)
    secret_key_ids: tuple[str, ...] = ("*",)
    rate_limit: int = 60
    plain_secret: bool = False

    def may_use(self, secret_key_id: str) -> bool:
        """Whether this client's patterns allow ``secret_key_id`` (case-sensitive)."""
        return any(fnmatch.fnmatchcase(secret_key_id, p) for p in self.secret_key_ids)


@dataclass(frozen=True)
class ChatkitConfig:
    upstream_url: str = ""
    model: str = "gpt-4o-mini"
    workflow_id: str = ""
    max_streams_per_subject: int = 8
    heartbeat: float = 15.0
    history: int = 500
    writes_per_minute: int = 60
    max_replies_per_subject: int = 4
    max_thread_messages: int = 1000


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    revocation: RevocationConfig = field(default_factory=RevocationConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    chatkit: ChatkitConfig = field(default_factory=ChatkitConfig)
    clients: tuple[ClientConfig, ...] = ()
    config_path: Path | None = None

    @property
    def revocation_path(self) -> Path:
        """Where the memory backend persists revocations (``[revocation] path``)."""
        if self.revocation.path is not None:
            return self.revocation.path
        return self.keys.dir.parent / "revocations.jsonl"

    def with_clients(self, clients: tuple[ClientConfig, ...]) -> Config:
        return dataclasses.replace(self, clients=clients)


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "tokens": TokensConfig,
    "keys": KeysConfig,
    "revocation": RevocationConfig,
    "secrets": SecretsConfig,
    "chatkit": ChatkitConfig,
}
# Keys that exist in the dataclasses but are not file/env settings.
_INTERNAL_FIELDS = {("server", "demo")}
_CLIENT_KEYS = {"secret", "secret_sha256", "secret_key_ids", "rate_limit"}
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the configuration from the file, the environment and flag overrides.

    ``overrides`` maps section -> key -> value, as the CLI flags give them (already typed).
    Relative paths in the file are relative to the file's folder; relative paths from the
    environment or flags are relative to the working directory.
    """
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
        base = path.resolve().parent

    sections: dict[str, dict[str, tuple[Any, Path]]] = {name: {} for name in _SECTIONS}
    clients_raw: Any = None
    for name, value in raw.items():
        if name == "clients":
            clients_raw = value
            continue
        if name not in _SECTIONS:
            raise ConfigError(f"unknown config section [{name}]")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
        for key, item in value.items():
            _check_known(name, key)
            # Type-checked now, not only if it wins: a flag or env var overriding a broken
            # file value must not hide the mistake until the override is dropped.
            _coerce(name, key, item, base)
            sections[name][key] = (item, base)
    if path is not None:
        # The contract's default ``secrets.toml`` is relative to the config file too.
        sections["secrets"].setdefault("path", (SecretsConfig.path, base))

    for var, text in (os.environ if env is None else env).items():
        if not var.startswith(ENV_PREFIX) or var in _RESERVED_ENV:
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            continue  # e.g. TOKENSVC_SECRET_<ID> for the env provider, TOKENSVC_TEST_*
        _check_known(section, key, source=var)
        value = _from_env(section, key, text)
        _coerce(section, key, value, Path.cwd())
        sections[section][key] = (value, Path.cwd())

    for section, values in (overrides or {}).items():
        for key, item in values.items():
            if item is not None:
                sections[section][key] = (item, Path.cwd())

    built = {name: _build_section(name, values) for name, values in sections.items()}
    config = Config(
        clients=_build_clients(clients_raw),
        config_path=path.resolve() if path is not None else None,
        **built,
    )
    _validate(config)
    return config


def _check_known(section: str, key: str, *, source: str | None = None) -> None:
    names = {f.name for f in dataclasses.fields(_SECTIONS[section])}
    if key not in names or (section, key) in _INTERNAL_FIELDS:
        where = source or f"[{section}] {key}"
        raise ConfigError(f"unknown config key {where}")


def _field_type(section: str, key: str) -> Any:
    hints = typing.get_type_hints(_SECTIONS[section])
    return hints[key]


def _from_env(section: str, key: str, text: str) -> Any:
    """Environment values are text: convert them by the field's type."""
    kind = _field_type(section, key)
    name = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if typing.get_origin(kind) is tuple:
            return [item.strip() for item in text.split(",") if item.strip()]
    except ValueError as err:
        raise ConfigError(f"{name} has the wrong type") from err
    return text


def _coerce(section: str, key: str, value: Any, base: Path) -> Any:
    kind = _field_type(section, key)
    label = f"[{section}] {key}"
    origin = typing.get_origin(kind)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{label} must be true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label} must be an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{label} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{label} must be a finite number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{label} must be a string")
        return value
    optional_path = origin in (typing.Union, types.UnionType) and Path in typing.get_args(kind)
    if kind is Path or optional_path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{label} must be a path string")
        if str(value) == "":
            return None if kind is not Path else Path()
        candidate = Path(value)
        return candidate if candidate.is_absolute() else base / candidate
    if origin is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            choices = " | ".join(str(a) for a in allowed)
            raise ConfigError(f"{label} must be one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{label} must be a list of strings")
        return tuple(value)
    raise ConfigError(f"{label} has an unsupported type")  # pragma: no cover


def _build_section(section: str, values: dict[str, tuple[Any, Path]]) -> Any:
    kwargs = {key: _coerce(section, key, value, base) for key, (value, base) in values.items()}
    return _SECTIONS[section](**kwargs)


def _build_clients(raw: Any) -> tuple[ClientConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError("[clients] must be a table of client tables")
    clients = []
    for client_id, table in raw.items():
        label = f"[clients.{client_id}]"
        if not _CLIENT_ID_RE.fullmatch(client_id):
            raise ConfigError(f"{label} client id must be 1-64 chars of A-Z a-z 0-9 . _ -")
        if not isinstance(table, dict):
            raise ConfigError(f"{label} must be a table")
        for key in table:
            if key not in _CLIENT_KEYS:
                raise ConfigError(f"unknown config key {label} {key}")
        plain = table.get("secret")
        digest = table.get("secret_sha256")
        if (plain is None) == (digest is None):
            raise ConfigError(f"{label} needs exactly one of secret_sha256 or secret")
        if plain is not None:
            if not isinstance(plain, str) or len(plain) < 16:
                raise ConfigError(f"{label} secret must be a string of at least 16 characters")
            digest = hashlib.sha256(plain.encode()).hexdigest()
        elif not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest.lower()):
            raise ConfigError(f"{label} secret_sha256 must be 64 hex digits")
        patterns = table.get("secret_key_ids", ["*"])
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"{label} secret_key_ids must be a list of strings")
        rate = table.get("rate_limit", 60)
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            raise ConfigError(f"{label} rate_limit must be a positive integer")
        clients.append(
            ClientConfig(
                client_id=client_id,
                secret_sha256=digest.lower(),
                secret_key_ids=tuple(patterns),
                rate_limit=rate,
                plain_secret=plain is not None,
            )
        )
    return tuple(clients)


def _is_http_url(url: str) -> bool:
    """An http(s) URL with a host (``https://`` alone would fail only at the first call)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _validate(config: Config) -> None:
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
    clashing = [f"{ENV_PREFIX}{name.upper()}_" for name in _SECTIONS]
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
