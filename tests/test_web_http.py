"""BaseHandler behaviour over HTTP: security headers, CORS, JWKS, health, errors, fuzzing."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
import tornado.httputil
import tornado.iostream
import tornado.tcpclient

from tests.protected import ProbeExtension
from tests.support import (
    FakeProvider,
    basic,
    client,
    make_app,
    make_config,
    make_ring,
    make_services,
    signing_key,
)
from tests.test_sessions_http import fetch, new_session
from tokensvc.config import Config, ServerConfig
from tokensvc.revocation.memory import MemoryRevocationStore

EXACT_ORIGIN = "https://app.example.com"
LIMITED_ID = "limited"
LIMITED_SECRET = "limited-client-secret-0123456789"
CORE_PATHS = (
    "/sessions",
    "/sessions/refresh",
    "/sessions/ticket",
    "/sessions/current",
    "/sessions/revoke",
    "/.well-known/jwks.json",
    "/healthz",
    "/readyz",
    "/metrics",
)


def web_config() -> Config:
    base = make_config()
    return dataclasses.replace(
        base,
        server=dataclasses.replace(
            ServerConfig(), cors_origins=("vscode-webview://*", EXACT_ORIGIN)
        ),
        clients=(*base.clients, client(LIMITED_ID, LIMITED_SECRET, rate_limit=1)),
    )


class NotReadyStore(MemoryRevocationStore):
    """A store that has lost its sync: answers, but says it is not ready."""

    @property
    def ready(self) -> bool:
        return False


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def ring() -> Any:
    return make_ring(
        "ES256",
        signing_key("sig-0-retiring", state="retiring", created_at=-2),
        signing_key("sig-2-staged", state="staged", created_at=1),
        signing_key("sig-old-retired", state="retired", created_at=-3),
    )


@pytest.fixture
def store() -> Any:
    return MemoryRevocationStore(None)


@pytest.fixture
def app(io_loop: Any, provider: FakeProvider, ring: Any, store: Any) -> Any:
    services = make_services(config=web_config(), provider=provider, ring=ring, store=store)
    io_loop.run_sync(services.revocations.start)
    return make_app(services, [ProbeExtension()])


def assert_security_headers(response: Any) -> None:
    assert response.headers["Referrer-Policy"] == "no-referrer", response.code
    assert response.headers["X-Content-Type-Options"] == "nosniff", response.code


def assert_json_error(response: Any, code: str) -> None:
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert body["error"] == code
    assert isinstance(body["error_description"], str)
    assert set(body) == {"error", "error_description"}


def post_sessions(body: Any = None, **headers: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "method": "POST",
        "headers": {"Authorization": basic(), **headers},
        "body": {"secret_key_id": "demo"} if body is None else body,
    }
    return kwargs


# -- security headers ----------------------------------------------------------------


@pytest.mark.gen_test
async def test_security_headers_on_every_response(
    http_client: Any, base_url: str, provider: FakeProvider
) -> None:
    session = await new_session(http_client, base_url)
    bearer = {"Authorization": "Bearer " + session["access_token"]}
    seen: dict[int, Any] = {}

    async def record(expected: int, path: str, **kwargs: Any) -> None:
        response = await fetch(http_client, base_url + path, **kwargs)
        assert response.code == expected, (path, response.body)
        assert_security_headers(response)
        seen[expected] = response

    await record(200, "/healthz")
    await record(200, "/probe/whoami", headers=bearer)
    await record(401, "/sessions", method="POST", body={"secret_key_id": "demo"})
    await record(401, "/probe/whoami", headers={"Authorization": "Bearer x.y.z"})
    await record(404, "/no/such/route")
    await record(405, "/sessions")
    await record(413, "/sessions", **post_sessions(body='{"a": "' + "x" * 70_000 + '"}',
                                                   **{"Content-Type": "application/json"}))
    await record(415, "/sessions", **post_sessions(body="secret_key_id=demo",
                                                   **{"Content-Type": "text/plain"}))
    limited = {"Authorization": basic(LIMITED_ID, LIMITED_SECRET)}
    await record(200, "/sessions", method="POST", headers=limited,
                 body={"secret_key_id": "demo"})
    await record(429, "/sessions", method="POST", headers=limited,
                 body={"secret_key_id": "demo"})
    assert int(seen[429].headers["Retry-After"]) >= 1
    provider.fail = True
    await record(503, "/sessions", **post_sessions())
    assert int(seen[503].headers["Retry-After"]) >= 1
    await record(204, "/sessions/current", method="DELETE", headers=bearer)
    assert set(seen) == {200, 204, 401, 404, 405, 413, 415, 429, 503}


@pytest.mark.gen_test
async def test_token_responses_are_never_cached(http_client: Any, base_url: str) -> None:
    created = await fetch(http_client, base_url + "/sessions", **post_sessions())
    assert created.code == 200
    bearer = {"Authorization": "Bearer " + json.loads(created.body)["access_token"]}
    refreshed = await fetch(http_client, base_url + "/sessions/refresh", method="POST",
                            headers=bearer, body="")
    ticket = await fetch(http_client, base_url + "/sessions/ticket", method="POST",
                         headers=bearer, body="")
    for response in (created, refreshed, ticket):
        assert response.code == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Pragma"] == "no-cache"
    failed = await fetch(http_client, base_url + "/sessions/refresh", method="POST",
                         headers={"Authorization": "Bearer a.b.c"}, body="")
    assert failed.code == 401
    assert failed.headers["Cache-Control"] == "no-store"


# -- CORS ----------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("origin", [EXACT_ORIGIN, "vscode-webview://abc123"])
async def test_allowed_origin_is_echoed_with_vary(
    http_client: Any, base_url: str, origin: str
) -> None:
    for path, kwargs in (
        ("/healthz", {}),
        ("/sessions", {"method": "POST", "body": {"secret_key_id": "demo"}}),  # 401
        ("/no/such/route", {}),
    ):
        response = await fetch(http_client, base_url + path, headers={"Origin": origin},
                               **kwargs)
        assert response.headers["Access-Control-Allow-Origin"] == origin, path
        assert "Origin" in [v.strip() for v in response.headers["Vary"].split(",")]
        assert "*" not in response.headers.get_list("Access-Control-Allow-Origin")


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "origin",
    [
        "http://vscode-webview.evil.com",
        "https://vscode-webview.evil.com",
        "null",
        "vscode-webview://",
        "https://evil.com",
        "https://app.example.com.evil.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "vscode-webview://abc/path",
        "vscode-webview://abc def",
        "*",
        "",
    ],
)
async def test_lookalike_origins_get_no_cors_headers(
    http_client: Any, base_url: str, origin: str
) -> None:
    plain = await fetch(http_client, base_url + "/healthz", headers={"Origin": origin})
    preflight = await fetch(
        http_client,
        base_url + "/sessions",
        method="OPTIONS",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    for response in (plain, preflight):
        assert response.code < 500
        assert not [name for name in response.headers if name.lower().startswith("access-control")]


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/sessions", "/sessions/refresh", "/probe/events"])
async def test_preflight_for_an_allowed_origin(http_client: Any, base_url: str, path: str) -> None:
    origin = "vscode-webview://abc123"
    response = await fetch(
        http_client,
        base_url + path,
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] == origin
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "DELETE"} <= methods
    assert response.headers["Access-Control-Allow-Headers"] == (
        "Authorization, Content-Type, Last-Event-ID"
    )
    assert "Origin" in response.headers["Vary"]
    assert_security_headers(response)


# -- JWKS ----------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_jwks_publishes_public_signing_keys_only(http_client: Any, base_url: str) -> None:
    response = await fetch(http_client, base_url + "/.well-known/jwks.json")
    assert response.code == 200
    keys = json.loads(response.body)["keys"]
    assert {k["kid"] for k in keys} == {"sig-0-retiring", "sig-1", "sig-2-staged"}
    for key in keys:
        assert key["kty"] == "EC"
        assert key["alg"] == "ES256"
        assert key["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key)
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert response.headers["ETag"].startswith('"')
    assert_security_headers(response)


@pytest.mark.gen_test
async def test_jwks_answers_304_for_a_matching_etag(http_client: Any, base_url: str) -> None:
    first = await fetch(http_client, base_url + "/.well-known/jwks.json")
    etag = first.headers["ETag"]
    for condition in (etag, "W/" + etag, f'"other", {etag}', "*"):
        again = await fetch(http_client, base_url + "/.well-known/jwks.json",
                            headers={"If-None-Match": condition})
        assert again.code == 304, condition
        assert again.body == b""
        assert again.headers["ETag"] == etag
    changed = await fetch(http_client, base_url + "/.well-known/jwks.json",
                          headers={"If-None-Match": '"stale"'})
    assert changed.code == 200
    assert changed.body == first.body


# -- health, readiness, metrics ------------------------------------------------------


@pytest.mark.gen_test
async def test_healthz_and_readyz(http_client: Any, base_url: str) -> None:
    health = await fetch(http_client, base_url + "/healthz")
    assert health.code == 200
    assert json.loads(health.body) == {"status": "ok"}
    ready = await fetch(http_client, base_url + "/readyz")
    assert ready.code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("store", [NotReadyStore(None)])
async def test_readyz_is_503_when_the_store_is_not_in_sync(
    http_client: Any, base_url: str, store: Any
) -> None:
    response = await fetch(http_client, base_url + "/readyz")
    assert response.code == 503
    assert response.headers["Retry-After"]
    assert json.loads(response.body)["error"] == "temporarily_unavailable"
    assert (await fetch(http_client, base_url + "/healthz")).code == 200


@pytest.mark.gen_test
async def test_metrics_are_prometheus_text(http_client: Any, base_url: str) -> None:
    await new_session(http_client, base_url)
    response = await fetch(http_client, base_url + "/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.body.decode()
    assert "# TYPE tokensvc_tokens_issued_total counter" in text
    assert 'tokensvc_tokens_issued_total{kind="session"} 1' in text.splitlines()
    # Counted when each request is logged: the POST /sessions above was.
    assert 'tokensvc_http_requests_total{code="200"} 1' in text.splitlines()
    for line in text.splitlines():
        assert line.startswith("# ") or line.startswith("tokensvc_"), line


# -- error bodies --------------------------------------------------------------------


@pytest.mark.gen_test
async def test_unknown_path_is_a_json_404(http_client: Any, base_url: str) -> None:
    for method in ("GET", "POST", "DELETE"):
        response = await fetch(http_client, base_url + "/nope", method=method,
                               body="" if method == "POST" else None)
        assert response.code == 404
        assert_json_error(response, "not_found")


@pytest.mark.gen_test
async def test_wrong_method_is_a_json_405_with_allow(http_client: Any, base_url: str) -> None:
    session = await new_session(http_client, base_url)
    # A protected route authenticates first (prepare), then answers the method.
    bearer = {"Authorization": "Bearer " + session["access_token"]}
    for path, method in (("/sessions", "GET"), ("/healthz", "POST"),
                         ("/sessions/current", "POST"), ("/sessions/refresh", "GET"),
                         ("/.well-known/jwks.json", "DELETE")):
        response = await fetch(http_client, base_url + path, method=method, headers=bearer,
                               body="" if method == "POST" else None)
        assert response.code == 405, path
        assert_json_error(response, "method_not_allowed")
        assert method not in response.headers["Allow"]


# -- fuzzing: no input is a 500 ------------------------------------------------------


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(header: Any, payload: Any = None) -> str:
    body = {"sub": "x"} if payload is None else payload
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(body).encode())}.c2ln"


BODIES: list[bytes] = [
    b"",
    b"{",
    b"not json",
    b"[]",
    b"[1, 2]",
    b"null",
    b'"string"',
    b"42",
    b"[" * 10_000 + b"]" * 10_000,
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b"\xff\xfe\xfd",
    b'{"secret_key_id": "\xff\xfe"}',
    b"\xef\xbb\xbf{}",
    b"\x00" * 100,
    b'{"secret_key_id": ' + b"9" * 5000 + b"}",
    b'{"secret_key_id": "' + b"a" * 60_000 + b'"}',
    b'{"secret_key_id": "demo", "ttl": 1e400}',
    b'{"secret_key_id": "demo", "ttl": NaN}',
    b'{"secret_key_id": "demo", "ttl": -Infinity}',
    b'{"secret_key_id": "demo", "ttl": ' + b"1" * 4000 + b"}",
    b'{"secret_key_id": {"a": 1}}',
    b'{"secret_key_id": ["demo"]}',
    b'{"secret_key_id": "demo", "user": {"x": []}}',
    b'{"secret_key_id": "demo", "scope": ["chatkit"]}',
    b'{"secret_key_id": "demo\\u0000"}',
    b'{"token": 1}',
    b'{"token": "a.b.c"}',
    b'{"token": "' + forged({"kid": ["sig-1"], "alg": "ES256", "typ": "at+jwt"}).encode() + b'"}',
    b'{"session_id": null}',
    b'{"user": 12}',
    b'{"secret_key_id": "demo", "secret_key_id": 1}',
    b'{"ttl": "60"}',
    b'{"ttl": 10.0}',
    b'{"__proto__": {}}',
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-16",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=zzz",
    "application/json\tjunk",
    "application/problem+json",
]
BAD_AUTHORIZATIONS = [
    "",
    "Basic",
    "Basic ===",
    "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
    "Basic " + base64.b64encode(b"%zz:%ff").decode(),
    "Basic " + "A" * 20_000,
    "Bearer",
    "Bearer a.b.c",
    "Bearer ...",
    "Bearer " + "a" * 9000 + ".b.c",
    "Bearer " + forged([]),
    "Bearer " + forged("header"),
    "Bearer " + forged({"kid": ["sig-1"], "alg": "ES256", "typ": "at+jwt"}),
    "Bearer " + forged({"kid": {"a": 1}, "alg": ["ES256"], "typ": 1}),
    "Bearer " + forged({"kid": "sig-1", "alg": "ES256", "typ": ["at+jwt"]}),
    "Bearer " + forged({"kid": "sig-1", "alg": "none", "typ": "at+jwt"}),
    "Bearer " + forged({"kid": "sig-1", "alg": "ES256", "typ": "at+jwt"}, []),
    "Bearer " + forged({"kid": "sig-1", "alg": "ES256", "typ": "at+jwt", "crit": ["x"]}),
    "Bearer " + b64url(b"\xff\xfe") + ".e30.c2ln",
    "Bearer a.b.c d.e.f",
    "Négociate ünïcode",
    "Basic ÿþ",
    "Bearer ÿ.þ.ý",
    "Digest username=x",
]


BODY_PATHS = ("/sessions", "/sessions/revoke", "/sessions/refresh")


def json_error_or_success(response: Any) -> None:
    assert response.code < 500, (response.code, response.body)
    if response.code >= 400:
        body = json.loads(response.body)
        assert isinstance(body.get("error"), str)


@pytest.mark.gen_test(timeout=60)
async def test_malformed_bodies_never_cause_a_500(
    http_client: Any, base_url: str, http_port: int
) -> None:
    session = await new_session(http_client, base_url)
    bearer = "Bearer " + session["access_token"]
    cases = [
        # Every body, JSON-typed, where bodies are parsed...
        (path, body, content_type)
        for path in BODY_PATHS
        for body in BODIES
        for content_type in CONTENT_TYPES[:2]
    ] + [
        # ...a few under every content type there...
        (path, body, content_type)
        for path in BODY_PATHS
        for body in (BODIES[1], BODIES[8], BODIES[10])
        for content_type in CONTENT_TYPES[2:]
    ] + [
        # ...and on every other route.
        (path, body, content_type)
        for path in (*CORE_PATHS, "/probe/whoami")
        if path not in BODY_PATHS
        for body in (BODIES[8], BODIES[10])
        for content_type in (CONTENT_TYPES[0], CONTENT_TYPES[4])
    ]
    origin = f"http://127.0.0.1:{http_port}"  # no name lookup per request: keeps it fast
    for path, body, content_type in cases:
        # Valid credentials, so the body is really parsed past authentication.
        auth = basic() if path in ("/sessions", "/sessions/revoke") else bearer
        response = await fetch(
            http_client,
            origin + path,
            method="POST",
            headers={"Authorization": auth, "Content-Type": content_type},
            body=body,
        )
        json_error_or_success(response)
    # Nothing in there revoked the session by accident.
    still = await fetch(http_client, base_url + "/probe/whoami",
                        headers={"Authorization": bearer})
    assert still.code == 200


WEIRD_PATHS = [
    "/probe/events?access_token=%ff%fe",
    "/probe/events?access_token=a&access_token=b",
    "/probe/events?access_token=" + forged({"kid": 1}),
    "/sessions%00",
    "/%ff%fe",
    "/sessions/../sessions",
    "//sessions",
    "/" + "a" * 6000,
    "/sessions?" + "x=1&" * 900,  # Tornado itself refuses more than 1000 arguments
    "/.well-known/jwks.json?%ff=%fe",
]
AUTHENTICATED = [
    ("/sessions", "POST"),
    ("/sessions/revoke", "POST"),
    ("/sessions/refresh", "POST"),
    ("/sessions/ticket", "POST"),
    ("/sessions/current", "DELETE"),
    ("/probe/whoami", "GET"),
    ("/probe/events", "GET"),
]


@pytest.mark.gen_test(timeout=60)
async def test_malformed_headers_and_paths_never_cause_a_500(
    http_client: Any, http_port: int
) -> None:
    cases = [(path, method, auth) for path, method in AUTHENTICATED
             for auth in BAD_AUTHORIZATIONS]
    cases += [(path, method, "Bearer a.b.c") for path in (*CORE_PATHS, *WEIRD_PATHS)
              for method in ("GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD")]
    origin = f"http://127.0.0.1:{http_port}"
    for path, method, authorization in cases:
        headers = tornado.httputil.HTTPHeaders(
            {"Content-Type": "application/json", "Origin": "vscode-webview://x"}
        )
        if authorization:
            headers.add("Authorization", authorization)
        response = await fetch(
            http_client,
            origin + path,
            method=method,
            headers=headers,
            body="{}" if method in ("POST", "PUT", "PATCH") else None,
            allow_nonstandard_methods=True,
        )
        assert response.code < 500, (path, method, authorization, response.body)
        assert_security_headers(response)
    twice = tornado.httputil.HTTPHeaders()
    twice.add("Authorization", basic())
    twice.add("Authorization", "Bearer a.b.c")
    for path, method in AUTHENTICATED:
        response = await fetch(http_client, origin + path, method=method, headers=twice,
                               body="{}" if method == "POST" else None)
        assert response.code < 500, path


RAW_REQUESTS = [
    b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nOrigin: vscode-webview://\xff\r\n\r\n",
    b"GET /probe/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff.\xfe.\xfd\r\n\r\n",
    b"POST /sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \xff\xfe\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\xff\r\n"
    b"Authorization: " + basic().encode() + b"\r\nContent-Length: 4\r\n\r\n\xff\xfe\xfd\xfc",
    b"POST /sessions/revoke HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic().encode()
    + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n",
]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("raw", RAW_REQUESTS)
async def test_raw_non_utf8_requests_never_cause_a_500(
    http_client: Any, base_url: str, http_port: int, raw: bytes
) -> None:
    stream = await tornado.tcpclient.TCPClient().connect("127.0.0.1", http_port)
    try:
        await stream.write(raw)
        status_line = await stream.read_until(b"\r\n", max_bytes=1024)
    except tornado.iostream.StreamClosedError:
        status_line = b""  # refused without an answer: acceptable, not a 500
    finally:
        stream.close()
    assert not status_line.startswith(b"HTTP/1.1 5"), status_line
