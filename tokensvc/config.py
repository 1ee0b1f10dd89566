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

from tokensvc.config_checks import MAX_LEEWAY, MAX_TICKET_TTL, validate
from tokensvc.config_env import ENV_PREFIX, check_strays, from_env, read_env
from tokensvc.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "MAX_LEEWAY",
    "MAX_TICKET_TTL",
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

    settings, strays = read_env(os.environ if env is None else env, _SECTIONS)
    for setting in settings:
        section, key, var = setting.section, setting.key, setting.variable
        _check_known(section, key, source=var)
        value = from_env(_field_type(section, key), setting.text, var)
        _coerce(section, key, value, Path.cwd(), label=var)
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
    # Only now is [secrets] env_prefix known, whose variables are secrets, not strays.
    check_strays(strays, config.secrets.env_prefix, list(_SECTIONS))
    validate(config, list(_SECTIONS))
    return config


def _check_known(section: str, key: str, *, source: str | None = None) -> None:
    names = {f.name for f in dataclasses.fields(_SECTIONS[section])}
    if key not in names or (section, key) in _INTERNAL_FIELDS:
        where = source or f"[{section}] {key}"
        raise ConfigError(f"unknown config key {where}")


def _field_type(section: str, key: str) -> Any:
    hints = typing.get_type_hints(_SECTIONS[section])
    return hints[key]


def _coerce(
    section: str, key: str, value: Any, base: Path, *, label: str | None = None
) -> Any:
    """``value`` checked against the field's type; ``label`` names it in errors."""
    kind = _field_type(section, key)
    label = label or f"[{section}] {key}"
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
