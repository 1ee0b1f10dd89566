"""Issuing and verifying session tokens and stream tickets. The only module that imports jwt.

Verification follows the contract's order and does the cheap checks first: size and shape
(a regex), then the header (a dict lookup of ``kid`` in the in-memory ring: no I/O for an
unknown kid), then the signature and claims with PyJWT, with the algorithm pinned by the
key, never taken from the token.

PyJWT reads the wall clock itself, which tests cannot move, so its time checks are off and
``iat``/``nbf``/``exp`` are checked here against the injected clock, with the same
semantics (``exp <= now - leeway`` is expired).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from tokensvc.claims import SESSION, TICKET, Claims, TokenType
from tokensvc.config import TokensConfig
from tokensvc.errors import InvalidToken
from tokensvc.keys import KeyRing, RingSource
from tokensvc.redacted import Secret
from tokensvc.sealing import Sealer

__all__ = [
    "MAX_TOKEN_BYTES",
    "IssuedToken",
    "TokenIssuer",
    "TokenVerifier",
    "new_token_id",
]

MAX_TOKEN_BYTES = 8 * 1024
_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_TYP: dict[TokenType, str] = {SESSION: "at+jwt", TICKET: "sse+jwt"}
_TYPE_OF: dict[str, TokenType] = {typ: kind for kind, typ in _TYP.items()}
# Header parameters that would let a token choose its own key or change how it is
# processed. None of them has a legitimate use here.
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "x5c", "jwk", "crit", "zip", "b64"})
_REQUIRED = ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"]


def new_token_id() -> str:
    """A fresh ``jti``/``sid``: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class IssuedToken:
    """A signed token and the claims it carries."""

    token: str
    claims: Claims

    def __repr__(self) -> str:
        return f"IssuedToken(token='***', claims={self.claims!r})"


class TokenIssuer:
    """Signs session tokens and stream tickets with the ring's current key."""

    def __init__(
        self,
        config: TokensConfig,
        ring: RingSource,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_token_id,
        sealer: Sealer | None = None,
    ) -> None:
        self._config = config
        self._ring = ring
        self._clock = clock
        self._new_id = new_id
        self._sealer = sealer or Sealer(ring)

    def issue_session(
        self,
        *,
        client_id: str,
        sub: str,
        skid: str,
        secret: Secret,
        scope: str,
        ttl: int,
        sid: str | None = None,
        session_end: float | None = None,
    ) -> IssuedToken:
        """A session token; a new session unless ``sid``/``session_end`` continue one."""
        now = _issue_time(self._clock())
        first = session_end is None
        sexp = now + self._config.session_max_lifetime if first else float(session_end or 0)
        exp = min(now + min(ttl, self._config.max_ttl), sexp)
        if exp <= now:
            raise InvalidToken("session has reached its maximum lifetime")
        jti = self._new_id()
        sealed = self._sealer.seal(secret, jti=jti, audience=self._config.audience)
        payload: dict[str, Any] = {
            "iss": self._config.issuer,
            "aud": self._config.audience,
            "sub": sub,
            "client_id": client_id,
            "skid": skid,
            "sid": sid or self._new_id(),
            "jti": jti,
            "iat": _json_time(now),
            "nbf": _json_time(now),
            "exp": _json_time(exp),
            "scope": scope,
            "sexp": _json_time(sexp),
            "sec": sealed,
        }
        token, kid = self._sign(payload, SESSION)
        return IssuedToken(token, _claims(payload, SESSION, kid))

    def refresh(self, session: Claims, secret: Secret, ttl: int) -> IssuedToken:
        """A new token for the same session: same sid/sub/skid, new jti, never past sexp."""
        return self.issue_session(
            client_id=session.client_id,
            sub=session.sub,
            skid=session.skid,
            secret=secret,
            scope=" ".join(sorted(session.scope)),
            ttl=ttl,
            sid=session.sid,
            session_end=session.session_end,
        )

    def issue_ticket(self, session: Claims) -> IssuedToken:
        """A single-use stream ticket bound to the session, carrying its expiry."""
        now = _issue_time(self._clock())
        exp = min(now + self._config.ticket_ttl, session.exp)
        if exp <= now:
            raise InvalidToken("session token is about to expire")
        payload: dict[str, Any] = {
            "iss": self._config.issuer,
            "aud": self._config.stream_audience,
            "sub": session.sub,
            "client_id": session.client_id,
            "skid": session.skid,
            "sid": session.sid,
            "jti": self._new_id(),
            "iat": _json_time(now),
            "nbf": _json_time(now),
            "exp": _json_time(exp),
            "scope": " ".join(sorted(session.scope)),
            "sexp": _json_time(session.session_end),
            "session_exp": _json_time(session.exp),
        }
        token, kid = self._sign(payload, TICKET)
        return IssuedToken(token, _claims(payload, TICKET, kid))

    def _sign(self, payload: dict[str, Any], token_type: TokenType) -> tuple[str, str]:
        key = self._ring().signer
        if key.private_key is None:  # KeyRing refuses this; kept for the type checker
            raise InvalidToken("active signing key has no private key")
        headers = {"kid": key.kid, "typ": _TYP[token_type]}
        token = jwt.encode(payload, key.private_key, algorithm=key.algorithm, headers=headers)
        return token, key.kid


