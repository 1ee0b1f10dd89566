"""HEAD wherever GET works: the same status and headers, no body (tokensvc/web.py).

Every GET route is covered: the core ones, the ChatKit thread and event stream, the static
files and the demo page. The event stream's HEAD answers its headers without opening a
stream, and checks a ticket in the query without using it up.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.web

from chatkit import ChatkitExtension
from tests.chatkit_support import (
    bearer,
    chatkit_config,
    events_path,
    fetch,
    mint,
    new_thread,
    new_ticket,
    open_events,
    running_extension,
    running_services,
)
from tokensvc import Services, make_app
from tokensvc.config import ServerConfig

# Headers that legitimately differ between two answers, or that frame the body.
VOLATILE = {"date", "content-length", "transfer-encoding", "connection"}
MAX_STREAMS = 2


@pytest.fixture
def services(io_loop: Any) -> Iterator[Services]:
    config = chatkit_config(max_streams_per_subject=MAX_STREAMS)
    config = dataclasses.replace(config, server=dataclasses.replace(ServerConfig(), demo=True))
    with running_services(io_loop, config) as built:
        yield built


@pytest.fixture
def extension(io_loop: Any, services: Services) -> Iterator[ChatkitExtension]:
    with running_extension(io_loop, services) as started:
        yield started


@pytest.fixture
def app(services: Services, extension: ChatkitExtension) -> tornado.web.Application:
    return make_app(services, [extension])


@pytest.fixture
def token(services: Services) -> str:
    return mint(services, user="alice")


def comparable(headers: Any) -> dict[str, list[str]]:
    return {
        name.lower(): headers.get_list(name)
        for name in headers
        if name.lower() not in VOLATILE
    }


async def get_and_head(http_client: Any, url: str, headers: dict[str, str]) -> tuple[Any, Any]:
    got = await fetch(http_client, url, headers=headers)
    head = await fetch(http_client, url, method="HEAD", headers=headers)
    return got, head


@pytest.mark.gen_test(timeout=20)
async def test_head_mirrors_get_on_every_get_route(
    http_client: Any, base_url: str, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    routes: list[tuple[str, dict[str, str]]] = [
        ("/healthz", {}),
        ("/readyz", {}),
        ("/.well-known/jwks.json", {}),
        (f"/chatkit/threads/{thread_id}", bearer(token)),
        ("/chatkit/static/tokensvc-chat.js", {}),
        ("/chatkit/demo", {}),
    ]
    for path, headers in routes:
        got, head = await get_and_head(http_client, base_url + path, headers)
        assert got.code == 200, (path, got.body)
        assert head.code == got.code, path
        assert head.body == b"", path
        assert comparable(head.headers) == comparable(got.headers), path
        assert int(head.headers["Content-Length"]) == len(got.body), path


@pytest.mark.gen_test(timeout=20)
async def test_head_of_metrics_has_its_headers(http_client: Any, base_url: str) -> None:
    # The counts change with every request, and with them the length and the ETag.
    got, head = await get_and_head(http_client, base_url + "/metrics", {})
    assert (got.code, head.code) == (200, 200)
    assert head.body == b""
    assert int(head.headers["Content-Length"]) > 0
    assert head.headers["Content-Type"] == got.headers["Content-Type"]
    unstable = {"etag"}
    assert {k: v for k, v in comparable(head.headers).items() if k not in unstable} == {
        k: v for k, v in comparable(got.headers).items() if k not in unstable
    }


@pytest.mark.gen_test(timeout=20)
async def test_head_mirrors_get_errors_and_conditional_answers(
    http_client: Any, base_url: str, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    jwks = await fetch(http_client, base_url + "/.well-known/jwks.json")
    cases: list[tuple[str, dict[str, str], int]] = [
        # Not modified: the JWKS's own ETag.
        ("/.well-known/jwks.json", {"If-None-Match": jwks.headers["ETag"]}, 304),
        # The same token checks as GET: no token, a bad one.
        (f"/chatkit/threads/{thread_id}", {}, 401),
        (f"/chatkit/threads/{thread_id}", {"Authorization": "Bearer a.b.c"}, 401),
        ("/no/such/route", {}, 404),
    ]
    for path, headers, status in cases:
        got, head = await get_and_head(http_client, base_url + path, headers)
        assert (got.code, head.code) == (status, status), (path, headers)
        assert head.body == b""
        assert comparable(head.headers) == comparable(got.headers), (path, headers)


@pytest.mark.gen_test(timeout=20)
async def test_head_of_a_foreign_thread_is_404_like_get(
    http_client: Any, base_url: str, services: Services, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    bob = bearer(mint(services, user="bob"))
    for path in (f"/chatkit/threads/{thread_id}", events_path(thread_id)):
        head = await fetch(http_client, base_url + path, method="HEAD", headers=bob)
        assert head.code == 404, path
        assert head.body == b""


@pytest.mark.gen_test(timeout=20)
async def test_head_is_405_where_get_is_and_allow_lists_it_only_with_get(
    http_client: Any, base_url: str, token: str
) -> None:
    for path in ("/sessions", "/sessions/revoke", "/sessions/refresh", "/chatkit/threads"):
        head = await fetch(http_client, base_url + path, method="HEAD", headers=bearer(token))
        assert head.code == 405, path
        allowed = {m.strip() for m in head.headers["Allow"].split(",")}
        assert "POST" in allowed
        assert not {"GET", "HEAD"} & allowed, (path, allowed)
    wrong = await fetch(http_client, base_url + "/healthz", method="POST", body="{}")
    assert wrong.code == 405
    assert {"GET", "HEAD"} <= {m.strip() for m in wrong.headers["Allow"].split(",")}


@pytest.mark.gen_test(timeout=20)
async def test_head_of_an_event_stream_answers_its_headers_without_opening_it(
    http_client: Any, base_url: str, extension: ChatkitExtension, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    # More HEADs than the stream limit: none of them holds a stream slot.
    for _ in range(MAX_STREAMS + 1):
        head = await fetch(http_client, base_url + events_path(thread_id), method="HEAD",
                           headers=bearer(token))
        assert head.code == 200
        assert head.body == b""
        assert head.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert head.headers["Cache-Control"] == "no-store"
        assert head.headers["X-Accel-Buffering"] == "no"
        assert "Pragma" not in head.headers
        assert len(extension.state.streams) == 0


@pytest.mark.gen_test(timeout=20)
async def test_head_of_an_event_stream_is_429_past_the_stream_limit(
    http_client: Any, base_url: str, http_port: int, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    streams = [await open_events(http_port, events_path(thread_id), bearer(token))
               for _ in range(MAX_STREAMS)]
    try:
        assert [s.status for s in streams] == [200] * MAX_STREAMS
        head = await fetch(http_client, base_url + events_path(thread_id), method="HEAD",
                           headers=bearer(token))
        assert head.code == 429
        assert head.headers["Retry-After"]
    finally:
        for stream in streams:
            await stream.close()


@pytest.mark.gen_test(timeout=20)
async def test_head_checks_a_stream_ticket_without_using_it_up(
    http_client: Any, base_url: str, http_port: int, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    ticket = await new_ticket(http_client, base_url, token)
    path = events_path(thread_id, f"access_token={ticket}")
    head = await fetch(http_client, base_url + path, method="HEAD")
    assert head.code == 200
    assert head.headers["Content-Type"].startswith("text/event-stream")
    bad = await fetch(http_client, base_url + events_path(thread_id, "access_token=a.b.c"),
                      method="HEAD")
    assert bad.code == 401
    assert bad.headers["WWW-Authenticate"].startswith("Bearer")
    # The ticket still opens the stream once, and only once.
    stream = await open_events(http_port, path)
    try:
        assert stream.status == 200
        first = await stream.next()
        assert first is not None
        assert first.retry is not None
    finally:
        await stream.close()
    again = await open_events(http_port, path)
    assert again.status == 401
    assert json.loads(again.body)["error"] == "invalid_token"
