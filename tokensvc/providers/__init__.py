"""Secret providers: the just-in-time lookup of an upstream secret by ``secret_key_id``.

:func:`make_provider` builds the backend named by ``[secrets] provider`` (``file``, ``env``
or ``http``) and wraps it in :class:`SingleFlightProvider`, which shares concurrent lookups of
one id and bounds each by ``[secrets] timeout``. The rest of tokensvc sees only the
:class:`SecretProvider` protocol.
"""

from __future__ import annotations

from typing import assert_never

from tokensvc.config import SecretsConfig
from tokensvc.errors import ConfigError
from tokensvc.providers.base import SecretProvider
from tokensvc.providers.env import EnvSecretProvider
from tokensvc.providers.file import FileSecretProvider, secrets_file_problem
from tokensvc.providers.http import HttpSecretProvider
from tokensvc.providers.singleflight import SingleFlightProvider
from tokensvc.redacted import Secret

__all__ = [
    "EnvSecretProvider",
    "FileSecretProvider",
    "HttpSecretProvider",
    "SecretProvider",
    "SingleFlightProvider",
    "make_provider",
    "provider_problem",
]


def make_provider(config: SecretsConfig) -> SecretProvider:
    """The configured provider, wrapped in a :class:`SingleFlightProvider`.

    Raises ConfigError, naming the ``[secrets]`` key, for a value the backend refuses.
    """
    inner: SecretProvider
    kind = config.provider
    try:
        if kind == "file":
            inner = FileSecretProvider(config.path)
        elif kind == "env":
            inner = EnvSecretProvider(config.env_prefix)
        elif kind == "http":
            # An empty auth means "send no Authorization header", not "Bearer " + "".
            auth = Secret(config.auth) if config.auth else None
            inner = HttpSecretProvider(config.url, auth, config.timeout)
        else:
            assert_never(kind)
    except ValueError as err:
        raise ConfigError(f"[secrets] {err}") from err
    return SingleFlightProvider(inner, timeout=config.timeout)


def provider_problem(config: SecretsConfig) -> str | None:
    """What stops the configured holder from answering right now, or None.

    For a start-up warning: unlike a configuration error this may be fixed while the
    server runs. Only the file provider can tell without a lookup (a missing, unreadable
    or invalid file); the env and http providers answer None.
    """
    if config.provider == "file":
        problem = secrets_file_problem(config.path)
        if problem is not None:
            return (
                f"secrets file {config.path} {problem}: POST /sessions finds no secret "
                "until it is fixed (the file is read again when it changes)"
            )
    return None

