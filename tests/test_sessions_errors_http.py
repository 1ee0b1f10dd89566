"""Every failure of the session endpoints over HTTP, and the revocation endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tests.conftest import FakeClock
from tests.protected import ProbeExtension
from tests.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_CLIENT_ID,
    OTHER_CLIENT_SECRET,
    UPSTREAM_SECRET,
    FakeProvider,
    basic,
    client,
    make_app,
    make_config,
    make_services,
)
from tests.test_sessions_http import fetch
from tokensvc.claims import SESSION
from tokensvc.config import Config
from tokensvc.errors import StoreUnavailable
from tokensvc.providers import SingleFlightProvider
from tokensvc.redacted import Secret
from tokensvc.revocation.base import RevocationEntry
from tokensvc.revocation.memory import MemoryRevocationStore
from tokensvc.services import Services

SECRETS = {"demo": UPSTREAM_SECRET, "team-x": "sk-team-x-secret-value-000"}
OTHER = basic(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET)


class DownStore(MemoryRevocationStore):
    """A store that answers lookups but cannot record a revocation (e.g. Redis down)."""

    async def revoke(self, entry: RevocationEntry) -> None:
        raise StoreUnavailable("store down")


class CountingProvider:
    """Counts the lookups that reach it, before handing them on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = 0

    async def resolve(self, secret_key_id: str) -> Secret:
        self.entered += 1
        result: Secret = await self.inner.resolve(secret_key_id)
        return result

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
def config() -> Config:
    return make_config()


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider(dict(SECRETS))


@pytest.fixture
def store(clock: FakeClock) -> Any:
    return MemoryRevocationStore(None, clock=clock)


@pytest.fixture
def services(
    io_loop: Any, config: Config, provider: FakeProvider, store: Any, clock: FakeClock
) -> Services:
    built = make_services(config=config, provider=provider, store=store, clock=clock)
    io_loop.run_sync(built.revocations.start)
    return built


@pytest.fixture
def app(services: Services) -> Any:
    return make_app(services, [ProbeExtension()])


async def post_sessions(
    http_client: Any, base_url: str, body: Any, authorization: str | None = None,
    content_type: str = "application/json",
) -> Any:
    headers = {"Content-Type": content_type}
    headers["Authorization"] = basic() if authorization is None else authorization
    if not headers["Authorization"]:
        del headers["Authorization"]
    payload = body if isinstance(body, str | bytes) else json.dumps(body)
    return await fetch(http_client, base_url + "/sessions", method="POST", headers=headers,
                       body=payload)


async def issue(http_client: Any, base_url: str, authorization: str | None = None,
                **body: Any) -> dict[str, Any]:
    response = await post_sessions(
        http_client, base_url, {"secret_key_id": "demo", **body}, authorization
    )
    assert response.code == 200, response.body
    return dict(json.loads(response.body))


async def whoami(http_client: Any, base_url: str, token: str) -> int:
    response = await fetch(http_client, base_url + "/probe/whoami",
                           headers={"Authorization": "Bearer " + token})
    return int(response.code)


async def revoke(http_client: Any, base_url: str, body: Any,
                 authorization: str | None = None) -> Any:
    return await fetch(
        http_client, base_url + "/sessions/revoke", method="POST",
        headers={"Authorization": authorization or basic(),
                 "Content-Type": "application/json"},
        body=json.dumps(body),
    )


def error_of(response: Any) -> str:
    body = json.loads(response.body)
    assert set(body) == {"error", "error_description"}
    return str(body["error"])


def assert_no_token(response: Any) -> None:
    assert b"access_token" not in response.body
    assert UPSTREAM_SECRET.encode() not in response.body


# -- client authentication -----------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "authorization",
    ["", basic(CLIENT_ID, CLIENT_SECRET + "x"), basic("nobody", CLIENT_SECRET),
     "Bearer " + CLIENT_SECRET],
)
async def test_sessions_without_valid_client_credentials_is_401_basic(
    http_client: Any, base_url: str, provider: FakeProvider, authorization: str
) -> None:
    response = await post_sessions(http_client, base_url, {"secret_key_id": "demo"},
                                   authorization)
    assert response.code == 401
    assert error_of(response) == "invalid_client"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="tokensvc"'
    assert provider.calls == []
    assert_no_token(response)


