"""Secrets from environment variables.

The secret for ``secret_key_id`` is in the variable ``<prefix><ID>``, where ``<ID>`` is the
id upper-cased with ``.``, ``-`` and ``:`` replaced by ``_``: with the default prefix,
``prod.openai`` is read from ``TOKENSVC_SECRET_PROD_OPENAI``.

That mapping folds case and those three characters, so ids such as ``a.b``, ``a-b`` and
``A_B`` share one variable: give ids that differ only there the same secret, or use another
provider. An unset or empty variable means the id is unknown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from tokensvc.errors import UnknownSecret
from tokensvc.redacted import Secret

__all__ = ["EnvSecretProvider", "variable_name"]

_FOLDED = str.maketrans({".": "_", "-": "_", ":": "_"})
# What a valid secret_key_id (``[A-Za-z0-9._:-]+``) becomes after folding.
_VARIABLE_SUFFIX = re.compile(r"[A-Z0-9_]+")


def variable_name(prefix: str, secret_key_id: str) -> str:
    """The environment variable that holds the secret for ``secret_key_id``."""
    return prefix + secret_key_id.upper().translate(_FOLDED)


class EnvSecretProvider:
    """Resolves ids from ``<prefix><ID>`` environment variables, read at each lookup."""

    def __init__(self, prefix: str, environ: Mapping[str, str] | None = None) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        self._prefix = prefix
        # os.environ itself, not a copy: a variable set later is seen by the next lookup.
        self._environ: Mapping[str, str] = os.environ if environ is None else environ

    def __repr__(self) -> str:
        return f"EnvSecretProvider({self._prefix!r})"

    async def resolve(self, secret_key_id: str) -> Secret:
        """The value of the id's variable; UnknownSecret when it is unset or empty."""
        name = variable_name(self._prefix, secret_key_id)
        suffix = name[len(self._prefix) :]
        # Ids outside the contract's alphabet are refused rather than folded: an empty id
        # would read the bare prefix, and '=' or NUL have no business in a variable name.
        # (str.upper() can also turn non-ASCII letters into ASCII ones.)
        if not secret_key_id.isascii() or not _VARIABLE_SUFFIX.fullmatch(suffix):
            raise UnknownSecret(f"secret_key_id {secret_key_id!r} cannot name a variable")
        value = self._environ.get(name)
        if not value:
            raise UnknownSecret(f"secret_key_id {secret_key_id!r}: {name} is not set")
        return Secret(value)

    async def close(self) -> None:
        """Nothing to release."""
