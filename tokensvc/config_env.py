"""Configuration from ``TOKENSVC_<SECTION>_<KEY>`` environment variables.

Every variable that starts with ``TOKENSVC_`` is configuration, except:

- ``TOKENSVC_KEYS_PASSPHRASE``, the key ring's passphrase (read by the key store);
- variables that start with ``[secrets] env_prefix`` (``TOKENSVC_SECRET_`` by default),
  the env provider's secrets;
- ``TOKENSVC_TEST_*``, read by the test suite.

Anything else must name a section and one of its keys: a typo such as
``TOKENSVC_SEVER_PORT`` is an error, like an unknown key in the file, rather than a setting
that silently does nothing. Values are text converted by the key's type; the error for a
value that does not convert names the variable and the expected type, never the value (a
secret pasted into the wrong variable must not end up in a log).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokensvc.errors import ConfigError

__all__ = [
    "BOOLEAN_FALSE",
    "BOOLEAN_TRUE",
    "ENV_PREFIX",
    "NOT_CONFIGURATION",
    "TEST_PREFIX",
    "EnvSetting",
    "check_strays",
    "from_env",
    "read_env",
]

ENV_PREFIX = "TOKENSVC_"
#: Variables under the prefix that are not configuration keys.
NOT_CONFIGURATION = frozenset({"TOKENSVC_KEYS_PASSPHRASE"})
#: The test suite's own variables (a Redis URL, which tests must run, a browser).
TEST_PREFIX = "TOKENSVC_TEST_"
#: Boolean spellings, compared case-insensitively.
BOOLEAN_TRUE = ("true", "1", "yes", "on")
BOOLEAN_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class EnvSetting:
    """One configuration variable: where it points and its (still textual) value."""

    variable: str
    section: str
    key: str
    text: str


def read_env(
    env: Mapping[str, str], sections: typing.Collection[str]
) -> tuple[list[EnvSetting], list[str]]:
    """The configuration variables in ``env``, and the ``TOKENSVC_*`` ones naming no section.

    The second list is for :func:`check_strays`, once ``[secrets] env_prefix`` is known
    (it may itself come from the environment). A variable naming a section but no key
    (``TOKENSVC_SERVER``) is an error at once.
    """
    settings: list[EnvSetting] = []
    strays: list[str] = []
    for variable, text in env.items():
        if (
            not variable.startswith(ENV_PREFIX)
            or variable in NOT_CONFIGURATION
            or variable.startswith(TEST_PREFIX)
        ):
            continue
        section, _, key = variable[len(ENV_PREFIX) :].lower().partition("_")
        if section not in sections:
            strays.append(variable)
            continue
        if not key:
            raise ConfigError(f"{variable} names no key: use {variable}_<KEY>")
        settings.append(EnvSetting(variable, section, key, text))
    return settings, strays


def check_strays(strays: typing.Iterable[str], secrets_prefix: str, sections: list[str]) -> None:
    """ConfigError for the first ``TOKENSVC_*`` variable that is neither config nor a secret."""
    for variable in sorted(strays):
        if not variable.startswith(secrets_prefix):
            section = variable[len(ENV_PREFIX) :].partition("_")[0].lower()
            raise ConfigError(
                f"unknown config variable {variable}: [{section}] is not a section "
                f"(TOKENSVC_<SECTION>_<KEY> with a section of {', '.join(sections)}; "
                f"secrets start with {secrets_prefix})"
            )


def from_env(kind: Any, text: str, variable: str) -> Any:
    """``text`` converted to the field type ``kind``; lists are comma-separated."""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in BOOLEAN_TRUE:
            return True
        if lowered in BOOLEAN_FALSE:
            return False
        pairs = zip(BOOLEAN_TRUE[1:], BOOLEAN_FALSE[1:], strict=True)
        others = ", ".join(f"{t}/{f}" for t, f in pairs)
        raise ConfigError(f"{variable} must be a boolean: true or false (or {others})")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{variable} must be an integer") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{variable} must be a number") from None
    if typing.get_origin(kind) is tuple:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text