# -- request body --------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx", "application/xml"])
async def test_sessions_body_that_is_not_json_is_415(
    http_client: Any, base_url: str, provider: FakeProvider, content_type: str
) -> None:
    response = await post_sessions(http_client, base_url, {"secret_key_id": "demo"},
                                   content_type=content_type)
    assert response.code == 415
    assert error_of(response) == "unsupported_media_type"
    assert provider.calls == []


def padded_body(size: int) -> str:
    prefix, suffix = '{"secret_key_id":"demo","pad":"', '"}'
    return prefix + "x" * (size - len(prefix) - len(suffix)) + suffix


@pytest.mark.gen_test
async def test_sessions_body_over_64_kib_is_413(
    http_client: Any, base_url: str, provider: FakeProvider
) -> None:
    too_big = await post_sessions(http_client, base_url, padded_body(64 * 1024 + 1))
    assert too_big.code == 413
    assert error_of(too_big) == "payload_too_large"
    at_limit = await post_sessions(http_client, base_url, padded_body(64 * 1024))
    assert at_limit.code == 400  # parsed (and refused for its unknown field), not 413
    assert provider.calls == []


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "body",
    [
        "{",
        "not json",
        "[]",
        '["demo"]',
        "null",
        '"demo"',
        "1",
        "\xff",
        # secret_key_id
        {},
        {"secret_key_id": ""},
        {"secret_key_id": "a" * 129},
        {"secret_key_id": "demo/x"},
        {"secret_key_id": "demo x"},
        {"secret_key_id": "démo"},
        {"secret_key_id": "demo\n"},
        {"secret_key_id": "*"},
        {"secret_key_id": None},
        {"secret_key_id": 7},
        {"secret_key_id": ["demo"]},
        # user
        {"secret_key_id": "demo", "user": ""},
        {"secret_key_id": "demo", "user": "u" * 257},
        {"secret_key_id": "demo", "user": "ali\nce"},
        {"secret_key_id": "demo", "user": "bob\x00"},
        {"secret_key_id": "demo", "user": "\u200b\u2028"},
        {"secret_key_id": "demo", "user": 42},
        # ttl
        {"secret_key_id": "demo", "ttl": 9},
        {"secret_key_id": "demo", "ttl": 3601},
        {"secret_key_id": "demo", "ttl": -60},
        {"secret_key_id": "demo", "ttl": "60"},
        {"secret_key_id": "demo", "ttl": True},
        {"secret_key_id": "demo", "ttl": 60.5},
        {"secret_key_id": "demo", "ttl": 60.0},
        # scope
        {"secret_key_id": "demo", "scope": ""},
        {"secret_key_id": "demo", "scope": ["chatkit"]},
        # fields
        {"secret_key_id": "demo", "client_id": "other"},
        {"secret_key_id": "demo", "sub": "root"},
    ],
)
async def test_sessions_invalid_request_never_asks_the_provider(
    http_client: Any, base_url: str, provider: FakeProvider, body: Any
) -> None:
    response = await post_sessions(http_client, base_url, body)
    assert response.code == 400, response.body
    assert error_of(response) == "invalid_request"
    assert provider.calls == []
    assert_no_token(response)


@pytest.mark.gen_test
@pytest.mark.parametrize("scope", ["admin", "chatkit admin", "CHATKIT"])
async def test_sessions_unknown_scope_is_invalid_scope(
    http_client: Any, base_url: str, provider: FakeProvider, scope: str
) -> None:
    response = await post_sessions(http_client, base_url,
                                   {"secret_key_id": "demo", "scope": scope})
    assert response.code == 400
    assert error_of(response) == "invalid_scope"
    assert provider.calls == []


