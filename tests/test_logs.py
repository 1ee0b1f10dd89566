"""Logs never carry a token, ticket, client secret or upstream secret."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

from tests.protected import ProbeExtension
from tests.support import (
    CLIENT_SECRET,
    UPSTREAM_SECRET,
    FakeProvider,
    basic,
    make_app,
    make_services,
)
from tests.test_sessions_http import fetch, new_session
from tokensvc.logs import JsonFormatter, RedactingFormatter, configure_logging, mask_uri, redact

# Shaped like a real compact JWS (header {"alg":"ES256","typ":"at+jwt"}).
FAKE_JWT = (
    "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9"
    ".eyJzdWIiOiJhbGljZSIsInNpZCI6InMxIn0"
    ".MEUCIQDx7q1Lx0v1f9h3AbCdEfGhIjKlMnOpQrStUvWxYz0123"
)


# -- mask_uri ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "access_token",
        "ACCESS_TOKEN",
        "token",
        "refresh_token",
        "api_key",
        "apiKey",
        "key",
        "client_secret",
        "Authorization",
        "auth",
        "code",
        "auth_code",
        "id_token_hint",
    ],
)
def test_mask_uri_masks_credential_like_params(name: str) -> None:
    masked = mask_uri(f"/probe/events?{name}=s3cr3t-value&x=1")
    assert "s3cr3t-value" not in masked
    assert f"{name}=***" in masked
    assert "x=1" in masked


def test_mask_uri_keeps_other_params_and_paths() -> None:
    assert mask_uri("/chatkit/threads?limit=10&after=abc") == (
        "/chatkit/threads?limit=10&after=abc"
    )
    assert mask_uri("/healthz") == "/healthz"


def test_mask_uri_masks_repeated_and_encoded_names() -> None:
    masked = mask_uri("/e?access_token=one&access%5Ftoken=two&%61pi_key=three")
    for value in ("one", "two", "three"):
        assert value not in masked


def test_mask_uri_masks_params_after_a_semicolon() -> None:
    # Some clients still separate parameters with ";"; the value must not hide inside
    # another parameter's logged value.
    masked = mask_uri(f"/probe/events?x=1;access_token={FAKE_JWT}")
    assert FAKE_JWT not in masked
    assert "access_token=***" in masked


# -- redact --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"token {FAKE_JWT} rejected", FAKE_JWT),
        (f"Authorization: Bearer {FAKE_JWT}", FAKE_JWT),
        ("Authorization: Bearer opaque-bearer-credential-1234", "opaque-bearer-credential-1234"),
        ("authorization: basic ZXh0ZW5zaW9uOnNlY3JldA==", "ZXh0ZW5zaW9uOnNlY3JldA=="),
        (f"upstream said no to {UPSTREAM_SECRET}", UPSTREAM_SECRET),
        ("key=sk-proj-AbCdEf0123456789", "sk-proj-AbCdEf0123456789"),
    ],
)
def test_redact_removes_credentials(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_redact_keeps_ordinary_text() -> None:
    text = "401 invalid_token: token expired (GET /probe/whoami?access_token=***)"
    assert redact(text) == text


# -- formatters ----------------------------------------------------------------------


def exception_record() -> logging.LogRecord:
    try:
        raise ValueError(f"library choked on {FAKE_JWT} with Bearer {CLIENT_SECRET}")
    except ValueError:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "tokensvc.test", logging.ERROR, __file__, 1, "failed for %s", (UPSTREAM_SECRET,),
        exc_info,
    )


@pytest.mark.parametrize("secret", [FAKE_JWT, CLIENT_SECRET, UPSTREAM_SECRET])
def test_redacting_formatter_redacts_exception_traces(secret: str) -> None:
    text = RedactingFormatter("%(levelname)s %(message)s").format(exception_record())
    assert "ValueError" in text  # the trace is there...
    assert "Traceback" in text
    assert secret not in text  # ...without the credential


@pytest.mark.parametrize("secret", [FAKE_JWT, CLIENT_SECRET, UPSTREAM_SECRET])
def test_json_formatter_redacts_message_and_exception(secret: str) -> None:
    line = JsonFormatter().format(exception_record())
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert entry["logger"] == "tokensvc.test"
    assert "ValueError" in entry["exception"]
    assert secret not in line


def test_configure_logging_installs_a_redacting_formatter() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure_logging("json")
        assert isinstance(root.handlers[-1].formatter, JsonFormatter)
        configure_logging("text")
        assert isinstance(root.handlers[-1].formatter, RedactingFormatter)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


# -- over HTTP -----------------------------------------------------------------------


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def app(io_loop: Any, provider: FakeProvider) -> Any:
    services = make_services(provider=provider)
    io_loop.run_sync(services.revocations.start)
    return make_app(services, [ProbeExtension()])


@pytest.mark.gen_test
async def test_access_and_error_logs_carry_no_credentials(
    http_client: Any, base_url: str, caplog: pytest.LogCaptureFixture, provider: FakeProvider
) -> None:
    caplog.set_level(logging.DEBUG)
    token = (await new_session(http_client, base_url))["access_token"]
    bearer = {"Authorization": "Bearer " + token}

    # The token in the query of a route that ignores it, with and without the header.
    ignored = await fetch(http_client, f"{base_url}/probe/whoami?access_token={token}&x=1")
    assert ignored.code == 401
    used = await fetch(
        http_client, f"{base_url}/probe/whoami?access_token={token}&x=1", headers=bearer
    )
    assert used.code == 200
    unsealed = await fetch(
        http_client, base_url + "/probe/whoami", method="POST", headers=bearer, body=""
    )
    assert unsealed.code == 200
    # Failing POST /sessions with the real client secret (in the header, and pasted in
    # the query by a careless client).
    unknown = await fetch(
        http_client,
        f"{base_url}/sessions?client_secret={CLIENT_SECRET}",
        method="POST",
        headers={"Authorization": basic()},
        body={"secret_key_id": "missing"},
    )
    assert unknown.code == 400
    provider.fail = True
    down = await fetch(
        http_client, base_url + "/sessions", method="POST",
        headers={"Authorization": basic()}, body={"secret_key_id": "demo"},
    )
    assert down.code == 503

    access = [r for r in caplog.records if r.name == "tokensvc.access"]
    assert len(access) >= 6
    assert any("access_token=***" in r.getMessage() for r in access)
    assert any("client_secret=***" in r.getMessage() for r in access)
    assert all("access_token=***" in r.path for r in access if "whoami?" in r.path)  # type: ignore[attr-defined]
    formatter = RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    json_formatter = JsonFormatter()
    for record in caplog.records:
        texts = (formatter.format(record), json_formatter.format(record), record.getMessage())
        for text in texts:
            assert token not in text, record.name
            assert CLIENT_SECRET not in text, record.name
            assert UPSTREAM_SECRET not in text, record.name
            assert basic().split(" ", 1)[1] not in text, record.name
