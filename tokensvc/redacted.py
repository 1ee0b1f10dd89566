"""A wrapper that keeps secret strings out of reprs, logs and tracebacks."""

from __future__ import annotations

__all__ = ["Secret"]


class Secret:
    """A secret string that never prints itself.

    ``repr()`` and ``str()`` give ``Secret('***')``, so a secret that ends up in a log call,
    an f-string or an exception by accident shows nothing. Read it with :meth:`reveal`,
    at the one place that needs the clear value.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        """The clear value. Call it only where the secret is used, never to log it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        import hmac

        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> None:  # type: ignore[override]
        # Pickling would write the clear value somewhere we do not control.
        raise TypeError("Secret cannot be pickled")