@pytest.mark.gen_test
@pytest.mark.parametrize("body", [
    {"secret_key_id": "team-" + "a" * 123},  # 128 chars
    {"secret_key_id": "demo", "user": "u" * 256},
    {"secret_key_id": "demo", "user": "Zoë Example <zoe@example.com>"},
    {"secret_key_id": "demo", "ttl": 10},
    {"secret_key_id": "demo", "ttl": 3600},
    {"secret_key_id": "demo", "scope": "chatkit"},
    {"secret_key_id": "demo", "user": None, "ttl": None, "scope": None},
])
async def test_sessions_boundary_values_are_accepted(
    http_client: Any, base_url: str, body: Any
) -> None:
    response = await post_sessions(http_client, base_url, body)
    # The 128-char id is valid but unknown to the holder: past validation either way.
    assert response.code in (200, 400)
    if response.code == 400:
        assert error_of(response) == "invalid_grant"


# -- authorization, provider ---------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("secret_key_id", ["prod", "DEMO", "team", "demo.2", "xteam-a"])
async def test_id_outside_the_clients_patterns_is_unauthorized_and_never_looked_up(
    http_client: Any, base_url: str, provider: FakeProvider, secret_key_id: str
) -> None:
    response = await post_sessions(http_client, base_url, {"secret_key_id": secret_key_id})
    assert response.code == 400
    assert error_of(response) == "unauthorized_client"
    assert provider.calls == []


@pytest.mark.gen_test
async def test_unknown_id_at_the_provider_is_invalid_grant(
    http_client: Any, base_url: str, provider: FakeProvider
) -> None:
    response = await post_sessions(http_client, base_url, {"secret_key_id": "team-nope"})
    assert response.code == 400
    assert error_of(response) == "invalid_grant"
    assert provider.calls == ["team-nope"]
    assert_no_token(response)


@pytest.mark.gen_test
async def test_provider_failure_is_503_with_retry_after_and_no_token(
    http_client: Any, base_url: str, provider: FakeProvider
) -> None:
    provider.fail = True
    response = await post_sessions(http_client, base_url, {"secret_key_id": "demo"})
    assert response.code == 503
    assert error_of(response) == "temporarily_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["Cache-Control"] == "no-store"
    assert_no_token(response)


@pytest.mark.gen_test(timeout=10)
async def test_provider_timeout_is_a_prompt_503(
    http_client: Any, base_url: str, services: Services
) -> None:
    slow = FakeProvider(dict(SECRETS))
    slow.gate = asyncio.Event()  # never set: the holder does not answer
    services.provider = SingleFlightProvider(slow, timeout=0.2)
    # The holder never answers: only the provider's timeout can make this a 503 (the
    # client giving up first would be a 599).
    response = await post_sessions(http_client, base_url, {"secret_key_id": "demo"})
    assert response.code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert_no_token(response)
    assert slow.calls == ["demo"]


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_sessions_for_one_id_share_one_lookup(
    http_client: Any, base_url: str, services: Services
) -> None:
    inner = FakeProvider(dict(SECRETS))
    inner.gate = asyncio.Event()
    # A timeout no busy machine reaches while the requests gather at the lookup.
    counting = CountingProvider(SingleFlightProvider(inner, timeout=60))
    services.provider = counting
    requests = 5
    pending = [
        asyncio.ensure_future(post_sessions(http_client, base_url, {"secret_key_id": "demo"}))
        for _ in range(requests)
    ]
    deadline = time.monotonic() + 30
    while counting.entered < requests:  # every request is waiting on the lookup
        assert time.monotonic() < deadline, "requests did not reach the provider"
        await asyncio.sleep(0.01)
    inner.gate.set()
    responses = await asyncio.gather(*pending)
    assert inner.calls == ["demo"]
    assert [r.code for r in responses] == [200] * requests
    sessions = [json.loads(r.body) for r in responses]
    assert len({s["session_id"] for s in sessions}) == requests
    for session in sessions:
        assert await whoami(http_client, base_url, session["access_token"]) == 200


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "config",
    [make_config().with_clients((client(CLIENT_ID, CLIENT_SECRET, ("demo",), rate_limit=2),))],
)
async def test_over_the_rate_limit_is_429_with_retry_after(
    http_client: Any, base_url: str, provider: FakeProvider, config: Config
) -> None:
    await issue(http_client, base_url)
    await issue(http_client, base_url)
    response = await post_sessions(http_client, base_url, {"secret_key_id": "demo"})
    assert response.code == 429
    assert error_of(response) == "too_many_requests"
    assert int(response.headers["Retry-After"]) >= 1
    assert provider.calls == ["demo", "demo"]


