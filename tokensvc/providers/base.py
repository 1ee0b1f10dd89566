"""The secret provider protocol: the just-in-time lookup of an upstream API secret.

A provider is asked for the real secret behind a ``secret_key_id`` at ``POST /sessions`` and
nowhere else. It answers with a :class:`~tokensvc.redacted.Secret`, or raises one of two
errors that the web layer maps to HTTP:

- :class:`~tokensvc.errors.UnknownSecret` when the holder does not know the id (a 400
  ``invalid_grant``: asking again will not help);
- :class:`~tokensvc.errors.ProviderUnavailable` on any failure, timeout or malformed answer
  (a 503: asking later may help).

Those two, and nothing else, leave a provider. Their messages may name the id, since ids are
not secret, but never carry a secret value or a raw answer from the holder.
"""

from __future__ import annotations

from typing import Protocol

from tokensvc.redacted import Secret

__all__ = ["SecretProvider"]


class SecretProvider(Protocol):
    """Looks up the upstream secret for a ``secret_key_id``."""

    async def resolve(self, secret_key_id: str) -> Secret:
        """The secret for ``secret_key_id``.

        Raises UnknownSecret when the holder does not know the id, ProviderUnavailable when
        it cannot give a trustworthy answer.
        """
        ...

    async def close(self) -> None:
        """Release connections and cancel in-flight work; called once at shutdown."""
        ...
