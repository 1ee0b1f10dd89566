"""The ChatKit routes over HTTP (chatkit/handlers.py), against a fake OpenAI-compatible upstream.

Hosted sessions, threads and their ownership, message validation, the streamed reply, the
write limits, a thread store that hangs, and the token rules every ChatKit route shares:
scope, missing credentials, wrong token type.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.web

from chatkit import ChatkitExtension
from chatkit.thread_redis import DEFAULT_BLOCK, DEFAULT_COMMAND_TIMEOUT, RedisThreadStore
from chatkit.threads import ThreadStore, owner_of
from tests.chatkit_support import (
    bearer,
    chatkit_config,
    fetch,
    mint,
    new_thread,
    new_thread_stream,
    new_ticket,
    open_events,
    running_extension,
    running_fake_upstream,
    running_services,
)
from tests.conftest import FakeClock
from tests.fake_upstream import (
    DEFAULT_DELTAS,
    LEAK_MARKER,
    SESSION_EXPIRES_AT,
    SESSION_SECRET,
    FakeUpstream,
)
from tests.redis_support import PrivateRedis
from tests.support import OTHER_CLIENT_ID, UPSTREAM_SECRET, make_app
from tokensvc import RateLimiter, Services
from tokensvc.config import ChatkitConfig

WORKFLOW_ID = "wf_tests_0123"
BARE_CHALLENGE = 'Bearer realm="tokensvc"'
MISSING_THREAD = "thr_" + "A" * 22
# The openai client loads its ChatKit types on first use, blocking for about a second (several
# on a loaded machine), so the first POST /chatkit/session of a run gets more time.
FIRST_SESSION_CALL = 15.0


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def fake_url(io_loop: Any, fake: FakeUpstream) -> Iterator[str]:
    with running_fake_upstream(io_loop, fake) as url:
        yield url


@pytest.fixture
def services(io_loop: Any, fake_url: str) -> Iterator[Services]:
    config = chatkit_config(fake_url, workflow_id=WORKFLOW_ID)
    with running_services(io_loop, config) as built:
        yield built


@pytest.fixture
def threads_kind() -> str:
    return "memory"


@pytest.fixture
def threads(request: pytest.FixtureRequest, threads_kind: str) -> ThreadStore | None:
    if threads_kind == "private-redis":
        server: PrivateRedis = request.getfixturevalue("private_redis")
        return RedisThreadStore(server.url)  # the shipped timeouts, not shortened ones
    return None


@pytest.fixture
def extension(
    io_loop: Any, services: Services, threads: ThreadStore | None
) -> Iterator[ChatkitExtension]:
    with running_extension(io_loop, services, threads=threads) as started:
        yield started


@pytest.fixture
def app(services: Services, extension: ChatkitExtension) -> tornado.web.Application:
    return make_app(services, [extension])


@pytest.fixture
def token(services: Services) -> str:
    return mint(services, user="alice")


def error_of(response: Any) -> str:
    body = json.loads(response.body)
    assert set(body) == {"error", "error_description"}
    return str(body["error"])


# -- POST /chatkit/session -----------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_chatkit_session_returns_the_upstream_client_secret(
    http_client: Any, base_url: str, token: str
) -> None:
    response = await fetch(
        http_client, base_url + "/chatkit/session", method="POST", headers=bearer(token), body="",
        request_timeout=FIRST_SESSION_CALL,
    )
    assert response.code == 200, response.body
    assert json.loads(response.body) == {
        "client_secret": SESSION_SECRET,
        "expires_at": SESSION_EXPIRES_AT,
    }
    assert response.headers["Cache-Control"] == "no-store"
    assert UPSTREAM_SECRET.encode() not in response.body


@pytest.mark.gen_test(timeout=20)
async def test_chatkit_session_sends_secret_beta_header_workflow_and_user(
    http_client: Any, base_url: str, token: str, fake: FakeUpstream
) -> None:
    await fetch(
        http_client, base_url + "/chatkit/session", method="POST", headers=bearer(token), body="",
        request_timeout=FIRST_SESSION_CALL,
    )
    (request,) = fake.requests
    assert request.path == "/v1/chatkit/sessions"
    assert request.authorization == f"Bearer {UPSTREAM_SECRET}"
    assert request.openai_beta == "chatkit_beta=v1"
    assert request.body["workflow"]["id"] == WORKFLOW_ID
    assert request.body["user"] == "alice"


@pytest.mark.gen_test(timeout=20)
async def test_chatkit_session_upstream_failure_is_502_without_upstream_body(
    http_client: Any, base_url: str, token: str, fake: FakeUpstream, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.mode = "fail"
    response = await fetch(
        http_client, base_url + "/chatkit/session", method="POST", headers=bearer(token), body="",
        request_timeout=FIRST_SESSION_CALL,
    )
    assert response.code == 502
    assert error_of(response) == "upstream_error"
    for leak in (LEAK_MARKER, UPSTREAM_SECRET):
        assert leak.encode() not in response.body
        assert leak not in caplog.text
    assert fake.requests, "the upstream was not called"


# -- threads ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_create_thread_and_read_it_back(
    http_client: Any, base_url: str, token: str
) -> None:
    created = await fetch(
        http_client, base_url + "/chatkit/threads", method="POST", headers=bearer(token), body=""
    )
    assert created.code == 201
    body = json.loads(created.body)
    assert set(body) == {"id"}
    thread = await fetch(http_client, f"{base_url}/chatkit/threads/{body['id']}",
                         headers=bearer(token))
    assert thread.code == 200
    assert json.loads(thread.body) == {"id": body["id"], "messages": []}


@pytest.mark.gen_test(timeout=10)
async def test_thread_lists_its_messages(http_client: Any, base_url: str, token: str) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    posted = await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}/messages",
                         method="POST", headers=bearer(token), body={"text": "first words"})
    assert posted.code == 202
    message_id = json.loads(posted.body)["message_id"]
    thread = json.loads((await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}",
                                     headers=bearer(token))).body)
    assert thread["messages"][0] == {"id": message_id, "role": "user", "text": "first words"}


@pytest.mark.gen_test(timeout=10)
async def test_another_subject_gets_404_for_every_thread_route(
    http_client: Any, base_url: str, http_port: int, services: Services, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    intruder = mint(services, user="mallory")
    url = f"{base_url}/chatkit/threads/{thread_id}"

    read = await fetch(http_client, url, headers=bearer(intruder))
    post = await fetch(http_client, url + "/messages", method="POST", headers=bearer(intruder),
                       body={"text": "let me in"})
    events = await open_events(http_port, f"/chatkit/threads/{thread_id}/events",
                               bearer(intruder))
    assert (read.code, post.code, events.status) == (404, 404, 404)
    assert error_of(read) == error_of(post) == events.error["error"] == "not_found"

    # Nothing the intruder did reached the owner's thread.
    owner_view = await fetch(http_client, url, headers=bearer(token))
    assert json.loads(owner_view.body)["messages"] == []


@pytest.mark.gen_test(timeout=10)
async def test_another_client_with_the_same_user_gets_404_for_every_thread_route(
    http_client: Any, base_url: str, http_port: int, services: Services, token: str
) -> None:
    # Each client names its own users: "alice" of client "other" is someone else.
    thread_id = await new_thread(http_client, base_url, token)
    other_alice = mint(services, user="alice", client_id=OTHER_CLIENT_ID)
    url = f"{base_url}/chatkit/threads/{thread_id}"

    read = await fetch(http_client, url, headers=bearer(other_alice))
    post = await fetch(http_client, url + "/messages", method="POST",
                       headers=bearer(other_alice), body={"text": "let me in"})
    events = await open_events(http_port, f"/chatkit/threads/{thread_id}/events",
                               bearer(other_alice))
    assert (read.code, post.code, events.status) == (404, 404, 404)
    assert error_of(read) == error_of(post) == events.error["error"] == "not_found"
    owner_view = await fetch(http_client, url, headers=bearer(token))
    assert json.loads(owner_view.body)["messages"] == []

    # And the other way round.
    theirs = await new_thread(http_client, base_url, other_alice)
    mine = await fetch(http_client, f"{base_url}/chatkit/threads/{theirs}", headers=bearer(token))
    assert mine.code == 404


@pytest.mark.parametrize(
    "thread_id",
    [
        MISSING_THREAD,  # well-formed, never created
        "abc",
        "thr_",
        "thr_" + "a" * 129,
        "thr_a.b",
        "thr_%00",
        "thr_%E2%80%AE",
        "..%2F..%2Fsessions",
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_unknown_or_malformed_thread_id_is_404(
    http_client: Any, base_url: str, token: str, thread_id: str
) -> None:
    for suffix, method, body in (("", "GET", None), ("/messages", "POST", {"text": "hi"})):
        response = await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}{suffix}",
                               method=method, headers=bearer(token), body=body)
        assert response.code == 404, (suffix, response.body)
        assert error_of(response) == "not_found"


# -- POST /chatkit/threads/{id}/messages -----------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_post_message_answers_202_with_message_and_response_ids(
    http_client: Any, base_url: str, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    response = await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}/messages",
                           method="POST", headers=bearer(token), body={"text": "hello"})
    assert response.code == 202
    body = json.loads(response.body)
    assert set(body) == {"message_id", "response_id"}
    assert body["message_id"].startswith("msg_")
    assert body["response_id"]


@pytest.mark.parametrize(
    "text",
    ["x", "x" * 32768, "é" * 32768, "\U0001f600" * 32768],
    ids=["one-char", "32768-ascii", "32768-latin", "32768-astral"],
)
@pytest.mark.gen_test(timeout=10)
async def test_accepts_message_text_up_to_32768_characters(
    http_client: Any, base_url: str, token: str, text: str
) -> None:
    # json.dumps escapes non-ASCII (an astral character is 12 bytes as "\ud83d\ude00"), so
    # a text at the limit must not trip a body-size limit meant for other endpoints.
    thread_id = await new_thread(http_client, base_url, token)
    response = await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}/messages",
                           method="POST", headers=bearer(token), body={"text": text})
    assert response.code == 202, response.body


@pytest.mark.parametrize(
    "body",
    [
        "{}",
        '{"text": ""}',
        json.dumps({"text": "x" * 32769}),
        '{"text": 5}',
        '{"text": null}',
        '{"text": ["hi"]}',
        '{"text": {"hi": 1}}',
        '{"text": true}',
        '{"text": "hi", "role": "assistant"}',
        '{"message": "hi"}',
        '["hi"]',
        '"hi"',
        "not json",
        '{"text": "hi"',
        '{"text": "\\ud800"}',  # a lone surrogate: JSON allows it, UTF-8 cannot carry it
        "[" * 100_000,
    ],
    ids=[
        "missing", "empty", "32769-chars", "number", "null", "list", "object", "bool",
        "extra-field", "wrong-field", "array-body", "string-body", "not-json", "truncated",
        "lone-surrogate", "deep-nesting",
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_rejects_invalid_message_bodies_with_400(
    http_client: Any, base_url: str, token: str, body: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    response = await fetch(
        http_client, f"{base_url}/chatkit/threads/{thread_id}/messages", method="POST",
        headers={**bearer(token), "Content-Type": "application/json"}, body=body,
    )
    assert response.code == 400, response.body
    assert error_of(response) == "invalid_request"
    thread = json.loads((await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}",
                                     headers=bearer(token))).body)
    assert thread["messages"] == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.gen_test(timeout=10)
async def test_rejects_non_json_message_bodies_with_415(
    http_client: Any, base_url: str, token: str, content_type: str | None
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    headers = bearer(token)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}/messages",
                           method="POST", headers=headers, body='{"text": "hi"}')
    assert response.code == 415
    assert error_of(response) == "unsupported_media_type"


@pytest.mark.gen_test(timeout=15)
async def test_reply_streams_from_the_upstream_with_the_secret_and_never_leaks_it(
    http_client: Any,
    base_url: str,
    http_port: int,
    token: str,
    fake: FakeUpstream,
    caplog: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    thread_id = await new_thread(http_client, base_url, token)
    ticket = await new_ticket(http_client, base_url, token)
    stream = await open_events(http_port,
                               f"/chatkit/threads/{thread_id}/events?access_token={ticket}")
    assert stream.status == 200
    try:
        posted = await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}/messages",
                             method="POST", headers=bearer(token), body={"text": "Say hello"})
        response_id = json.loads(posted.body)["response_id"]
        items = await stream.until("done")
    finally:
        await stream.close()

    deltas = [i.json["text"] for i in items if i.event == "delta"]
    assert deltas == list(DEFAULT_DELTAS)
    assert items[-1].json == {"response_id": response_id, "text": "".join(DEFAULT_DELTAS)}

    (request,) = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert request.body["stream"] is True
    assert request.authorization == f"Bearer {UPSTREAM_SECRET}"
    assert request.body["messages"][-1] == {"role": "user", "content": "Say hello"}

    thread = await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}",
                         headers=bearer(token))
    assert json.loads(thread.body)["messages"][-1]["text"] == "".join(DEFAULT_DELTAS)
    everything = b"".join([posted.body, thread.body, stream.body]).decode()
    everything += "".join(f"{i.data}{i.comment}" for i in stream.received)
    assert UPSTREAM_SECRET not in everything
    assert UPSTREAM_SECRET not in caplog.text
    assert ticket not in caplog.text


@pytest.mark.gen_test(timeout=15)
async def test_upstream_failure_during_reply_is_an_error_event_without_the_body(
    http_client: Any, base_url: str, http_port: int, token: str, fake: FakeUpstream,
    caplog: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.mode = "fail"
    thread_id, stream = await new_thread_stream(http_client, base_url, http_port, token)
    try:
        await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}/messages",
                    method="POST", headers=bearer(token), body={"text": "hello"})
        items = await stream.until("error")
    finally:
        await stream.close()
    assert items[-1].json["code"] == "upstream_error"
    for leak in (LEAK_MARKER, UPSTREAM_SECRET):
        assert all(leak not in (i.data or "") for i in items)
        assert leak not in caplog.text


# -- limits ----------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_thread_and_message_writes_share_one_rate_per_owner(
    http_client: Any, base_url: str, services: Services, token: str,
    extension: ChatkitExtension, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A frozen clock and a small budget, so the bucket cannot refill during the test.
    extension.state.writes = RateLimiter(clock=clock)
    monkeypatch.setattr(services, "config", dataclasses.replace(
        services.config,
        chatkit=dataclasses.replace(services.config.chatkit, writes_per_minute=3),
    ))
    thread_id = await new_thread(http_client, base_url, token)  # 1
    messages = f"{base_url}/chatkit/threads/{thread_id}/messages"
    posted = await fetch(http_client, messages, method="POST", headers=bearer(token),
                         body={"text": "two"})  # 2
    assert posted.code == 202
    await new_thread(http_client, base_url, token)  # 3

    refused = [
        await fetch(http_client, base_url + "/chatkit/threads", method="POST",
                    headers=bearer(token), body=""),
        await fetch(http_client, messages, method="POST", headers=bearer(token),
                    body={"text": "over the limit"}),
    ]
    for response in refused:
        assert response.code == 429
        assert error_of(response) == "too_many_requests"
        assert response.headers["Retry-After"] == "20"  # one write every 60/3 s
    thread = json.loads((await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}",
                                     headers=bearer(token))).body)
    assert "over the limit" not in [m["text"] for m in thread["messages"]]

    # The budget is the owner's: the same user of another client still has all of its own.
    other_alice = mint(services, user="alice", client_id=OTHER_CLIENT_ID)
    assert await new_thread(http_client, base_url, other_alice)
    # And it refills with time.
    clock.advance(20)
    assert await new_thread(http_client, base_url, token)


@pytest.mark.parametrize(
    ("held", "expected"),
    [(ChatkitConfig().max_thread_messages - 1, 202), (ChatkitConfig().max_thread_messages, 400)],
    ids=["one-below-the-limit", "at-the-limit"],
)
@pytest.mark.gen_test(timeout=10)
async def test_a_full_thread_refuses_another_message_with_400(
    http_client: Any, base_url: str, services: Services, token: str,
    extension: ChatkitExtension, held: int, expected: int,
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    owner = owner_of(services.verifier.verify(token, "session"))
    for n in range(held):
        await extension.state.threads.add_message(thread_id, owner, "user", f"m{n}")
    response = await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}/messages",
                           method="POST", headers=bearer(token), body={"text": "one more"})
    assert response.code == expected, response.body
    if expected == 400:
        assert error_of(response) == "invalid_request"
        thread = await extension.state.threads.get_thread(thread_id, owner)
        assert thread is not None
        assert len(thread.messages) == ChatkitConfig().max_thread_messages


# -- a thread store that hangs ---------------------------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP/SIGCONT")
@pytest.mark.parametrize("threads_kind", ["private-redis"])
@pytest.mark.gen_test(timeout=30)
async def test_hung_redis_fails_thread_requests_with_503_within_seconds(
    http_client: Any, base_url: str, token: str, private_redis: PrivateRedis,
    threads_kind: str,
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    url = f"{base_url}/chatkit/threads/{thread_id}"
    # The client gives up (a 599) a few times the shipped timeouts after asking: a 503
    # before that can only come from them, and a busy machine is no failure.
    gives_up = 3 * (DEFAULT_BLOCK + DEFAULT_COMMAND_TIMEOUT)
    private_redis.freeze()  # connections stay open, nothing answers
    try:
        answers = await asyncio.gather(
            fetch(http_client, url, headers=bearer(token), request_timeout=gives_up),
            fetch(http_client, base_url + "/chatkit/threads", method="POST",
                  headers=bearer(token), body="", request_timeout=gives_up),
            fetch(http_client, url + "/messages", method="POST", headers=bearer(token),
                  body={"text": "anyone there?"}, request_timeout=gives_up),
        )
    finally:
        private_redis.thaw()
    assert [a.code for a in answers] == [503, 503, 503], [a.body for a in answers]
    for answer in answers:
        assert error_of(answer) == "temporarily_unavailable"
        assert int(answer.headers["Retry-After"]) >= 1
    # Redis answers again: so does the store.
    assert (await fetch(http_client, url, headers=bearer(token))).code == 200


# -- token rules shared by the ChatKit routes ------------------------------------------------

ROUTES = [
    ("POST", "/chatkit/session"),
    ("POST", "/chatkit/threads"),
    ("GET", "/chatkit/threads/{thread}"),
    ("POST", "/chatkit/threads/{thread}/messages"),
    ("GET", "/chatkit/threads/{thread}/events"),
]
NON_STREAM_ROUTES = ROUTES[:-1]


async def call(
    http_client: Any, base_url: str, http_port: int, method: str, path: str,
    headers: dict[str, str],
) -> tuple[int, dict[str, str], bytes]:
    """One request to a route; event streams are opened raw so a 200 does not hang."""
    if path.endswith("/events"):
        stream = await open_events(http_port, path, headers)
        await stream.close()
        return stream.status, {k.lower(): v for k, v in stream.headers.items()}, stream.body
    body = {"text": "hi"} if method == "POST" else None
    if method == "POST" and not path.endswith("/messages"):
        body = ""  # type: ignore[assignment]
    response = await fetch(http_client, base_url + path, method=method, headers=headers,
                           body=body)
    return response.code, {k.lower(): v for k, v in response.headers.get_all()}, response.body


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.gen_test(timeout=10)
async def test_route_without_credentials_is_401_with_the_bare_challenge(
    http_client: Any, base_url: str, http_port: int, token: str, method: str, path: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    code, headers, body = await call(http_client, base_url, http_port, method,
                                     path.format(thread=thread_id), {})
    assert code == 401
    assert headers["www-authenticate"] == BARE_CHALLENGE
    assert json.loads(body)["error"] == "invalid_token"


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.gen_test(timeout=10)
async def test_route_with_a_token_without_chatkit_scope_is_403(
    http_client: Any, base_url: str, http_port: int, services: Services, token: str,
    method: str, path: str,
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    other_scope = mint(services, user="alice", scope="other")
    code, headers, body = await call(http_client, base_url, http_port, method,
                                     path.format(thread=thread_id), bearer(other_scope))
    assert code == 403
    assert json.loads(body)["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in headers["www-authenticate"]
    assert 'scope="chatkit"' in headers["www-authenticate"]


@pytest.mark.parametrize(("method", "path"), NON_STREAM_ROUTES)
@pytest.mark.gen_test(timeout=10)
async def test_stream_ticket_as_bearer_on_a_non_stream_route_is_401(
    http_client: Any, base_url: str, http_port: int, token: str, method: str, path: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    ticket = await new_ticket(http_client, base_url, token)
    code, headers, body = await call(http_client, base_url, http_port, method,
                                     path.format(thread=thread_id), bearer(ticket))
    assert code == 401
    assert json.loads(body)["error"] == "invalid_token"
    assert 'error="invalid_token"' in headers["www-authenticate"]


@pytest.mark.parametrize(("method", "path"), NON_STREAM_ROUTES)
@pytest.mark.gen_test(timeout=10)
async def test_query_token_is_ignored_on_a_non_stream_route(
    http_client: Any, base_url: str, http_port: int, token: str, method: str, path: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    for credential in (await new_ticket(http_client, base_url, token), token):
        code, headers, _ = await call(
            http_client, base_url, http_port, method,
            path.format(thread=thread_id) + "?access_token=" + credential, {},
        )
        assert code == 401
        assert headers["www-authenticate"] == BARE_CHALLENGE


@pytest.mark.gen_test(timeout=10)
async def test_revoked_session_token_is_401_on_chatkit_routes(
    http_client: Any, base_url: str, token: str
) -> None:
    thread_id = await new_thread(http_client, base_url, token)
    ended = await fetch(http_client, base_url + "/sessions/current", method="DELETE",
                        headers=bearer(token))
    assert ended.code == 204
    response = await fetch(http_client, f"{base_url}/chatkit/threads/{thread_id}",
                           headers=bearer(token))
    assert response.code == 401
    assert error_of(response) == "invalid_token"