# -- what a token says ---------------------------------------------------------------


@pytest.mark.gen_test
async def test_ttl_is_honoured_in_expires_in(
    http_client: Any, base_url: str, services: Services, clock: FakeClock
) -> None:
    short = await issue(http_client, base_url, ttl=120)
    assert short["expires_in"] == 120
    assert short["expires_at"] == int(clock.now) + 120
    claims = services.verifier.verify(short["access_token"], SESSION)
    assert claims.exp - claims.iat == 120
    default = await issue(http_client, base_url)
    assert default["expires_in"] == services.config.tokens.ttl


@pytest.mark.gen_test
async def test_user_becomes_sub_else_the_client_id(
    http_client: Any, base_url: str, services: Services
) -> None:
    with_user = await issue(http_client, base_url, user="alice")
    without = await issue(http_client, base_url)
    alice = services.verifier.verify(with_user["access_token"], SESSION)
    anonymous = services.verifier.verify(without["access_token"], SESSION)
    assert (alice.sub, alice.client_id, alice.skid) == ("alice", CLIENT_ID, "demo")
    assert (anonymous.sub, anonymous.client_id) == (CLIENT_ID, CLIENT_ID)


# -- refresh -------------------------------------------------------------------------


async def refresh(http_client: Any, base_url: str, token: str, body: Any = "") -> Any:
    headers = {"Authorization": "Bearer " + token}
    if not isinstance(body, str):
        body = json.dumps(body)
        headers["Content-Type"] = "application/json"
    return await fetch(http_client, base_url + "/sessions/refresh", method="POST",
                       headers=headers, body=body)


@pytest.mark.gen_test
@pytest.mark.parametrize("config", [make_config(session_max_lifetime=3600, max_ttl=3600)])
async def test_refresh_never_extends_past_sexp(
    http_client: Any, base_url: str, clock: FakeClock, provider: FakeProvider, config: Config
) -> None:
    first = await issue(http_client, base_url)
    session_end = int(clock.now) + 3600
    clock.advance(3000)
    refreshed = await refresh(http_client, base_url, first["access_token"])
    assert refreshed.code == 200
    second = json.loads(refreshed.body)
    assert second["session_id"] == first["session_id"]
    assert second["expires_at"] == session_end
    assert second["expires_in"] == 600
    assert provider.calls == ["demo"]  # re-sealed, not looked up again
    # Past sexp, still inside the leeway that keeps the token itself verifiable.
    clock.advance(600 + 2)
    late = await refresh(http_client, base_url, second["access_token"])
    assert late.code == 401
    assert "invalid_token" in late.headers["WWW-Authenticate"]
    assert_no_token(late)
    clock.advance(3600)
    assert (await refresh(http_client, base_url, second["access_token"])).code == 401


@pytest.mark.gen_test
@pytest.mark.parametrize("body", [{"ttl": 9}, {"ttl": 3601}, {"ttl": "60"}, {"ttl": True},
                                  {"ttl": 60.5}, {"user": "mallory"}, [], "{"])
async def test_refresh_with_an_invalid_body_is_400(
    http_client: Any, base_url: str, body: Any
) -> None:
    token = (await issue(http_client, base_url))["access_token"]
    if body == "{":
        response = await fetch(http_client, base_url + "/sessions/refresh", method="POST",
                               headers={"Authorization": "Bearer " + token,
                                        "Content-Type": "application/json"}, body=body)
    else:
        response = await refresh(http_client, base_url, token, body)
    assert response.code == 400
    assert error_of(response) == "invalid_request"
    assert_no_token(response)


@pytest.mark.gen_test
async def test_refresh_ttl_is_honoured(http_client: Any, base_url: str) -> None:
    token = (await issue(http_client, base_url))["access_token"]
    response = await refresh(http_client, base_url, token, {"ttl": 60})
    assert response.code == 200
    assert json.loads(response.body)["expires_in"] == 60


