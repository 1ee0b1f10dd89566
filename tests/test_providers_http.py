"""HttpSecretProvider against a real Tornado server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.web
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from tornado.testing import bind_unused_port

from tokensvc.config import SecretsConfig
from tokensvc.errors import ConfigError, ProviderUnavailable, UnknownSecret
from tokensvc.providers import HttpSecretProvider, SingleFlightProvider, make_provider
from tokensvc.providers.http import MAX_RESPONSE_SIZE
from tokensvc.redacted import Secret

# Generous for answers that do come (a loaded machine can be slow to connect), short for the
# server that never answers.
TIMEOUT = 5.0
SHORT_TIMEOUT = 0.2
# How long a call that must end by its SHORT_TIMEOUT may take on a busy machine; without
# that timeout it would never end.
WAIT = 10.0
LEAK = "sk-leaked-in-body"


class Holder:
    """What the fake secret holder saw."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.redirect_hits = 0


class SecretHandler(tornado.web.RequestHandler):
    """Answers according to the requested id, so one server covers every case."""

    def initialize(self, holder: Holder) -> None:
        self.holder = holder

    def post(self) -> None:
        body = json.loads(self.request.body)
        self.holder.requests.append(
            {
                "body": body,
                "authorization": self.request.headers.get("Authorization"),
                "content_type": self.request.headers.get("Content-Type"),
            }
        )
        secret_key_id = body["secret_key_id"]
        if secret_key_id == "missing":
            self.set_status(404)
            self.finish({"error": f"no such id, by the way {LEAK}"})
        elif secret_key_id == "boom":
            self.set_status(500)
            self.finish(f"Traceback ... {LEAK}")
        elif secret_key_id == "teapot":
            self.set_status(418)
            self.finish({"secret": LEAK})
        elif secret_key_id == "redirect":
            self.redirect("/elsewhere")
        elif secret_key_id in BODIES:
            self.set_header("Content-Type", "application/json")
            self.finish(BODIES[secret_key_id])
        else:
            self.finish({"secret": f"sk-{secret_key_id}", "expires_in": 60})


class RedirectTarget(tornado.web.RequestHandler):
    def initialize(self, holder: Holder) -> None:
        self.holder = holder

    def post(self) -> None:
        self.holder.redirect_hits += 1
        self.finish({"secret": LEAK})

    get = post


BODIES = {
    "badjson": f"not json {LEAK}",
    "nofield": json.dumps({"value": LEAK}),
    "empty": json.dumps({"secret": ""}),
    "number": json.dumps({"secret": 42}),
    "array": json.dumps([{"secret": LEAK}]),
    "nested": "[" * 50_000,
    "huge": json.dumps({"secret": "x" * (MAX_RESPONSE_SIZE + 1)}),
}


@pytest.fixture
def holder() -> Holder:
    return Holder()


@pytest.fixture
def app(holder: Holder) -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/secret", SecretHandler, {"holder": holder}),
            (r"/elsewhere", RedirectTarget, {"holder": holder}),
        ]
    )


