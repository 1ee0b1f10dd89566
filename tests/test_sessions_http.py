"""The session flow over HTTP: issue, use, refresh, ticket, end."""

from __future__ import annotations

import json
from typing import Any

import pytest
import tornado.httpclient

from tests.protected import ProbeExtension
from tests.support import UPSTREAM_SECRET, basic, make_app, make_services


@pytest.fixture
def services(io_loop: Any) -> Any:
    built = make_services()
    io_loop.run_sync(built.revocations.start)
    return built


@pytest.fixture
def app(services: Any) -> Any:
    return make_app(services, [ProbeExtension()])


async def fetch(http_client: Any, url: str, **kwargs: Any) -> tornado.httpclient.HTTPResponse:
    kwargs.setdefault("raise_error", False)
    if isinstance(kwargs.get("body"), dict):
        kwargs["body"] = json.dumps(kwargs["body"])
        kwargs.setdefault("headers", {}).setdefault("Content-Type", "application/json")
    return await http_client.fetch(url, **kwargs)


async def new_session(http_client: Any, base_url: str, **body: Any) -> dict[str, Any]:
    response = await fetch(
        http_client,
        base_url + "/sessions",
        method="POST",
        headers={"Authorization": basic()},
        body={"secret_key_id": "demo", **body},
    )
    assert response.code == 200, response.body
    return json.loads(response.body)


@pytest.mark.gen_test
async def test_issue_use_refresh_ticket_and_end(http_client: Any, base_url: str) -> None:
    session = await new_session(http_client, base_url, user="alice")
    assert session["token_type"] == "Bearer"
    assert session["scope"] == "chatkit"
    assert UPSTREAM_SECRET not in json.dumps(session)
    bearer = {"Authorization": "Bearer " + session["access_token"]}

    who = await fetch(http_client, base_url + "/probe/whoami", headers=bearer)
    assert who.code == 200
    assert json.loads(who.body)["sub"] == "alice"

    unsealed = await fetch(http_client, base_url + "/probe/whoami", method="POST",
                           headers=bearer, body="")
    assert json.loads(unsealed.body) == {"secret_length": len(UPSTREAM_SECRET)}

    refreshed = await fetch(http_client, base_url + "/sessions/refresh", method="POST",
                            headers=bearer, body="")
    assert refreshed.code == 200
    new = json.loads(refreshed.body)
    assert new["session_id"] == session["session_id"]
    assert new["access_token"] != session["access_token"]

    ticket = await fetch(http_client, base_url + "/sessions/ticket", method="POST",
                         headers=bearer, body="")
    assert ticket.code == 200
    ticket_token = json.loads(ticket.body)["ticket"]
    stream = await fetch(http_client, base_url + "/probe/events?access_token=" + ticket_token)
    assert stream.code == 200
    assert json.loads(stream.body)["type"] == "ticket"
    reused = await fetch(http_client, base_url + "/probe/events?access_token=" + ticket_token)
    assert reused.code == 401

    ended = await fetch(http_client, base_url + "/sessions/current", method="DELETE",
                        headers=bearer)
    assert ended.code == 204
    after = await fetch(http_client, base_url + "/probe/whoami", headers=bearer)
    assert after.code == 401
    assert "invalid_token" in after.headers["WWW-Authenticate"]
