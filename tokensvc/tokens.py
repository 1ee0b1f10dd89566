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

from tokensvc.claims import (
    ISSUED_US_CLAIM,
    SESSION,
    TICKET,
    Claims,
    TokenType,
    claims_from_payload,
)
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
        now, now_us = _issue_time(self._clock())
        first = session_end is None
        sexp = now + self._config.session_max_lifetime if first else _whole(session_end or 0)
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
            "iat": now,
            "nbf": now,
            "exp": exp,
            "scope": scope,
            "sexp": sexp,
            "sec": sealed,
            ISSUED_US_CLAIM: now_us,
        }
        token, kid = self._sign(payload, SESSION)
        return IssuedToken(token, claims_from_payload(payload, SESSION, kid))

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
        now, now_us = _issue_time(self._clock())
        session_exp = _whole(session.exp)
        exp = min(now + self._config.ticket_ttl, session_exp)
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
            "iat": now,
            "nbf": now,
            "exp": exp,
            "scope": " ".join(sorted(session.scope)),
            "sexp": _whole(session.session_end),
            "session_exp": session_exp,
            ISSUED_US_CLAIM: now_us,
        }
        token, kid = self._sign(payload, TICKET)
        return IssuedToken(token, claims_from_payload(payload, TICKET, kid))

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
        return claims_from_payload(payload, expected, key.kid)

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


def _issue_time(now: float) -> tuple[int, int]:
    """One reading of the clock as ``(whole second, microseconds)``.

    The time claims are whole seconds (``iat == nbf == floor(now)``): verifiers such as jose
    and joserfc compare ``nbf`` with the current whole second, so a fraction would make a
    fresh token "not yet valid" for the rest of that second. A whole second is too coarse
    for "revoke every token issued up to now", though: a token issued later in the same
    second would be caught too. The private ``iat_us`` claim keeps the precise order. Both
    are rounded down, from the same reading, so they always agree.
    """
    microseconds = math.floor(now * 1_000_000)
    return microseconds // 1_000_000, microseconds


def _whole(value: float) -> int:
    """A time carried over from another token, as whole seconds (rounded down: never later).

    Tokens of older releases carried fractions; their successors must not.
    """
    return math.floor(value)


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