@pytest.fixture
def url(http_server: object, http_port: int) -> str:
    return f"http://127.0.0.1:{http_port}/secret"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (kernel backlog) and never answers."""
    sock, port = bind_unused_port()
    try:
        yield port
    finally:
        sock.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.gen_test
async def test_200_with_secret_resolves(url: str, holder: Holder) -> None:
    provider = HttpSecretProvider(url, None, TIMEOUT)
    try:
        assert await provider.resolve("prod.openai") == Secret("sk-prod.openai")
    finally:
        await provider.close()
    [request] = holder.requests
    assert request["body"] == {"secret_key_id": "prod.openai"}
    assert request["content_type"] == "application/json"


@pytest.mark.gen_test
async def test_bearer_header_sent_when_auth_is_set(url: str, holder: Holder) -> None:
    provider = HttpSecretProvider(url, Secret("holder-token"), TIMEOUT)
    try:
        await provider.resolve("prod")
    finally:
        await provider.close()
    assert holder.requests[0]["authorization"] == "Bearer holder-token"


@pytest.mark.gen_test
async def test_no_authorization_header_without_auth(url: str, holder: Holder) -> None:
    provider = HttpSecretProvider(url, None, TIMEOUT)
    try:
        await provider.resolve("prod")
    finally:
        await provider.close()
    assert holder.requests[0]["authorization"] is None


@pytest.mark.gen_test
async def test_404_is_unknown_secret(url: str) -> None:
    provider = HttpSecretProvider(url, None, TIMEOUT)
    try:
        with pytest.raises(UnknownSecret) as caught:
            await provider.resolve("missing")
    finally:
        await provider.close()
    assert LEAK not in str(caught.value)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "secret_key_id",
    ["boom", "teapot", "badjson", "nofield", "empty", "number", "array", "nested", "huge"],
)
async def test_anything_but_200_with_a_secret_is_unavailable_and_never_echoes_the_body(
    url: str, secret_key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = HttpSecretProvider(url, None, TIMEOUT)
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.resolve(secret_key_id)
    finally:
        await provider.close()
    assert LEAK not in str(caught.value)
    assert LEAK not in repr(caught.value.__cause__)
    assert LEAK not in caplog.text


@pytest.mark.gen_test
async def test_redirect_is_not_followed(url: str, holder: Holder) -> None:
    provider = HttpSecretProvider(url, Secret("holder-token"), TIMEOUT)
    try:
        with pytest.raises(ProviderUnavailable, match="HTTP 302"):
            await provider.resolve("redirect")
    finally:
        await provider.close()
    assert holder.redirect_hits == 0


@pytest.mark.gen_test(timeout=3 * WAIT)
async def test_silent_server_times_out(silent_port: int) -> None:
    provider = HttpSecretProvider(f"http://127.0.0.1:{silent_port}/secret", None, SHORT_TIMEOUT)
    try:
        with pytest.raises(ProviderUnavailable, match="Timeout"):
            await asyncio.wait_for(provider.resolve("prod"), WAIT)
    finally:
        await provider.close()


@pytest.mark.gen_test(timeout=3 * WAIT)
async def test_silent_server_behind_single_flight_answers_by_the_deadline(
    silent_port: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetches: list[asyncio.Future[Any]] = []
    original_fetch = SimpleAsyncHTTPClient.fetch

    def recording_fetch(self: SimpleAsyncHTTPClient, *args: Any, **kwargs: Any) -> Any:
        future = original_fetch(self, *args, **kwargs)
        fetches.append(future)
        return future

    monkeypatch.setattr(SimpleAsyncHTTPClient, "fetch", recording_fetch)
    url = f"http://127.0.0.1:{silent_port}/secret"
    provider = make_provider(SecretsConfig(provider="http", url=url, timeout=SHORT_TIMEOUT))
    try:
        with pytest.raises(ProviderUnavailable):
            await asyncio.wait_for(provider.resolve("prod"), WAIT)
        # The abandoned request ends by its own timeout (asyncio.wait retrieves no outcome);
        # once it is collected, nothing may have been logged as an error.
        assert len(fetches) == 1
        await asyncio.wait_for(asyncio.wait(fetches), WAIT)
        fetches.clear()
        gc.collect()
    finally:
        await provider.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.gen_test
async def test_connection_refused_is_unavailable(closed_port: int) -> None:
    provider = HttpSecretProvider(f"http://127.0.0.1:{closed_port}/secret", None, TIMEOUT)
    try:
        with pytest.raises(ProviderUnavailable):
            await provider.resolve("prod")
    finally:
        await provider.close()


@pytest.mark.gen_test
async def test_client_is_recreated_after_close(url: str) -> None:
    provider = HttpSecretProvider(url, None, TIMEOUT)
    await provider.resolve("one")
    await provider.close()
    try:
        assert (await provider.resolve("two")).reveal() == "sk-two"
    finally:
        await provider.close()


@pytest.mark.parametrize(
    ("url", "auth", "timeout", "problem"),
    [
        ("ftp://holder.example/secret", None, 1.0, "url"),
        ("holder.example/secret", None, 1.0, "url"),
        ("https://user:pw@holder.example/secret", None, 1.0, "credentials"),
        ("https://holder.example/secret", Secret("tok\r\nX-Evil: 1"), 1.0, "auth"),
        ("https://holder.example/secret", Secret(" tok"), 1.0, "auth"),
        ("https://holder.example/secret", None, 0.0, "timeout"),
        ("https://holder.example/secret", None, float("inf"), "timeout"),
    ],
)
def test_constructor_rejects_unsafe_settings(
    url: str, auth: Secret | None, timeout: float, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        HttpSecretProvider(url, auth, timeout)


def test_repr_hides_auth_and_query() -> None:
    provider = HttpSecretProvider("https://holder.example/secret?key=q-key", Secret("tok"), 1.0)
    text = repr(provider)
    assert "holder.example/secret" in text
    assert "q-key" not in text
    assert "tok'" not in text
    assert "Secret('***')" in text


def test_plain_http_to_a_remote_host_warns(caplog: pytest.LogCaptureFixture) -> None:
    HttpSecretProvider("http://holder.example/secret", None, 1.0)
    HttpSecretProvider("http://127.0.0.1:9/secret", None, 1.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "holder.example" in warnings[0].getMessage()


@pytest.mark.gen_test
async def test_make_provider_builds_the_http_provider_behind_single_flight(
    url: str, holder: Holder
) -> None:
    config = SecretsConfig(provider="http", url=url, auth="holder-token", timeout=TIMEOUT)
    provider = make_provider(config)
    assert isinstance(provider, SingleFlightProvider)
    assert isinstance(provider.inner, HttpSecretProvider)
    try:
        assert (await provider.resolve("prod")).reveal() == "sk-prod"
    finally:
        await provider.close()
    assert holder.requests[0]["authorization"] == "Bearer holder-token"


@pytest.mark.gen_test
async def test_make_provider_sends_no_header_for_empty_auth(url: str, holder: Holder) -> None:
    provider = make_provider(SecretsConfig(provider="http", url=url, auth="", timeout=TIMEOUT))
    try:
        await provider.resolve("prod")
    finally:
        await provider.close()
    assert holder.requests[0]["authorization"] is None


def test_make_provider_names_the_bad_key() -> None:
    config = SecretsConfig(provider="http", url="https://holder.example/", auth="a\nb")
    with pytest.raises(ConfigError, match=r"^\[secrets\] auth"):
        make_provider(config)
