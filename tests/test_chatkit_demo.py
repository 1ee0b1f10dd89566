"""The demo routes and the browser client's static files."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.web

from tests.chatkit_support import chatkit_config, fetch, start_extension
from tests.support import UPSTREAM_SECRET, FakeProvider, client, make_services
from tokensvc import Services, make_app
from tokensvc.config import ServerConfig


def demo_services(*, patterns: tuple[str, ...] = ("*",), secrets: dict[str, str] | None = None,
                  upstream_url: str = "echo") -> Services:
    config = chatkit_config(upstream_url)
    config = dataclasses.replace(
        config,
        server=dataclasses.replace(ServerConfig(), demo=True),
        clients=(client("extension", "extension-secret-0123456789", patterns, rate_limit=3),),
    )
    return make_services(config=config, provider=FakeProvider(secrets))


@pytest.fixture
def services(io_loop: Any, request: pytest.FixtureRequest) -> Services:
    options = getattr(request, "param", {})
    built = demo_services(**options)
    io_loop.run_sync(built.revocations.start)
    return built


@pytest.fixture
def app(io_loop: Any, services: Services) -> Iterator[tornado.web.Application]:
    extension = io_loop.run_sync(lambda: start_extension(services))
    yield make_app(services, [extension])
    io_loop.run_sync(extension.close)


async def demo_session(http_client: Any, base_url: str, **headers: str) -> Any:
    return await fetch(http_client, base_url + "/chatkit/demo/session", method="POST",
                       body="", headers=headers)


@pytest.mark.gen_test
async def test_demo_session_goes_through_the_session_checks(
    http_client: Any, base_url: str, services: Services
) -> None:
    response = await demo_session(http_client, base_url)
    assert response.code == 200
    body = json.loads(response.body)
    assert set(body) == {"access_token", "token_type", "expires_in", "expires_at",
                         "session_id", "scope"}
    assert response.headers["Cache-Control"] == "no-store"
    assert services.provider.calls == ["demo"]  # type: ignore[attr-defined]
    claims = services.verifier.verify(body["access_token"], "session")
    assert services.sealer.unseal(claims.sealed or "", jti=claims.jti,
                                  audience=claims.aud).reveal() == UPSTREAM_SECRET


@pytest.mark.parametrize("services", [{"patterns": ("team-*",)}], indirect=True)
@pytest.mark.gen_test
async def test_demo_session_respects_the_clients_allowed_ids(
    http_client: Any, base_url: str, services: Services
) -> None:
    response = await demo_session(http_client, base_url)
    assert response.code == 400
    assert json.loads(response.body)["error"] == "unauthorized_client"
    assert services.provider.calls == []  # type: ignore[attr-defined]


@pytest.mark.gen_test
async def test_demo_session_respects_the_clients_rate_limit(
    http_client: Any, base_url: str
) -> None:
    codes = [(await demo_session(http_client, base_url)).code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


@pytest.mark.parametrize("services", [{"secrets": {}}], indirect=True)
@pytest.mark.gen_test
async def test_demo_with_echo_seals_a_placeholder_when_the_holder_has_no_demo_secret(
    http_client: Any, base_url: str, services: Services
) -> None:
    assert (await demo_session(http_client, base_url)).code == 200
    assert services.provider.calls == ["demo"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("services", [{"secrets": {}, "upstream_url": "http://127.0.0.1:9/v1"}],
                         indirect=True)
@pytest.mark.gen_test
async def test_demo_with_a_real_upstream_needs_a_real_demo_secret(
    http_client: Any, base_url: str, services: Services
) -> None:
    response = await demo_session(http_client, base_url)
    assert response.code == 400
    assert json.loads(response.body)["error"] == "invalid_grant"


@pytest.mark.parametrize("headers", [
    {"Host": "attacker.example"},
    {"Host": "127.0.0.1.nip.io"},
    {"Origin": "http://attacker.example"},
])
@pytest.mark.gen_test
async def test_demo_refuses_requests_for_a_non_loopback_host_or_origin(
    http_client: Any, base_url: str, services: Services, headers: dict[str, str]
) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 but names its own host."""
    response = await demo_session(http_client, base_url, **headers)
    assert response.code == 404
    assert services.provider.calls == []  # type: ignore[attr-defined]
    page = await fetch(http_client, base_url + "/chatkit/demo", headers=headers)
    assert page.code == 404


@pytest.mark.gen_test
async def test_demo_page_is_served_to_localhost(http_client: Any, base_url: str) -> None:
    page = await fetch(http_client, base_url + "/chatkit/demo",
                       headers={"Host": "localhost", "Origin": "http://localhost:8765"})
    assert page.code == 200
    assert b"tokensvc-chat.js" in page.body
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


@pytest.mark.gen_test
async def test_static_files_have_security_headers_and_json_errors(
    http_client: Any, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    script = await fetch(http_client, base_url + "/chatkit/static/tokensvc-chat.js")
    assert script.code == 200
    assert script.headers["Referrer-Policy"] == "no-referrer"
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    caplog.set_level(logging.DEBUG)
    missing = await fetch(http_client,
                          base_url + "/chatkit/static/nope.js?client_secret=hunter2-secret")
    assert missing.code == 404
    assert json.loads(missing.body)["error"] == "not_found"
    assert missing.headers["X-Content-Type-Options"] == "nosniff"
    escape = await fetch(http_client, base_url + "/chatkit/static/..%2f..%2fdemo.py")
    assert escape.code in (403, 404)
    assert json.loads(escape.body)["error"] in ("forbidden", "not_found")
    assert "hunter2-secret" not in caplog.text


@pytest.mark.gen_test
async def test_demo_page_names_an_icon_that_is_served(http_client: Any, base_url: str) -> None:
    """Without a named icon the browser asks for /favicon.ico, a 404 in the page's console."""
    page = await fetch(http_client, base_url + "/chatkit/demo")
    assert b'<link rel="icon" href="/chatkit/static/favicon.svg"' in page.body
    icon = await fetch(http_client, base_url + "/chatkit/static/favicon.svg")
    assert icon.code == 200
    assert icon.headers["Content-Type"] == "image/svg+xml"
    assert icon.body.startswith(b"<svg ")