@pytest.mark.gen_test
@pytest.mark.parametrize("authorization", [None, "Bearer a.b.c", basic()])
async def test_refresh_without_a_session_token_is_401(
    http_client: Any, base_url: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await fetch(http_client, base_url + "/sessions/refresh", method="POST",
                           headers=headers, body="")
    assert response.code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="tokensvc"')


# -- revocation ----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_revoke_by_token(http_client: Any, base_url: str) -> None:
    session = await issue(http_client, base_url)
    refreshed = json.loads((await refresh(http_client, base_url, session["access_token"])).body)
    response = await revoke(http_client, base_url, {"token": session["access_token"]})
    assert response.code == 200
    assert json.loads(response.body) == {"revoked": True}
    assert await whoami(http_client, base_url, session["access_token"]) == 401
    # The whole session goes, including the token the refresh gave.
    assert await whoami(http_client, base_url, refreshed["access_token"]) == 401


@pytest.mark.gen_test
async def test_revoke_by_session_id(http_client: Any, base_url: str) -> None:
    session = await issue(http_client, base_url)
    keep = await issue(http_client, base_url)
    response = await revoke(http_client, base_url, {"session_id": session["session_id"]})
    assert response.code == 200
    assert await whoami(http_client, base_url, session["access_token"]) == 401
    assert await whoami(http_client, base_url, keep["access_token"]) == 200


@pytest.mark.gen_test
async def test_revoke_by_secret_key_id(http_client: Any, base_url: str) -> None:
    demo = await issue(http_client, base_url, user="alice")
    team = await issue(http_client, base_url, secret_key_id="team-x", user="alice")
    response = await revoke(http_client, base_url, {"secret_key_id": "demo"})
    assert response.code == 200
    assert await whoami(http_client, base_url, demo["access_token"]) == 401
    assert await whoami(http_client, base_url, team["access_token"]) == 200


@pytest.mark.gen_test
async def test_revoke_by_user(http_client: Any, base_url: str) -> None:
    alice = await issue(http_client, base_url, user="alice")
    bob = await issue(http_client, base_url, user="bob")
    response = await revoke(http_client, base_url, {"user": "alice"})
    assert response.code == 200
    assert await whoami(http_client, base_url, alice["access_token"]) == 401
    assert await whoami(http_client, base_url, bob["access_token"]) == 200


@pytest.mark.gen_test
async def test_token_issued_after_a_user_revocation_still_works(
    http_client: Any, base_url: str, clock: FakeClock
) -> None:
    before = await issue(http_client, base_url, user="alice")
    assert (await revoke(http_client, base_url, {"user": "alice"})).code == 200
    clock.advance(1)
    after = await issue(http_client, base_url, user="alice")
    assert await whoami(http_client, base_url, before["access_token"]) == 401
    assert await whoami(http_client, base_url, after["access_token"]) == 200
    assert (await revoke(http_client, base_url, {"secret_key_id": "demo"})).code == 200
    clock.advance(1)
    later = await issue(http_client, base_url, user="alice")
    assert await whoami(http_client, base_url, after["access_token"]) == 401
    assert await whoami(http_client, base_url, later["access_token"]) == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("kind", ["user", "secret_key_id"])
async def test_revocation_spares_a_session_issued_later_in_the_same_second(
    http_client: Any, base_url: str, clock: FakeClock, kind: str
) -> None:
    # All three moments share one whole second, so iat alone cannot order them.
    clock.now = 1_800_000_000.250
    before = await issue(http_client, base_url, user="alice")
    clock.now = 1_800_000_000.500
    value = "alice" if kind == "user" else "demo"
    assert (await revoke(http_client, base_url, {kind: value})).code == 200
    clock.now = 1_800_000_000.750
    after = await issue(http_client, base_url, user="alice")
    assert after["expires_at"] == before["expires_at"]  # whole seconds: the same exp
    assert await whoami(http_client, base_url, before["access_token"]) == 401
    assert await whoami(http_client, base_url, after["access_token"]) == 200


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"token": "x", "session_id": "y"},
        {"user": "alice", "secret_key_id": "demo"},
        {"session_id": "has space"},
        {"session_id": "abc\n"},
        {"session_id": 5},
        {"secret_key_id": "bad/id"},
        {"user": ""},
        {"user": None},
        {"token": 5},
        {"token": None},
        {"jti": "x"},
        [],
    ],
)
async def test_revoke_with_zero_two_or_bad_fields_is_400(
    http_client: Any, base_url: str, body: Any
) -> None:
    session = await issue(http_client, base_url, user="alice")
    response = await revoke(http_client, base_url, body)
    assert response.code == 400
    assert error_of(response) == "invalid_request"
    assert await whoami(http_client, base_url, session["access_token"]) == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("token", ["garbage", "", "a.b.c", "eyJhbGciOiJub25lIn0.e30.",
                                   "x" * 10_000])
