"""TokenIssuer and TokenVerifier: what a token carries, and every way a bad one is refused.

Forged tokens are signed with the ring's real key, so each rejection is caused by the one
thing the test changed; ``test_resigned_token_is_accepted_unchanged`` is the control that
shows the forging helpers alone do not make a token invalid.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import math
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import get_default_algorithms

from tests.conftest import FakeClock
from tests.support import CLIENT_ID, UPSTREAM_SECRET, make_config, make_ring, signing_key
from tokensvc.claims import SESSION, TICKET
from tokensvc.config import TokensConfig
from tokensvc.errors import InvalidToken
from tokensvc.keys import KeyRing, SigningKey, public_jwk
from tokensvc.redacted import Secret
from tokensvc.sealing import Sealer
from tokensvc.tokens import MAX_TOKEN_BYTES, IssuedToken, TokenIssuer, TokenVerifier

ALGORITHMS = ("ES256", "EdDSA")
OTHER_ALGORITHM = {"ES256": "EdDSA", "EdDSA": "ES256"}
FORBIDDEN_HEADERS = ("jku", "x5u", "x5c", "jwk", "crit", "zip", "b64")
REQUIRED_CLAIMS = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti")
SESSION_CLAIMS = {
    "iss", "aud", "sub", "client_id", "skid", "sid", "jti",
    "iat", "nbf", "exp", "scope", "sexp", "sec", "iat_us",
}
DROP = object()  # a claim or header value meaning "leave this one out"


# -- helpers ----------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def header_of(token: str) -> dict[str, Any]:
    """The JOSE header, read by hand (PyJWT's reader refuses some headers we craft)."""
    header: dict[str, Any] = json.loads(unb64url(token.split(".")[0]))
    return header


def payload_of(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(unb64url(token.split(".")[1]))
    return payload


def _changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for name, value in changes.items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def resign(
    token: str,
    key: SigningKey,
    *,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    """``token`` with some header parameters or claims changed, signed with ``key`` by PyJWT."""
    headers = _changed(header_of(token), header or {})
    headers.pop("alg", None)  # PyJWT would let a header "alg" override ``algorithm``
    payload = _changed(payload_of(token), claims or {})
    return jwt.encode(payload, key.private_key, algorithm=key.algorithm, headers=headers)


def craft(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    key: SigningKey,
) -> str:
    """A compact JWS assembled by hand and signed with ``key`` whatever the header says."""
    raw_header = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw_payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64url(raw_header)}.{b64url(raw_payload)}".encode()
    algorithm = get_default_algorithms()[key.algorithm]
    signature = algorithm.sign(signing_input, key.private_key)
    return f"{signing_input.decode()}.{b64url(signature)}"


def recraft(
    token: str,
    key: SigningKey,
    *,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    """Like :func:`resign`, for changes PyJWT refuses to encode (a non-string iss...)."""
    return craft(
        _changed(header_of(token), header or {}), _changed(payload_of(token), claims or {}), key
    )


class RingSpy:
    """A ring source that counts how often the verifier asks for the ring."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self.calls = 0

    def __call__(self) -> KeyRing:
        self.calls += 1
        return self.ring


def _verifier(config: TokensConfig, clock: FakeClock, ring: Any) -> TokenVerifier:
    source = ring if callable(ring) else (lambda: ring)
    return TokenVerifier(config, source, clock=clock)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(params=ALGORITHMS)
def algorithm(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def config(algorithm: str) -> TokensConfig:
    return make_config(algorithm=algorithm).tokens


@pytest.fixture
def ring(algorithm: str) -> KeyRing:
    return make_ring(algorithm)


@pytest.fixture
def key(ring: KeyRing) -> SigningKey:
    return ring.signer


@pytest.fixture
def issuer(config: TokensConfig, ring: KeyRing, clock: FakeClock) -> TokenIssuer:
    return TokenIssuer(config, lambda: ring, clock=clock)


@pytest.fixture
def verifier_for(config: TokensConfig, clock: FakeClock) -> Callable[[Any], TokenVerifier]:
    """A verifier over another ring (or ring source), same config and clock."""
    return functools.partial(_verifier, config, clock)


@pytest.fixture
def verifier(verifier_for: Callable[[Any], TokenVerifier], ring: KeyRing) -> TokenVerifier:
    return verifier_for(ring)


@pytest.fixture
def issue(issuer: TokenIssuer) -> Callable[..., IssuedToken]:
    return functools.partial(
        issuer.issue_session,
        client_id=CLIENT_ID,
        sub="alice",
        skid="demo",
        secret=Secret(UPSTREAM_SECRET),
        scope="chatkit",
        ttl=600,
    )


@pytest.fixture
def session(issue: Callable[..., IssuedToken]) -> IssuedToken:
    return issue()


@pytest.fixture
def ticket(issuer: TokenIssuer, session: IssuedToken) -> IssuedToken:
    return issuer.issue_ticket(session.claims)


def rejects(verifier: TokenVerifier, token: str, accept: Any = SESSION) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token, accept)
    return caught.value


def rejects_not_expired(verifier: TokenVerifier, token: str, accept: Any = SESSION) -> None:
    # Only a genuine, expired token may say "token expired": anything else would make the
    # one distinguishable answer an oracle for forged tokens.
    assert not rejects(verifier, token, accept).expired


# -- round trips ------------------------------------------------------------------------


def test_session_token_round_trip(
    issue: Callable[..., IssuedToken],
    verifier: TokenVerifier,
    config: TokensConfig,
    ring: KeyRing,
    algorithm: str,
    clock: FakeClock,
) -> None:
    issued = issue()
    now = int(clock())
    assert header_of(issued.token) == {"alg": algorithm, "typ": "at+jwt", "kid": "sig-1"}
    payload = payload_of(issued.token)
    assert set(payload) == SESSION_CLAIMS
    assert payload["iss"] == config.issuer
    assert payload["aud"] == config.audience
    assert (payload["sub"], payload["client_id"], payload["skid"]) == ("alice", CLIENT_ID, "demo")
    assert payload["iat"] == payload["nbf"] == now
    assert payload["exp"] == now + 600
    assert payload["sexp"] == now + config.session_max_lifetime
    assert payload["scope"] == "chatkit"
    assert len(unb64url(payload["jti"])) >= 16  # >= 128 random bits
    assert len(unb64url(payload["sid"])) >= 16

    claims = verifier.verify(issued.token, SESSION)
    assert claims == issued.claims
    assert claims.token_type == SESSION
    assert (claims.sub, claims.sid, claims.jti) == ("alice", payload["sid"], payload["jti"])
    assert claims.exp == claims.session_exp == now + 600
    assert claims.session_end == payload["sexp"]
    assert claims.has_scope("chatkit")
    assert claims.sealed == payload["sec"]
    secret = Sealer(lambda: ring).unseal(payload["sec"], jti=claims.jti, audience=claims.aud)
    assert secret.reveal() == UPSTREAM_SECRET


def test_time_claims_are_whole_seconds_taken_from_a_fractional_clock(
    issuer: TokenIssuer, issue: Callable[..., IssuedToken], clock: FakeClock
) -> None:
    clock.now = 1_800_000_000.731_9
    session = issue()
    ticket = issuer.issue_ticket(session.claims)
    for token, names in (
        (session.token, ("iat", "nbf", "exp", "sexp")),
        (ticket.token, ("iat", "nbf", "exp", "sexp", "session_exp")),
    ):
        payload = payload_of(token)
        for name in names:
            assert type(payload[name]) is int, (name, payload[name])
        assert payload["iat"] == payload["nbf"] == 1_800_000_000
        # The private claim keeps the precise order, rounded down like iat.
        assert payload["iat_us"] == 1_800_000_000_731_900
    assert session.claims.issue_time == pytest.approx(1_800_000_000.7319)


def test_refresh_of_a_token_with_fractional_times_gives_whole_seconds(
    issuer: TokenIssuer, key: SigningKey, verifier: TokenVerifier, session: IssuedToken
) -> None:
    # Tokens of older releases carried millisecond times and no iat_us.
    iat = session.claims.iat + 0.25
    legacy = resign(session.token, key, claims={
        "iat": iat, "nbf": iat, "exp": session.claims.exp + 0.5,
        "sexp": session.claims.session_end + 0.75, "iat_us": DROP,
    })
    claims = verifier.verify(legacy, SESSION)
    assert claims.issued_at is None
    assert claims.issue_time == iat
    refreshed = payload_of(issuer.refresh(claims, Secret(UPSTREAM_SECRET), 600).token)
    ticket = payload_of(issuer.issue_ticket(claims).token)
    assert type(refreshed["sexp"]) is int
    assert refreshed["sexp"] == int(session.claims.session_end)
    assert type(ticket["session_exp"]) is int
    assert type(ticket["exp"]) is int


@pytest.mark.parametrize(
    "value",
    ["1800000000000000", 1.8e15, True, None, [1], 10**400],
    ids=repr,
)
def test_rejects_a_precise_issue_time_that_is_not_an_integer(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, value: Any
) -> None:
    rejects_not_expired(verifier, resign(session.token, key, claims={"iat_us": value}))


@pytest.mark.parametrize("offset_us", [-1, 1_000_000], ids=["second-before", "second-after"])
def test_rejects_a_precise_issue_time_outside_the_iat_second(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, offset_us: int
) -> None:
    start = int(session.claims.iat) * 1_000_000
    assert verifier.verify(resign(session.token, key, claims={"iat_us": start + 999_999}), SESSION)
    rejects_not_expired(
        verifier, resign(session.token, key, claims={"iat_us": start + offset_us})
    )


def test_session_token_never_carries_the_secret_in_clear(session: IssuedToken) -> None:
    encoded = b64url(UPSTREAM_SECRET.encode())
    assert UPSTREAM_SECRET not in session.token
    assert encoded[:20] not in session.token
    assert UPSTREAM_SECRET not in json.dumps(payload_of(session.token))
    assert UPSTREAM_SECRET not in repr(session)


def test_each_token_has_its_own_jti_and_each_session_its_own_sid(
    issue: Callable[..., IssuedToken],
) -> None:
    first, second = issue(), issue()
    assert first.claims.jti != second.claims.jti
    assert first.claims.sid != second.claims.sid


def test_ttl_is_capped_at_max_ttl(
    issue: Callable[..., IssuedToken], config: TokensConfig, clock: FakeClock
) -> None:
    issued = issue(ttl=config.max_ttl * 10)
    assert issued.claims.exp == int(clock()) + config.max_ttl


def test_refresh_keeps_the_session_and_reseals_under_a_new_jti(
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    session: IssuedToken,
    ring: KeyRing,
    clock: FakeClock,
) -> None:
    old = verifier.verify(session.token, SESSION)
    clock.advance(120)
    refreshed = issuer.refresh(old, Secret(UPSTREAM_SECRET), 900)
    new = verifier.verify(refreshed.token, SESSION)

    assert (new.sid, new.sub, new.skid) == (old.sid, old.sub, old.skid)
    assert new.client_id == old.client_id
    assert new.scope == old.scope
    assert new.session_end == old.session_end
    assert new.jti != old.jti
    assert new.iat == int(clock())
    assert new.exp == int(clock()) + 900
    assert new.sealed is not None
    assert old.sealed is not None
    assert new.sealed != old.sealed
    sealer = Sealer(lambda: ring)
    assert sealer.unseal(new.sealed, jti=new.jti, audience=new.aud).reveal() == UPSTREAM_SECRET
    # The new sealed secret is bound to the new jti, not the old one.
    with pytest.raises(InvalidToken):
        sealer.unseal(new.sealed, jti=old.jti, audience=new.aud)


def test_refresh_never_extends_past_sexp(
    issuer: TokenIssuer, verifier: TokenVerifier, session: IssuedToken, clock: FakeClock
) -> None:
    claims = session.claims
    clock.now = claims.session_end - 30
    refreshed = issuer.refresh(claims, Secret(UPSTREAM_SECRET), 3600)
    assert refreshed.claims.exp == claims.session_end
    assert verifier.verify(refreshed.token, SESSION).exp == claims.session_end
    clock.now = claims.session_end
    with pytest.raises(InvalidToken):
        issuer.refresh(claims, Secret(UPSTREAM_SECRET), 3600)


def test_ticket_round_trip(
    ticket: IssuedToken,
    session: IssuedToken,
    verifier: TokenVerifier,
    config: TokensConfig,
    algorithm: str,
    clock: FakeClock,
) -> None:
    now = int(clock())
    assert header_of(ticket.token) == {"alg": algorithm, "typ": "sse+jwt", "kid": "sig-1"}
    payload = payload_of(ticket.token)
    assert payload["aud"] == f"{config.audience}:stream"
    assert "sec" not in payload
    assert payload["exp"] - payload["iat"] <= config.ticket_ttl
    assert payload["exp"] == now + config.ticket_ttl

    claims = verifier.verify(ticket.token, TICKET)
    assert claims.token_type == TICKET
    assert claims.sealed is None
    assert (claims.sid, claims.sub, claims.skid) == (
        session.claims.sid, session.claims.sub, session.claims.skid
    )
    assert claims.jti != session.claims.jti
    # The stream it opens may live as long as the session token that minted it.
    assert claims.session_exp == session.claims.exp
    assert claims.exp <= session.claims.exp


def test_ticket_never_outlives_its_session_token(
    issuer: TokenIssuer, verifier: TokenVerifier, session: IssuedToken, clock: FakeClock
) -> None:
    clock.now = session.claims.exp - 10
    ticket = issuer.issue_ticket(session.claims)
    assert ticket.claims.exp == session.claims.exp
    assert verifier.verify(ticket.token, TICKET).exp == session.claims.exp
    clock.now = session.claims.exp
    with pytest.raises(InvalidToken):
        issuer.issue_ticket(session.claims)


def test_verifier_accepts_either_type_when_asked_to(
    session: IssuedToken, ticket: IssuedToken, verifier: TokenVerifier
) -> None:
    either = frozenset({SESSION, TICKET})
    assert verifier.verify(session.token, either).token_type == SESSION
    assert verifier.verify(ticket.token, either).token_type == TICKET


def test_resigned_token_is_accepted_unchanged(
    session: IssuedToken, ticket: IssuedToken, key: SigningKey, verifier: TokenVerifier
) -> None:
    assert verifier.verify(resign(session.token, key), SESSION) == session.claims
    assert verifier.verify(resign(ticket.token, key), TICKET) == ticket.claims
    crafted = craft(header_of(session.token), payload_of(session.token), key)
    assert verifier.verify(crafted, SESSION) == session.claims


# -- algorithms and keys ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_rejects_unsigned_alg_none(session: IssuedToken, verifier: TokenVerifier, alg: str) -> None:
    header = b64url(json.dumps({"alg": alg, "kid": "sig-1", "typ": "at+jwt"}).encode())
    payload = session.token.split(".")[1]
    rejects_not_expired(verifier, f"{header}.{payload}.")
    rejects_not_expired(verifier, f"{header}.{payload}.AAAA")


def test_rejects_hs256_signed_with_public_key(
    session: IssuedToken, verifier: TokenVerifier, key: SigningKey
) -> None:
    pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for alg in ("HS256", key.algorithm):  # claiming HS256, and claiming the key's own alg
        header = b64url(json.dumps({"alg": alg, "kid": "sig-1", "typ": "at+jwt"}).encode())
        signing_input = f"{header}.{session.token.split('.')[1]}"
        mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        rejects_not_expired(verifier, f"{signing_input}.{b64url(mac)}")


def test_rejects_other_algorithm_than_the_ring_is_configured_for(
    session: IssuedToken, algorithm: str, verifier_for: Callable[[Any], TokenVerifier]
) -> None:
    # The other-algorithm key is in the ring under its own kid, yet only keys of the
    # configured algorithm verify: one algorithm at a time.
    other = signing_key("sig-other", OTHER_ALGORITHM[algorithm])
    verifier = verifier_for(make_ring(algorithm, other))
    foreign = resign(session.token, other, header={"kid": "sig-other"})
    assert header_of(foreign)["alg"] == OTHER_ALGORITHM[algorithm]
    rejects_not_expired(verifier, foreign)


@pytest.mark.parametrize("alg", ["other", "ES384", "RS256", "PS256", "HS256", "es256", "eddsa"])
def test_rejects_alg_header_not_matching_the_key(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, alg: str
) -> None:
    claimed = OTHER_ALGORITHM[key.algorithm] if alg == "other" else alg
    forged = craft({**header_of(session.token), "alg": claimed}, payload_of(session.token), key)
    rejects_not_expired(verifier, forged)


def test_rejects_key_of_the_other_algorithm_under_a_known_kid(
    session: IssuedToken, algorithm: str, verifier: TokenVerifier
) -> None:
    impostor = signing_key("sig-1", OTHER_ALGORITHM[algorithm])
    forged = craft(
        {**header_of(session.token), "alg": impostor.algorithm}, payload_of(session.token), impostor
    )
    rejects_not_expired(verifier, forged)


def test_rejects_unknown_kid(session: IssuedToken, verifier: TokenVerifier, algorithm: str) -> None:
    stranger = signing_key("sig-unknown", algorithm)
    rejects_not_expired(verifier, resign(session.token, stranger, header={"kid": "sig-unknown"}))


@pytest.mark.parametrize("kid", [1, None, ["sig-1"], {"kid": "sig-1"}, True, DROP])
def test_rejects_kid_that_is_not_a_string(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, kid: Any
) -> None:
    header = _changed(header_of(session.token), {"kid": kid})
    rejects_not_expired(verifier, craft(header, payload_of(session.token), key))


def test_rejects_same_kid_signed_by_a_key_not_in_the_ring(
    session: IssuedToken, verifier: TokenVerifier, algorithm: str
) -> None:
    lookalike = signing_key("sig-1", algorithm)
    rejects_not_expired(verifier, resign(session.token, lookalike))


@pytest.mark.parametrize(
    ("state", "verifies"),
    [("staged", True), ("retiring", True), ("retired", False)],
)
def test_key_state_decides_whether_its_tokens_verify(
    session: IssuedToken,
    algorithm: str,
    verifier_for: Callable[[Any], TokenVerifier],
    state: str,
    verifies: bool,
) -> None:
    # Staged keys verify on purpose: another host may already sign with a key this one
    # still sees as staged. Retired keys never verify.
    other = signing_key("sig-2", algorithm, state=state)
    verifier = verifier_for(make_ring(algorithm, other))
    token = resign(session.token, other, header={"kid": "sig-2"})
    if verifies:
        assert verifier.verify(token, SESSION).jti == session.claims.jti
    else:
        rejects_not_expired(verifier, token)


def test_tokens_of_a_rotated_out_signer_verify_while_it_is_retiring(
    session: IssuedToken, ring: KeyRing, algorithm: str,
    verifier_for: Callable[[Any], TokenVerifier],
) -> None:
    old = ring.signer
    retiring = SigningKey(
        kid=old.kid, algorithm=old.algorithm, state="retiring",
        public_key=old.public_key, private_key=old.private_key,
    )
    rotated = KeyRing(
        [retiring, signing_key("sig-2", algorithm)], ring.sealing_keys.values(),
        algorithm=algorithm,  # type: ignore[arg-type]
    )
    assert rotated.signer.kid == "sig-2"
    assert verifier_for(rotated).verify(session.token, SESSION) == session.claims


# -- types ------------------------------------------------------------------------------


def test_rejects_session_token_where_ticket_expected_and_vice_versa(
    session: IssuedToken, ticket: IssuedToken, verifier: TokenVerifier
) -> None:
    rejects_not_expired(verifier, session.token, TICKET)
    rejects_not_expired(verifier, ticket.token, SESSION)


def test_rejects_ticket_typ_on_a_session_token_and_vice_versa(
    session: IssuedToken, ticket: IssuedToken, key: SigningKey, verifier: TokenVerifier
) -> None:
    # Swapping typ alone must not turn one kind into the other: the audience differs too.
    relabelled_session = resign(session.token, key, header={"typ": "sse+jwt"})
    relabelled_ticket = resign(ticket.token, key, header={"typ": "at+jwt"})
    rejects_not_expired(verifier, relabelled_session, frozenset({SESSION, TICKET}))
    rejects_not_expired(verifier, relabelled_ticket, frozenset({SESSION, TICKET}))


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt ", "application/jwt", "sse+jwt",
                                 "application/application/at+jwt", "", 1, None, DROP])
def test_rejects_wrong_typ(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, typ: Any
) -> None:
    header = _changed(header_of(session.token), {"typ": typ})
    rejects_not_expired(verifier, craft(header, payload_of(session.token), key))


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "At+Jwt", "application/at+jwt",
                                 "Application/AT+JWT"])
def test_accepts_typ_case_insensitively_and_with_application_prefix(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, typ: str
) -> None:
    assert verifier.verify(resign(session.token, key, header={"typ": typ}), SESSION).sub == "alice"


@pytest.mark.parametrize("typ", ["SSE+JWT", "application/sse+jwt"])
def test_accepts_ticket_typ_case_insensitively_and_with_application_prefix(
    ticket: IssuedToken, key: SigningKey, verifier: TokenVerifier, typ: str
) -> None:
    assert verifier.verify(resign(ticket.token, key, header={"typ": typ}), TICKET).sub == "alice"


@pytest.mark.parametrize("name", FORBIDDEN_HEADERS)
def test_rejects_forbidden_header_parameter(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, name: str
) -> None:
    values: dict[str, Any] = {
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIBszCCAVmgAwIBAgIUQ"],
        "jwk": public_jwk(key),
        "crit": ["exp"],
        "zip": "DEF",
        "b64": True,
    }
    if name == "b64":
        # PyJWT drops b64=true and detaches the payload for b64=false: assemble by hand.
        token = craft({**header_of(session.token), "b64": True}, payload_of(session.token), key)
    else:
        token = resign(session.token, key, header={name: values[name]})
    assert name in header_of(token)
    rejects_not_expired(verifier, token)


# -- issuer and audience ----------------------------------------------------------------


@pytest.mark.parametrize("iss", ["tokensvc2", "TOKENSVC", "", ["tokensvc"], None])
def test_rejects_wrong_issuer(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, iss: Any
) -> None:
    rejects_not_expired(verifier, recraft(session.token, key, claims={"iss": iss}))


@pytest.mark.parametrize("aud", ["chatkit:stream", "CHATKIT", "chatkit ", "other", ""])
def test_rejects_wrong_audience(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, aud: str
) -> None:
    rejects_not_expired(verifier, resign(session.token, key, claims={"aud": aud}))


@pytest.mark.parametrize("aud", [["chatkit"], ["chatkit", "other"], ["other", "chatkit"]])
def test_rejects_audience_list_even_when_it_contains_ours(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, aud: list[str]
) -> None:
    rejects_not_expired(verifier, resign(session.token, key, claims={"aud": aud}))


def test_rejects_ticket_with_session_audience(
    ticket: IssuedToken, key: SigningKey, verifier: TokenVerifier
) -> None:
    rejects_not_expired(verifier, resign(ticket.token, key, claims={"aud": "chatkit"}), TICKET)


def test_rejects_ticket_carrying_a_sealed_secret(
    ticket: IssuedToken, session: IssuedToken, key: SigningKey, verifier: TokenVerifier
) -> None:
    forged = resign(ticket.token, key, claims={"sec": session.claims.sealed})
    rejects_not_expired(verifier, forged, TICKET)


# -- claims -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claim", [*REQUIRED_CLAIMS, "client_id", "skid", "sid", "sexp", "sec"]
)
def test_rejects_session_token_missing_a_claim(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, claim: str
) -> None:
    rejects_not_expired(verifier, resign(session.token, key, claims={claim: DROP}))


@pytest.mark.parametrize("claim", [*REQUIRED_CLAIMS, "sid", "sexp", "session_exp"])
def test_rejects_ticket_missing_a_claim(
    ticket: IssuedToken, key: SigningKey, verifier: TokenVerifier, claim: str
) -> None:
    rejects_not_expired(verifier, resign(ticket.token, key, claims={claim: DROP}), TICKET)


NOT_NUMBERS = [
    "1800000000", True, False, None, [1800000000], {"t": 1}, math.nan,
    pytest.param(10**400, id="huge-int"),  # overflows float()
]


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
@pytest.mark.parametrize("claim", ["iat", "nbf", "exp", "sexp"])
def test_rejects_time_claim_that_is_not_a_json_number(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, claim: str, value: Any
) -> None:
    rejects_not_expired(verifier, resign(session.token, key, claims={claim: value}))


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
def test_rejects_ticket_session_exp_that_is_not_a_json_number(
    ticket: IssuedToken, key: SigningKey, verifier: TokenVerifier, value: Any
) -> None:
    rejects_not_expired(verifier, resign(ticket.token, key, claims={"session_exp": value}), TICKET)


@pytest.mark.parametrize("value", ["", 0, 7, None, ["alice"]], ids=repr)
@pytest.mark.parametrize("claim", ["sub", "jti", "sid"])
def test_rejects_empty_or_non_string_identifier(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, claim: str, value: Any
) -> None:
    rejects_not_expired(verifier, resign(session.token, key, claims={claim: value}))


def test_accepts_lifetime_of_exactly_max_ttl_and_rejects_one_second_more(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, config: TokensConfig
) -> None:
    iat = session.claims.iat
    at_limit = resign(session.token, key, claims={"exp": iat + config.max_ttl})
    assert verifier.verify(at_limit, SESSION).exp == iat + config.max_ttl
    over = resign(session.token, key, claims={"exp": iat + config.max_ttl + 1})
    rejects_not_expired(verifier, over)


def test_accepts_ticket_lifetime_of_exactly_ticket_ttl_and_rejects_one_second_more(
    ticket: IssuedToken, key: SigningKey, verifier: TokenVerifier, config: TokensConfig
) -> None:
    iat = ticket.claims.iat
    at_limit = resign(ticket.token, key, claims={"exp": iat + config.ticket_ttl})
    assert verifier.verify(at_limit, TICKET).exp == iat + config.ticket_ttl
    over = resign(ticket.token, key, claims={"exp": iat + config.ticket_ttl + 1})
    rejects_not_expired(verifier, over, TICKET)


def test_rejects_token_that_outlives_its_session(
    session: IssuedToken, ticket: IssuedToken, key: SigningKey, verifier: TokenVerifier
) -> None:
    rejects_not_expired(
        verifier, resign(session.token, key, claims={"sexp": session.claims.exp - 1})
    )
    # A ticket whose own exp passes sexp, though the session token it names does not.
    end = ticket.claims.exp - 1
    rejects_not_expired(
        verifier, resign(ticket.token, key, claims={"sexp": end, "session_exp": end}), TICKET
    )
    rejects_not_expired(
        verifier,
        resign(ticket.token, key, claims={"session_exp": ticket.claims.session_end + 1}),
        TICKET,
    )


# -- clock and leeway -------------------------------------------------------------------


def test_expiry_is_allowed_leeway_minus_one_second_and_no_more(
    session: IssuedToken, verifier: TokenVerifier, config: TokensConfig, clock: FakeClock
) -> None:
    exp = session.claims.exp
    clock.now = exp + config.leeway - 1  # exp == now - leeway + 1: just inside
    assert verifier.verify(session.token, SESSION).jti == session.claims.jti
    clock.now = exp + config.leeway  # exp == now - leeway: just outside
    err = rejects(verifier, session.token)
    assert err.expired
    assert err.description == "token expired"


def test_ticket_expiry_uses_the_same_leeway(
    ticket: IssuedToken, verifier: TokenVerifier, config: TokensConfig, clock: FakeClock
) -> None:
    clock.now = ticket.claims.exp + config.leeway - 1
    assert verifier.verify(ticket.token, TICKET).jti == ticket.claims.jti
    clock.now = ticket.claims.exp + config.leeway
    assert rejects(verifier, ticket.token, TICKET).expired


def test_forged_expired_token_does_not_say_expired(
    session: IssuedToken, verifier: TokenVerifier, config: TokensConfig, clock: FakeClock
) -> None:
    head, _, signature = session.token.split(".")
    tampered = b64url(json.dumps({**payload_of(session.token), "sub": "mallory"}).encode())
    clock.now = session.claims.exp + config.leeway + 100
    rejects_not_expired(verifier, f"{head}.{tampered}.{signature}")


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_rejects_iat_or_nbf_beyond_the_leeway_in_the_future(
    session: IssuedToken,
    key: SigningKey,
    verifier: TokenVerifier,
    config: TokensConfig,
    clock: FakeClock,
    claim: str,
) -> None:
    now = int(clock())
    leeway = config.leeway

    def shifted(start: int) -> str:
        # Only the claim under test is in the future: for iat, nbf stays as early as allowed
        # (iat - leeway), so the iat check alone decides.
        claims: dict[str, Any] = (
            {"iat": start, "iat_us": start * 1_000_000, "nbf": start - leeway}
            if claim == "iat"
            else {"nbf": start}
        )
        return resign(session.token, key, claims={**claims, "exp": start + 600})

    assert verifier.verify(shifted(now + leeway), SESSION).jti == session.claims.jti
    rejects_not_expired(verifier, shifted(now + leeway + 1))


# -- size and shape ---------------------------------------------------------------------


def _token_of_length(session: IssuedToken, key: SigningKey, length: int) -> str:
    """A valid token of exactly ``length`` characters, padded with a claim.

    Unpadded base64url never has a length of 4n+1, so whitespace in the header JSON (still
    valid JSON) shifts the total until the exact length is reachable.
    """
    header = header_of(session.token)
    for spaces in range(4):
        raw_header = json.dumps(header).encode() + b" " * spaces
        base = len(craft(raw_header, {**payload_of(session.token), "pad": ""}, key))
        start = max(0, (length - base) * 3 // 4 - 3)
        for filler in range(start, start + 8):
            payload = {**payload_of(session.token), "pad": "x" * filler}
            token = craft(raw_header, payload, key)
            if len(token) == length:
                return token
    raise AssertionError(f"no token of length {length}")


def test_accepts_token_of_8_kib_and_rejects_one_byte_more_before_touching_the_ring(
    session: IssuedToken,
    key: SigningKey,
    ring: KeyRing,
    verifier_for: Callable[[Any], TokenVerifier],
) -> None:
    spy = RingSpy(ring)
    verifier = verifier_for(spy)
    at_limit = _token_of_length(session, key, MAX_TOKEN_BYTES)
    assert MAX_TOKEN_BYTES == 8192
    assert verifier.verify(at_limit, SESSION).jti == session.claims.jti
    over = _token_of_length(session, key, MAX_TOKEN_BYTES + 1)
    spy.calls = 0
    rejects_not_expired(verifier, over)
    assert spy.calls == 0


def _misshapen(token: str) -> dict[str, str]:
    head, payload, signature = token.split(".")
    return {
        "empty": "",
        "two segments": f"{head}.{payload}",
        "four segments": f"{token}.{signature}",
        "empty segment": f"{head}..{signature}",
        "padding": f"{head}.{payload}.{signature}==",
        "padded header": f"{head}=.{payload}.{signature}",
        "leading space": " " + token,
        "inner space": f"{head}. {payload}.{signature}",
        "trailing newline": token + "\n",
        "plus and slash": f"{head}.{payload}.{signature[:-2]}+/",
        "non-base64 char": f"{head}.{payload}!.{signature}",
        "non-ascii": f"{head}.{payload}.{signature}\u00e9",
        "nul": f"{head}.{payload}\x00.{signature}",
        "dots only": "..",
    }


@pytest.mark.parametrize("shape", list(_misshapen("h.p.s")))
def test_rejects_malformed_shape_before_touching_the_ring(
    session: IssuedToken,
    ring: KeyRing,
    verifier_for: Callable[[Any], TokenVerifier],
    shape: str,
) -> None:
    spy = RingSpy(ring)
    rejects_not_expired(verifier_for(spy), _misshapen(session.token)[shape])
    assert spy.calls == 0


@pytest.mark.parametrize(
    "raw_header",
    [b"not json", b"[]", b'"at+jwt"', b"42", b"null", b"\xff\xfe{}", b"{" * 1, b"[" * 5000],
    ids=["text", "array", "string", "number", "null", "bad utf-8", "unclosed", "deep nesting"],
)
def test_rejects_header_that_is_not_a_json_object(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, raw_header: bytes
) -> None:
    rejects_not_expired(verifier, craft(raw_header, payload_of(session.token), key))


@pytest.mark.parametrize(
    "raw_payload", [b"not json", b"[]", b"42", b"[" * 5000], ids=["text", "array", "number", "deep"]
)
def test_rejects_signed_payload_that_is_not_a_json_object(
    session: IssuedToken, key: SigningKey, verifier: TokenVerifier, raw_payload: bytes
) -> None:
    rejects_not_expired(verifier, craft(header_of(session.token), raw_payload, key))


def test_rejects_tampered_payload(session: IssuedToken, verifier: TokenVerifier) -> None:
    head, _, signature = session.token.split(".")
    tampered = b64url(json.dumps({**payload_of(session.token), "scope": "chatkit admin"}).encode())
    rejects_not_expired(verifier, f"{head}.{tampered}.{signature}")


def test_rejects_tampered_signature(session: IssuedToken, verifier: TokenVerifier) -> None:
    head, payload, signature = session.token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    rejects_not_expired(verifier, f"{head}.{payload}.{flipped}")


def test_rejects_payload_swapped_in_from_another_token(
    issue: Callable[..., IssuedToken], verifier: TokenVerifier
) -> None:
    mine, theirs = issue(), issue(sub="bob")
    head, _, signature = mine.token.split(".")
    rejects_not_expired(verifier, f"{head}.{theirs.token.split('.')[1]}.{signature}")

