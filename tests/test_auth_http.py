"""TokenAuthMixin over HTTP: transport rules, challenges, revocation, scope, error bodies.

Every request goes through the probe routes of ``tests.protected``: ``/probe/whoami``
(scope chatkit), ``/probe/events`` (an event-stream stand-in that accepts
``?access_token=``) and ``/probe/admin`` (scope admin).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
import tornado.httpclient
import tornado.httputil
from tornado.tcpclient import TCPClient

from tests.conftest import FakeClock
from tests.protected import ProbeExtension
from tests.support import (
    CLIENT_ID,
    UPSTREAM_SECRET,
    make_app,
    make_config,
    make_ring,
    make_services,
    sealing_key,
    signing_key,
)
from tests.test_sessions_http import fetch, new_session
from tokensvc.claims import Claims
from tokensvc.config import Config
from tokensvc.errors import InsufficientScope, InvalidToken, StoreUnavailable
from tokensvc.keys import KeyRing
from tokensvc.redacted import Secret
from tokensvc.revocation.base import RevocationEntry
from tokensvc.services import Services
from tokensvc.tokens import IssuedToken, TokenIssuer

BARE_CHALLENGE = 'Bearer realm="tokensvc"'
INVALID_CHALLENGE = (
    f'Bearer realm="tokensvc", error="invalid_token", '
    f'error_description="{InvalidToken.description}"'
)
EXPIRED_CHALLENGE = (
    'Bearer realm="tokensvc", error="invalid_token", error_description="token expired"'
)
INVALID_BODY = {"error": "invalid_token", "error_description": InvalidToken.description}
# Words that would tell a client which check failed (or echo what it sent).
CHECK_NAMES = (
    "kid", "key", "alg", "typ", "signature", "audience", "aud", "issuer", "iss", "claim",
    "revoked", "malformed", "header", "segment", "jwt", "decode", "ticket", "scope",
)


class UnavailableStore:
    """A revocation store that cannot give a trustworthy answer."""

    def __init__(self, *, lookups: bool = True, tickets: bool = True) -> None:
        self.fail_lookups = lookups
        self.fail_tickets = tickets

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def is_revoked(self, claims: Claims) -> bool:
        if self.fail_lookups:
            raise StoreUnavailable("replica is stale")
        return False

    async def revoke(self, entry: RevocationEntry) -> None:
        raise StoreUnavailable("replica is stale")

    async def consume_ticket(self, iss: str, jti: str, expires_at: float) -> bool:
        if self.fail_tickets:
            raise StoreUnavailable("replica is stale")
        return True

    def subscribe(self, listener: Callable[[RevocationEntry], None]) -> Callable[[], None]:
        return lambda: None

    @property
    def ready(self) -> bool:
        return False


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def config() -> Config:
    return make_config()


@pytest.fixture
def store() -> Any:
    return None  # make_services builds a memory store on the fake clock


@pytest.fixture
def services(io_loop: Any, config: Config, store: Any, clock: FakeClock) -> Services:
    built = make_services(config=config, store=store, clock=clock)
    io_loop.run_sync(built.revocations.start)
    return built


@pytest.fixture
def app(services: Services) -> Any:
    return make_app(services, [ProbeExtension()])


@pytest.fixture
def issue(services: Services) -> Callable[..., IssuedToken]:
    """A session token straight from the issuer (no HTTP round trip)."""

    def _issue(scope: str = "chatkit", **changes: Any) -> IssuedToken:
        fields: dict[str, Any] = {
            "client_id": CLIENT_ID,
            "sub": "alice",
            "skid": "demo",
            "secret": Secret(UPSTREAM_SECRET),
            "scope": scope,
            "ttl": 600,
            **changes,
        }
        return services.issuer.issue_session(**fields)

    return _issue


@pytest.fixture
def get(http_client: Any, base_url: str) -> Callable[..., Any]:
    """GET ``path`` with an optional Bearer token, never raising on an error status."""

    async def _get(path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        return await fetch(http_client, base_url + path, headers=headers, **kwargs)

    return _get


def body_of(response: tornado.httpclient.HTTPResponse) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.body)
    return body


def assert_error_body(response: tornado.httpclient.HTTPResponse, error: str) -> dict[str, Any]:
    assert response.headers["Content-Type"].startswith("application/json")
    body = body_of(response)
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    return body


def assert_invalid_token(response: tornado.httpclient.HTTPResponse, label: str = "") -> None:
    assert response.code == 401, label
    assert response.headers["WWW-Authenticate"] == INVALID_CHALLENGE, label
    assert body_of(response) == INVALID_BODY, label


def assert_bare_challenge(response: tornado.httpclient.HTTPResponse) -> None:
    assert response.code == 401
    assert response.headers["WWW-Authenticate"] == BARE_CHALLENGE
    assert "error=" not in response.headers["WWW-Authenticate"]
    assert_error_body(response, "invalid_token")


def ticket_for(services: Services, session: IssuedToken) -> str:
    return services.issuer.issue_ticket(session.claims).token


# -- challenges and error bodies --------------------------------------------------------


@pytest.mark.gen_test
async def test_valid_session_token_is_accepted(
    get: Callable[..., Any], http_client: Any, base_url: str
) -> None:
    session = await new_session(http_client, base_url, user="alice")
    response = await get("/probe/whoami", session["access_token"])
    assert response.code == 200
    assert body_of(response)["sub"] == "alice"
    lowercase = await get("/probe/whoami",
                          headers={"Authorization": "bearer " + session["access_token"]})
    assert lowercase.code == 200


@pytest.mark.gen_test
async def test_no_credentials_gets_bare_challenge(get: Callable[..., Any]) -> None:
    assert_bare_challenge(await get("/probe/whoami"))
    assert_bare_challenge(await get("/probe/events"))


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "authorization",
    ["Basic ZXh0ZW5zaW9uOnNlY3JldA==", "Token abc.def.ghi", "Digest username=x",
     "Bearertoken", "MAC id=1"],
)
async def test_non_bearer_scheme_gets_bare_challenge(
    get: Callable[..., Any], authorization: str
) -> None:
    assert_bare_challenge(await get("/probe/whoami", headers={"Authorization": authorization}))


def _bad_tokens(services: Services, issue: Callable[..., IssuedToken]) -> dict[str, str]:
    good = issue().token
    head, payload, signature = good.split(".")
    other_payload = issue(sub="mallory").token.split(".")[1]
    stranger_ring = KeyRing([signing_key("sig-stranger")], [sealing_key()])
    stranger = TokenIssuer(services.config.tokens, lambda: stranger_ring, clock=services.clock)
    lookalike_ring = make_ring()  # same kid "sig-1", another key
    lookalike = TokenIssuer(services.config.tokens, lambda: lookalike_ring, clock=services.clock)
    fields = {"client_id": CLIENT_ID, "sub": "alice", "skid": "demo",
              "secret": Secret(UPSTREAM_SECRET), "scope": "chatkit", "ttl": 600}
    return {
        "garbage": "not-a-token",
        "empty segments": "..",
        "swapped payload": f"{head}.{other_payload}.{signature}",
        "flipped signature": f"{head}.{payload}.{signature[:-4]}AAAA",
        "unknown kid": stranger.issue_session(**fields).token,
        "key not in ring": lookalike.issue_session(**fields).token,
        "stream ticket": ticket_for(services, issue()),
        "too long": f"{head}.{payload}.{'A' * 9000}",
    }


@pytest.mark.gen_test
async def test_every_bad_token_gets_the_same_invalid_token_answer(
    get: Callable[..., Any], services: Services, issue: Callable[..., IssuedToken]
) -> None:
    for name, token in _bad_tokens(services, issue).items():
        response = await get("/probe/whoami", token)
        assert_invalid_token(response, name)
        text = response.body.decode() + response.headers["WWW-Authenticate"]
        assert token not in text, name
        for segment in token.split("."):
            assert len(segment) < 8 or segment not in text, name
        assert "sig-1" not in text, name
        assert "sig-stranger" not in text, name


def test_invalid_token_description_names_no_check() -> None:
    words = set(InvalidToken.description.lower().rstrip(".").split())
    assert not words & set(CHECK_NAMES)


@pytest.mark.gen_test
async def test_expired_token_says_token_expired_and_only_then(
    get: Callable[..., Any], http_client: Any, base_url: str,
    services: Services, clock: FakeClock,
) -> None:
    session = await new_session(http_client, base_url)
    token = session["access_token"]
    leeway = services.config.tokens.leeway
    clock.now = session["expires_at"] + leeway - 1  # just inside the leeway
    assert (await get("/probe/whoami", token)).code == 200
    clock.now = session["expires_at"] + leeway  # just outside
    response = await get("/probe/whoami", token)
    assert response.code == 401
    assert response.headers["WWW-Authenticate"] == EXPIRED_CHALLENGE
    assert body_of(response) == {"error": "invalid_token", "error_description": "token expired"}
    assert token not in response.body.decode()
    # A forged token past its expiry is just invalid: "expired" is said of genuine ones only.
    head, payload, signature = token.split(".")
    assert_invalid_token(await get("/probe/whoami", f"{head}.{payload}.{signature[:-4]}AAAA"))


@pytest.mark.gen_test
async def test_two_authorization_headers_are_a_bad_request(
    http_client: Any, base_url: str, issue: Callable[..., IssuedToken]
) -> None:
    token = issue().token
    headers = tornado.httputil.HTTPHeaders()
    headers.add("Authorization", "Bearer " + token)
    headers.add("Authorization", "Bearer " + token)
    for path in ("/probe/whoami", "/probe/events"):
        response = await fetch(http_client, base_url + path, headers=headers)
        assert response.code == 400
        assert_error_body(response, "invalid_request")
        assert token not in response.body.decode()


# -- transport: the query parameter -----------------------------------------------------


@pytest.mark.gen_test
async def test_access_token_query_is_ignored_on_other_routes(
    get: Callable[..., Any], services: Services, issue: Callable[..., IssuedToken]
) -> None:
    session = issue()
    for token in (session.token, ticket_for(services, session)):
        assert_bare_challenge(await get("/probe/whoami?access_token=" + token))
    # Ignored means ignored: with a header as well it is not "both" (that is stream-only).
    both = await get("/probe/whoami?access_token=" + session.token, session.token)
    assert both.code == 200


@pytest.mark.gen_test
async def test_ticket_in_query_opens_the_stream_once(
    get: Callable[..., Any], services: Services, issue: Callable[..., IssuedToken]
) -> None:
    ticket = ticket_for(services, issue())
    first = await get("/probe/events?access_token=" + ticket)
    assert first.code == 200
    assert body_of(first)["type"] == "ticket"
    assert_invalid_token(await get("/probe/events?access_token=" + ticket))


@pytest.mark.gen_test
async def test_ticket_reuse_is_rejected_while_the_ticket_is_still_valid(
    get: Callable[..., Any], services: Services, issue: Callable[..., IssuedToken],
    clock: FakeClock,
) -> None:
    ticket = ticket_for(services, issue())
    assert (await get("/probe/events?access_token=" + ticket)).code == 200
    clock.advance(services.config.tokens.ticket_ttl - 1)  # still valid, already used
    assert_invalid_token(await get("/probe/events?access_token=" + ticket))


@pytest.mark.gen_test
async def test_session_token_in_header_is_accepted_on_the_stream_route(
    get: Callable[..., Any], issue: Callable[..., IssuedToken]
) -> None:
    response = await get("/probe/events", issue().token)
    assert response.code == 200
    assert body_of(response)["type"] == "session"


@pytest.mark.gen_test
async def test_header_and_query_together_are_a_bad_request(
    get: Callable[..., Any], services: Services, issue: Callable[..., IssuedToken]
) -> None:
    session = issue()
    ticket = ticket_for(services, session)
    response = await get("/probe/events?access_token=" + ticket, session.token)
    assert response.code == 400
    assert_error_body(response, "invalid_request")
    # The rejected request did not use up the ticket.
    assert (await get("/probe/events?access_token=" + ticket)).code == 200


@pytest.mark.gen_test
async def test_access_token_given_twice_is_a_bad_request(
    get: Callable[..., Any], services: Services, issue: Callable[..., IssuedToken]
) -> None:
    session = issue()
    ticket = ticket_for(services, session)
    for query in (f"access_token={ticket}&access_token={ticket}",
                  f"access_token={ticket}&access_token=",
                  f"access_token=&access_token={ticket}"):
        response = await get("/probe/events?" + query)
        assert response.code == 400, query
        assert_error_body(response, "invalid_request")


@pytest.mark.gen_test
async def test_session_token_in_query_is_rejected_by_default(
    get: Callable[..., Any], issue: Callable[..., IssuedToken]
) -> None:
    assert_invalid_token(await get("/probe/events?access_token=" + issue().token))


@pytest.mark.gen_test
@pytest.mark.parametrize("config", [make_config(allow_session_token_in_query=True)])
async def test_session_token_in_query_is_accepted_when_configured(
    get: Callable[..., Any], services: Services, issue: Callable[..., IssuedToken]
) -> None:
    assert services.config.tokens.allow_session_token_in_query
    response = await get("/probe/events?access_token=" + issue().token)
    assert response.code == 200
    assert body_of(response)["type"] == "session"
    # Still only on the stream route.
    assert_bare_challenge(await get("/probe/whoami?access_token=" + issue().token))


@pytest.mark.gen_test
async def test_ticket_in_authorization_header_is_rejected(
    get: Callable[..., Any], services: Services, issue: Callable[..., IssuedToken]
) -> None:
    session = issue()
    assert_invalid_token(await get("/probe/events", ticket_for(services, session)))
    assert_invalid_token(await get("/probe/whoami", ticket_for(services, session)))
    assert_invalid_token(await get("/probe/admin", ticket_for(services, session)))


@pytest.mark.gen_test
async def test_ticket_is_not_accepted_by_session_endpoints(
    http_client: Any, base_url: str, services: Services, issue: Callable[..., IssuedToken]
) -> None:
    ticket = ticket_for(services, issue())
    for path in ("/sessions/refresh", "/sessions/ticket"):
        response = await fetch(http_client, base_url + path, method="POST", body="",
                               headers={"Authorization": "Bearer " + ticket})
        assert_invalid_token(response)


# -- revocation -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_revoked_session_is_rejected_with_the_same_answer(
    get: Callable[..., Any], services: Services, issue: Callable[..., IssuedToken],
    clock: FakeClock,
) -> None:
    session = issue()
    ticket = ticket_for(services, session)
    other = issue()
    assert (await get("/probe/whoami", session.token)).code == 200
    await services.revocations.revoke(
        RevocationEntry(
            kind="sid",
            value=session.claims.sid,
            client_id=CLIENT_ID,
            iss=services.config.tokens.issuer,
            expires_at=clock() + 86400,
        )
    )
    assert_invalid_token(await get("/probe/whoami", session.token))
    assert_invalid_token(await get("/probe/events?access_token=" + ticket))
    # Another session of the same client and subject is untouched.
    assert (await get("/probe/whoami", other.token)).code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("store", [UnavailableStore()])
async def test_unavailable_revocation_store_fails_closed_with_503(
    get: Callable[..., Any], services: Services, issue: Callable[..., IssuedToken]
) -> None:
    session = issue()
    for response in (
        await get("/probe/whoami", session.token),
        await get("/probe/events?access_token=" + ticket_for(services, session)),
    ):
        assert response.code == 503
        assert int(response.headers["Retry-After"]) >= 1
        assert_error_body(response, "temporarily_unavailable")
        assert "WWW-Authenticate" not in response.headers


@pytest.mark.gen_test
@pytest.mark.parametrize("store", [UnavailableStore(lookups=False, tickets=True)])
async def test_ticket_that_cannot_be_marked_used_is_a_503(
    get: Callable[..., Any], services: Services, issue: Callable[..., IssuedToken]
) -> None:
    session = issue()
    assert (await get("/probe/whoami", session.token)).code == 200  # lookups still work
    response = await get("/probe/events?access_token=" + ticket_for(services, session))
    assert response.code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert_error_body(response, "temporarily_unavailable")


# -- scope ------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_missing_scope_is_403_insufficient_scope(
    get: Callable[..., Any], issue: Callable[..., IssuedToken]
) -> None:
    response = await get("/probe/admin", issue().token)
    assert response.code == 403
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="tokensvc", ')
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="admin"' in challenge
    body = assert_error_body(response, "insufficient_scope")
    assert body["error_description"] == InsufficientScope.description
    assert (await get("/probe/admin", issue(scope="chatkit admin").token)).code == 200
    assert (await get("/probe/whoami", issue(scope="admin").token)).code == 403


# -- headers, routing, robustness -------------------------------------------------------


@pytest.mark.gen_test
async def test_every_response_carries_the_security_headers(
    get: Callable[..., Any], http_client: Any, base_url: str,
    issue: Callable[..., IssuedToken],
) -> None:
    token = issue().token
    responses = [
        await get("/probe/whoami", token),  # 200
        await get("/probe/whoami"),  # 401 bare
        await get("/probe/whoami", "x.y.z"),  # 401 invalid
        await get("/probe/admin", token),  # 403
        await get("/probe/events?access_token=a&access_token=b"),  # 400
        await get("/no/such/path"),  # 404
        await fetch(http_client, base_url + "/healthz", method="DELETE"),  # 405
        await fetch(http_client, base_url + "/probe/whoami", method="OPTIONS"),  # 204
    ]
    assert {r.code for r in responses} == {200, 204, 400, 401, 403, 404, 405}
    for response in responses:
        assert response.headers["Referrer-Policy"] == "no-referrer", response.code
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.code


@pytest.mark.gen_test
@pytest.mark.parametrize("store", [UnavailableStore()])
async def test_503_carries_the_security_headers(
    get: Callable[..., Any], issue: Callable[..., IssuedToken]
) -> None:
    response = await get("/probe/whoami", issue().token)
    assert response.code == 503
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.gen_test
async def test_unknown_path_is_a_json_404(http_client: Any, base_url: str) -> None:
    for method, body in (("GET", None), ("POST", "{}"), ("DELETE", None)):
        response = await fetch(http_client, base_url + "/probe/nope", method=method, body=body)
        assert response.code == 404, method
        assert_error_body(response, "not_found")


@pytest.mark.gen_test
async def test_wrong_method_is_a_json_405_with_allow(
    http_client: Any, base_url: str, issue: Callable[..., IssuedToken]
) -> None:
    response = await fetch(http_client, base_url + "/healthz", method="POST", body="{}")
    assert response.code == 405
    assert_error_body(response, "method_not_allowed")
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert "GET" in allowed
    assert "POST" not in allowed

    bearer = {"Authorization": "Bearer " + issue().token}
    response = await fetch(http_client, base_url + "/probe/whoami", method="DELETE",
                           headers=bearer)
    assert response.code == 405
    assert_error_body(response, "method_not_allowed")
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert "DELETE" not in allowed


def _deeply_nested_token() -> str:
    # A header of 5000 "[": valid base64url, fits in 8 KiB, and recursion-bombs a JSON parser.
    import base64

    head = base64.urlsafe_b64encode(b"[" * 5000).rstrip(b"=").decode()
    return f"{head}.e30.AAAA"


NASTY_AUTHORIZATION = [
    "Bearer",
    "Bearer ",
    "Bearer  ",
    "Bearer a.b.c",
    "Bearer ...",
    "Bearer a.b.c.d",
    "Bearer \u00e9\u00e9\u00e9.\u00e9.\u00e9",
    "Bearer " + "A" * 9000,
    "Bearer " + "A.B." + "C" * 20000,
    "Bearer %00%ff.%zz.%",
    "Bearer eyJhbGciOiJub25lIn0.e30.",
    "Bearer eyJ.eyJ.eyJ",
    "Bearer " + _deeply_nested_token(),
    "Bearer e30.e30.e30",
    "Bearer W10.W10.W10",
    ",",
    "Bearer a.b.c, Bearer d.e.f",
]
NASTY_QUERIES = [
    "access_token=%ff%fe%fd",
    "access_token=%00",
    "access_token=%",
    "access_token=%zz",
    "access_token=%E2%98%83",
    "access_token=" + "A" * 20000,
    "access_token=a.b.c%0A",
    "access_token=" + quote(_deeply_nested_token()),
    "access_token[]=x",
    "access_token",
    "=&&=&access_token=",
    "access_token=..%2E",
]


@pytest.mark.gen_test
async def test_malformed_credentials_never_cause_a_500(get: Callable[..., Any]) -> None:
    for authorization in NASTY_AUTHORIZATION:
        for path in ("/probe/whoami", "/probe/events", "/probe/admin"):
            response = await get(path, headers={"Authorization": authorization})
            assert response.code in (400, 401), (path, authorization[:40], response.code)
            assert set(body_of(response)) == {"error", "error_description"}
    for query in NASTY_QUERIES:
        response = await get("/probe/events?" + query)
        assert response.code in (400, 401), (query[:40], response.code)
        assert set(body_of(response)) == {"error", "error_description"}


async def _raw_status(port: int, request: bytes) -> int:
    """Send bytes as they are (no client-side validation) and read the status code."""
    stream = await TCPClient().connect("127.0.0.1", port)
    try:
        await stream.write(request)
        status_line = await stream.read_until(b"\r\n", max_bytes=65536)
    finally:
        stream.close()
    return int(status_line.split()[1])


@pytest.mark.gen_test
async def test_raw_malformed_bytes_never_cause_a_500(http_server: Any, http_port: int) -> None:
    values = [
        b"Bearer \x00\x00\x00",
        b"Bearer a.b\x00.c",
        b"Bearer \xff\xfe\xfd.\xc3\xa9.x",
        "Bearer \u00e9.\u2603.x".encode(),
        b"Bearer \x7f.\x01.\x1b",
        b"Bearer\ta.b.c",
    ]
    for value in values:
        request = (b"GET /probe/whoami HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + value
                   + b"\r\nConnection: close\r\n\r\n")
        status = await _raw_status(http_port, request)
        assert 400 <= status < 500, (value, status)
    targets = [
        b"/probe/events?access_token=\xff\xfe",
        b"/probe/events?access_token=a.b.c\x01",
        "/probe/events?access_token=\u00e9.\u00e9.\u00e9".encode(),
        b"/probe/events?access_token=%C0%80",
    ]
    for target in targets:
        request = (b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n"
                   b"Connection: close\r\n\r\n")
        status = await _raw_status(http_port, request)
        assert 400 <= status < 500, (target, status)
