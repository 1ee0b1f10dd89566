"""The verified contents of a session token or a stream ticket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["SESSION", "TICKET", "Claims", "TokenType"]

TokenType = Literal["session", "ticket"]
SESSION: TokenType = "session"
TICKET: TokenType = "ticket"


@dataclass(frozen=True)
class Claims:
    """Claims of a token that passed signature and claim checks.

    ``session_exp`` is when the session token behind it expires: for a session token its
    own ``exp``; for a stream ticket the ``exp`` of the session token that minted it, which
    is how long a stream opened with the ticket may live. ``session_end`` is ``sexp``, the
    absolute end of the session across refreshes.
    """

    token_type: TokenType
    iss: str
    aud: str
    sub: str
    client_id: str
    skid: str
    sid: str
    jti: str
    iat: float
    nbf: float
    exp: float
    scope: frozenset[str]
    session_exp: float
    session_end: float
    sealed: str | None = field(default=None, repr=False)
    # The signing key's id, so long-lived streams can notice that their key was retired.
    kid: str = ""

    def has_scope(self, scope: str) -> bool:
        return scope in self.scope
