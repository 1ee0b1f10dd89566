"""The verified-token cache: it saves work, never a check that can change."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from tests.conftest import FakeClock
from tests.support import make_config, make_ring, sealing_key, signing_key
from tokensvc.claims import SESSION, TICKET
from tokensvc.errors import InvalidToken
from tokensvc.keys import KeyRing
from tokensvc.redacted import Secret
from tokensvc.tokens import IssuedToken, TokenIssuer, TokenVerifier


class CountingDecode:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = jwt.decode

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(jwt, "decode", counted)


def issue(issuer: TokenIssuer, ttl: int = 600) -> IssuedToken:
    return issuer.issue_session(client_id="extension", sub="alice", skid="demo",
                                secret=Secret("sk-x"), scope="chatkit", ttl=ttl)


@pytest.fixture
def parts(clock: FakeClock) -> tuple[TokenIssuer, TokenVerifier, list[KeyRing]]:
    config = make_config().tokens
    rings = [make_ring()]
    issuer = TokenIssuer(config, lambda: rings[0], clock=clock)
    verifier = TokenVerifier(config, lambda: rings[0], clock=clock, cache_size=2)
    return issuer, verifier, rings


def test_a_token_seen_before_is_not_decoded_again(parts: Any, monkeypatch: Any) -> None:
    issuer, verifier, _ = parts
    decode = CountingDecode(monkeypatch)
    token = issue(issuer).token
    first = verifier.verify(token, SESSION)
    assert verifier.verify(token, SESSION) == first
    assert decode.calls == 1


def test_a_cached_token_still_expires(parts: Any, clock: FakeClock) -> None:
    issuer, verifier, _ = parts
    token = issue(issuer, ttl=60).token
    verifier.verify(token, SESSION)
    clock.advance(60 + make_config().tokens.leeway)
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token, SESSION)
    assert caught.value.expired


def test_a_cached_ticket_is_still_refused_where_a_session_token_is_expected(
    parts: Any,
) -> None:
    issuer, verifier, _ = parts
    session = issue(issuer)
    ticket = issuer.issue_ticket(session.claims).token
    assert verifier.verify(ticket, TICKET).token_type == TICKET
    with pytest.raises(InvalidToken):
        verifier.verify(ticket, SESSION)


def test_a_new_key_ring_empties_the_cache(parts: Any) -> None:
    issuer, verifier, rings = parts
    token = issue(issuer).token
    verifier.verify(token, SESSION)
    # The signing key is retired: a ring without it.
    rings[0] = KeyRing([signing_key("sig-2")], [sealing_key()])
    with pytest.raises(InvalidToken):
        verifier.verify(token, SESSION)


def test_the_cache_is_bounded(parts: Any, monkeypatch: Any) -> None:
    issuer, verifier, _ = parts
    tokens = [issue(issuer).token for _ in range(3)]
    decode = CountingDecode(monkeypatch)
    for token in tokens:  # three tokens through a two-entry cache
        verifier.verify(token, SESSION)
    verifier.verify(tokens[0], SESSION)  # evicted by the third: decoded again
    verifier.verify(tokens[2], SESSION)  # still there
    assert decode.calls == 4


def test_a_tampered_copy_of_a_cached_token_is_verified_on_its_own(parts: Any) -> None:
    issuer, verifier, _ = parts
    token = issue(issuer).token
    verifier.verify(token, SESSION)
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(InvalidToken):
        verifier.verify(f"{header}.{payload}.{flipped}", SESSION)
