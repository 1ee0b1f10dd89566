"""The verified contents of a session token or a stream ticket, and how a payload becomes them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from tokensvc.errors import InvalidToken

__all__ = [
    "ISSUED_US_CLAIM",
    "SESSION",
    "TICKET",
    "Claims",
    "TokenType",
    "claims_from_payload",
]

TokenType = Literal["session", "ticket"]
SESSION: TokenType = "session"
TICKET: TokenType = "ticket"
# Private claim: the issue time in whole microseconds, which orders a token against a
# revocation made in the same second as its whole-second ``iat``.
ISSUED_US_CLAIM = "iat_us"


@dataclass(frozen=True)
class Claims:
    """Claims of a token that passed signature and claim checks.

    ``session_exp`` is when the session token behind it expires: for a session token its
    own ``exp``; for a stream ticket the ``exp`` of the session token that minted it, which
    is how long a stream opened with the ticket may live. ``session_end`` is ``sexp``, the
    absolute end of the session across refreshes.

    The time claims are whole seconds, as standard verifiers expect. ``issued_at`` is the
    issue time to the microsecond (the private ``iat_us`` claim), which orders a token
    against an "issued at or before T" revocation made in the same second; None for a
    token that does not carry it.
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
    issued_at: float | None = None

    @property
    def issue_time(self) -> float:
        """When the token was issued, as precisely as it says (``iat`` at the least)."""
        return self.iat if self.issued_at is None else self.issued_at

    def has_scope(self, scope: str) -> bool:
        return scope in self.scope


def _number(payload: dict[str, Any], name: str) -> float:
    value = payload.get(name)
    # bool is an int subclass; "true" is not a time.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"claim {name} must be a JSON number")
    try:
        number = float(value)  # a huge JSON integer overflows here
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidToken(f"claim {name} must be a JSON number")
    return number


def _text(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"claim {name} must be a non-empty string")
    return value


def claims_from_payload(payload: dict[str, Any], token_type: TokenType, kid: str) -> Claims:
    """Typed claims from a decoded payload; stricter than PyJWT about types."""
    scope = payload.get("scope", "")
    if not isinstance(scope, str):
        raise InvalidToken("claim scope must be a string")
    exp = _number(payload, "exp")
    if token_type == SESSION:
        sealed: str | None = _text(payload, "sec")
        session_exp = exp
    else:
        if "sec" in payload:
            raise InvalidToken("a stream ticket never carries a secret")
        sealed = None
        session_exp = _number(payload, "session_exp")
    iat = _number(payload, "iat")
    return Claims(
        token_type=token_type,
        iss=_text(payload, "iss"),
        aud=_text(payload, "aud"),
        sub=_text(payload, "sub"),
        client_id=_text(payload, "client_id"),
        skid=_text(payload, "skid"),
        sid=_text(payload, "sid"),
        jti=_text(payload, "jti"),
        iat=iat,
        nbf=_number(payload, "nbf"),
        exp=exp,
        scope=frozenset(scope.split()),
        session_exp=session_exp,
        session_end=_number(payload, "sexp"),
        sealed=sealed,
        kid=kid,
        issued_at=_issued_at(payload, iat),
    )


def _issued_at(payload: dict[str, Any], iat: float) -> float | None:
    """The precise issue time from ``iat_us``; None when absent (older tokens).

    It must fall within the ``iat`` second: a token cannot claim to be younger than its
    ``iat`` says, which would let it slip past a revocation.
    """
    if ISSUED_US_CLAIM not in payload:
        return None
    value = payload[ISSUED_US_CLAIM]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidToken(f"claim {ISSUED_US_CLAIM} must be a JSON integer")
    if value // 1_000_000 != iat:
        raise InvalidToken("inconsistent time claims")
    return value / 1_000_000