async def test_revoke_unknown_or_garbage_token_is_200(
    http_client: Any, base_url: str, token: str
) -> None:
    response = await revoke(http_client, base_url, {"token": token})
    assert response.code == 200
    assert json.loads(response.body) == {"revoked": True}


@pytest.mark.gen_test
async def test_revoke_an_expired_token_is_200(
    http_client: Any, base_url: str, clock: FakeClock
) -> None:
    session = await issue(http_client, base_url, ttl=60)
    clock.advance(3600)
    response = await revoke(http_client, base_url, {"token": session["access_token"]})
    assert response.code == 200


@pytest.mark.gen_test
async def test_revoke_needs_client_authentication(http_client: Any, base_url: str) -> None:
    session = await issue(http_client, base_url)
    response = await fetch(http_client, base_url + "/sessions/revoke", method="POST",
                           headers={"Content-Type": "application/json"},
                           body=json.dumps({"token": session["access_token"]}))
    assert response.code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="tokensvc"'
    assert await whoami(http_client, base_url, session["access_token"]) == 200


@pytest.mark.gen_test
async def test_revoking_another_clients_token_is_unauthorized_and_revokes_nothing(
    http_client: Any, base_url: str
) -> None:
    theirs = await issue(http_client, base_url, OTHER)
    response = await revoke(http_client, base_url, {"token": theirs["access_token"]})
    assert response.code == 400
    assert error_of(response) == "unauthorized_client"
    assert await whoami(http_client, base_url, theirs["access_token"]) == 200


@pytest.mark.gen_test
async def test_scoped_revocations_never_touch_another_clients_tokens(
    http_client: Any, base_url: str
) -> None:
    theirs = await issue(http_client, base_url, OTHER, user="alice")
    mine = await issue(http_client, base_url, user="alice")
    for body in (
        {"session_id": theirs["session_id"]},
        {"secret_key_id": "demo"},
        {"user": "alice"},
    ):
        response = await revoke(http_client, base_url, body)
        assert response.code == 200, body
        assert await whoami(http_client, base_url, theirs["access_token"]) == 200, body
    assert await whoami(http_client, base_url, mine["access_token"]) == 401


@pytest.mark.gen_test
@pytest.mark.parametrize("store", [DownStore(None)])
async def test_revoke_while_the_store_is_down_is_503_never_200(
    http_client: Any, base_url: str, store: Any
) -> None:
    session = await issue(http_client, base_url, user="alice")
    for body in (
        {"token": session["access_token"]},
        {"session_id": session["session_id"]},
        {"secret_key_id": "demo"},
        {"user": "alice"},
    ):
        response = await revoke(http_client, base_url, body)
        assert response.code == 503, body
        assert error_of(response) == "temporarily_unavailable"
        assert int(response.headers["Retry-After"]) >= 1
    ended = await fetch(http_client, base_url + "/sessions/current", method="DELETE",
                        headers={"Authorization": "Bearer " + session["access_token"]})
    assert ended.code == 503


@pytest.mark.gen_test
async def test_delete_current_session_is_204_then_401(http_client: Any, base_url: str) -> None:
    session = await issue(http_client, base_url)
    other = await issue(http_client, base_url)
    bearer = {"Authorization": "Bearer " + session["access_token"]}
    ended = await fetch(http_client, base_url + "/sessions/current", method="DELETE",
                        headers=bearer)
    assert ended.code == 204
    assert ended.body == b""
    assert await whoami(http_client, base_url, session["access_token"]) == 401
    again = await fetch(http_client, base_url + "/sessions/current", method="DELETE",
                        headers=bearer)
    assert again.code == 401
    assert (await refresh(http_client, base_url, session["access_token"])).code == 401
    assert await whoami(http_client, base_url, other["access_token"]) == 200