class TokenVerifier:
    """Checks shape, header, signature and claims of a token, in the contract's order.

    Tokens that passed the signature and claim checks are remembered (an LRU of
    ``cache_size`` entries, keyed by the exact token string, emptied whenever the key ring
    changes), because a chat panel presents the same token on every request of its
    session and PyJWT's decoding costs most of a protected request. Only checks whose
    answer cannot change are skipped on a hit: the shape is checked again, and the time
    claims, the route's token type and (by the caller) the revocation list are checked on
    every request.
    """

    def __init__(
        self,
        config: TokensConfig,
        ring: RingSource,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 4096,
    ) -> None:
        self._config = config
        self._ring = ring
        self._clock = clock
        self._cache_size = cache_size
        self._verified: OrderedDict[str, Claims] = OrderedDict()
        self._verified_ring: KeyRing | None = None

    def verify(self, token: str, accept: TokenType | frozenset[TokenType]) -> Claims:
        """Claims of a valid token of an accepted type; InvalidToken otherwise.

        ``accept`` is what the route expects: a session token, a stream ticket, or (on
        event streams that allow it) either, told apart by ``typ``. Does not consult the
        revocation list: that is the caller's next step.
        """
        accepted = frozenset((accept,)) if isinstance(accept, str) else accept
        # 2. Shape: bounded before any parsing, so a huge header costs nothing.
        # fullmatch: "$" alone would let a trailing newline through the shape check.
        if len(token) > MAX_TOKEN_BYTES or not _SHAPE.fullmatch(token):
            raise InvalidToken("malformed token")
        ring = self._ring()
        if ring is not self._verified_ring:  # rotated or reloaded: nothing carries over
            self._verified.clear()
            self._verified_ring = ring
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify_signed(token, accepted, ring)
            self._verified[token] = claims
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(token)
            if claims.token_type not in accepted:
                raise InvalidToken("wrong token type")
        self._check_times(claims, claims.token_type)
        return claims

    def _verify_signed(
        self, token: str, accepted: frozenset[TokenType], ring: KeyRing
    ) -> Claims:
        """Steps 3 and 4 but the clock: header, signature and claims."""
        # 3. Header: decoded by hand, so the key is chosen from our ring by kid and the
        # algorithm comes from that key.
        header = _decode_header(token.split(".", 1)[0])
        forbidden = _FORBIDDEN_HEADERS.intersection(header)
        if forbidden:
            raise InvalidToken(f"forbidden header parameter {sorted(forbidden)[0]}")
        kid = header.get("kid")
        key = ring.verifying_key(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("unknown key id")
        if header.get("alg") != key.algorithm:
            raise InvalidToken("algorithm does not match the key")
        typ = header.get("typ")
        expected = _TYPE_OF.get(_normalise_typ(typ)) if isinstance(typ, str) else None
        if expected is None or expected not in accepted:
            raise InvalidToken("wrong token type")

        # 4. Signature and claims.
        audience = self._config.audience if expected == SESSION else self._config.stream_audience
        try:
            payload = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.algorithm],
                audience=audience,
                issuer=self._config.issuer,
                options={
                    "require": _REQUIRED,
                    "strict_aud": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as err:
            # The class name says what failed; PyJWT's text never reaches a client.
            raise InvalidToken(f"jwt rejected the token: {type(err).__name__}") from err
        return _claims(payload, expected, key.kid)

    def _check_times(self, claims: Claims, expected: TokenType) -> None:
        now = self._clock()
        leeway = self._config.leeway
        lifetime = self._config.max_ttl if expected == SESSION else self._config.ticket_ttl
        if claims.exp - claims.iat > lifetime:
            raise InvalidToken("token lifetime exceeds the configured maximum")
        if claims.nbf < claims.iat - leeway or claims.exp <= claims.nbf:
            raise InvalidToken("inconsistent time claims")
        if claims.iat > now + leeway:
            raise InvalidToken("token issued in the future")
        if claims.nbf > now + leeway:
            raise InvalidToken("token not yet valid")
        if claims.exp > claims.session_end or claims.session_exp > claims.session_end:
            raise InvalidToken("token outlives its session")
        if claims.exp <= now - leeway:
            raise InvalidToken("token expired", expired=True)


def _issue_time(now: float) -> float:
    """``now`` to the millisecond, rounded down.

    Whole seconds would be too coarse: "revoke every token issued up to now" compares
    ``iat`` with the revocation time, and a token issued later in the same second would be
    caught too. Rounding down keeps the error on the safe side (at most 1 ms).
    """
    return math.floor(now * 1000) / 1000


def _json_time(value: float) -> float | int:
    """A time claim as JSON: milliseconds at most, an integer when it is whole."""
    value = round(value, 3)
    return int(value) if value == int(value) else value


def _decode_header(segment: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as err:
        # RecursionError: a deeply nested header ("[[[[...") fits in 8 KiB.
        raise InvalidToken("header is not base64url JSON") from err
    if not isinstance(header, dict):
        raise InvalidToken("header is not a JSON object")
    return header


def _normalise_typ(typ: str) -> str:
    lowered = typ.lower()
    return lowered.removeprefix("application/")


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


def _claims(payload: dict[str, Any], token_type: TokenType, kid: str) -> Claims:
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
    return Claims(
        token_type=token_type,
        iss=_text(payload, "iss"),
        aud=_text(payload, "aud"),
        sub=_text(payload, "sub"),
        client_id=_text(payload, "client_id"),
        skid=_text(payload, "skid"),
        sid=_text(payload, "sid"),
        jti=_text(payload, "jti"),
        iat=_number(payload, "iat"),
        nbf=_number(payload, "nbf"),
        exp=exp,
        scope=frozenset(scope.split()),
        session_exp=session_exp,
        session_end=_number(payload, "sexp"),
        sealed=sealed,
        kid=kid,
    )
