"""chatkit.upstream against a fake OpenAI-compatible server on 127.0.0.1, and the echo model."""

from __future__ import annotations

import asyncio
import itertools
import logging
import traceback
from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import pytest
import tornado.web

from chatkit.upstream import (
    CHATKIT_BETA_HEADER,
    EchoUpstream,
    OpenAIUpstream,
    Upstream,
    make_upstream,
)
from tests.fake_upstream import (
    DEFAULT_DELTAS,
    LEAK_MARKER,
    SESSION_EXPIRES_AT,
    SESSION_SECRET,
    FakeUpstream,
)
from tokensvc.errors import ConfigError, UpstreamError
from tokensvc.redacted import Secret

KEY = "sk-test-upstream-key-0123456789"
MESSAGES = [{"role": "user", "content": "Say hello"}]
WAIT = 5.0


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def app(fake: FakeUpstream) -> tornado.web.Application:
    return fake.app()


@pytest.fixture
def upstream(http_server: object, http_port: int, io_loop: Any) -> Iterator[OpenAIUpstream]:
    client = OpenAIUpstream(f"http://127.0.0.1:{http_port}/v1", timeout=WAIT)
    yield client
    io_loop.run_sync(client.close)


async def collect(upstream: Upstream, key: str = KEY) -> list[str]:
    async with aclosing(upstream.stream_reply(Secret(key), "gpt-test", MESSAGES)) as deltas:
        return [delta async for delta in deltas]


def assert_no_leak(err: UpstreamError, *secrets: str) -> None:
    """Neither the message, the repr nor a logged traceback may carry a secret."""
    rendered = "".join(traceback.format_exception(err)) + repr(err) + str(err)
    for secret in secrets:
        assert secret not in rendered
    assert err.__cause__ is None


@pytest.mark.gen_test(timeout=10)
async def test_stream_reply_yields_the_deltas(upstream: OpenAIUpstream, fake: FakeUpstream) -> None:
    assert await collect(upstream) == list(DEFAULT_DELTAS)
    (request,) = fake.requests
    assert request.body["stream"] is True
    assert request.body["model"] == "gpt-test"
    assert request.body["messages"] == MESSAGES


@pytest.mark.gen_test(timeout=10)
async def test_stream_reply_sends_the_secret_as_bearer(
    upstream: OpenAIUpstream, fake: FakeUpstream
) -> None:
    await collect(upstream)
    assert fake.requests[0].authorization == f"Bearer {KEY}"


@pytest.mark.gen_test(timeout=10)
async def test_chatkit_session_sends_beta_header_workflow_and_user(
    upstream: OpenAIUpstream, fake: FakeUpstream
) -> None:
    session = await upstream.create_chatkit_session(Secret(KEY), "wf_123", "alice")
    assert session == {"client_secret": SESSION_SECRET, "expires_at": SESSION_EXPIRES_AT}
    (request,) = fake.requests
    assert request.path == "/v1/chatkit/sessions"
    assert request.openai_beta == CHATKIT_BETA_HEADER["OpenAI-Beta"]
    assert request.authorization == f"Bearer {KEY}"
    assert request.body["workflow"] == {"id": "wf_123"}
    assert request.body["user"] == "alice"


@pytest.mark.gen_test(timeout=10)
async def test_upstream_500_hides_secret_and_body(
    upstream: OpenAIUpstream, fake: FakeUpstream
) -> None:
    fake.mode = "fail"
    with pytest.raises(UpstreamError) as caught:
        await collect(upstream)
    assert "HTTP 500" in caught.value.log_message
    assert_no_leak(caught.value, KEY, LEAK_MARKER)

    with pytest.raises(UpstreamError) as caught:
        await upstream.create_chatkit_session(Secret(KEY), "wf_123", "alice")
    assert_no_leak(caught.value, KEY, LEAK_MARKER)


@pytest.mark.gen_test(timeout=10)
async def test_hanging_upstream_times_out_as_upstream_error(
    http_server: object, http_port: int, fake: FakeUpstream
) -> None:
    fake.mode = "hang"
    upstream = OpenAIUpstream(f"http://127.0.0.1:{http_port}/v1", timeout=0.3)
    with pytest.raises(UpstreamError) as caught:
        await collect(upstream)
    await upstream.close()
    assert "timed out" in caught.value.log_message
    assert_no_leak(caught.value, KEY)


@pytest.mark.gen_test(timeout=10)
async def test_connection_refused_is_upstream_error() -> None:
    upstream = OpenAIUpstream("http://127.0.0.1:9/v1", timeout=1.0)
    with pytest.raises(UpstreamError) as caught:
        await collect(upstream)
    await upstream.close()
    assert_no_leak(caught.value, KEY)


@pytest.mark.gen_test(timeout=10)
async def test_key_unfit_for_a_header_never_reaches_the_http_library(
    upstream: OpenAIUpstream,
) -> None:
    bad = "sk-line\nInjected: yes"
    with pytest.raises(UpstreamError) as caught:
        await collect(upstream, key=bad)
    assert_no_leak(caught.value, bad, "sk-line")


@pytest.mark.gen_test(timeout=10)
async def test_consumer_stopping_early_closes_the_upstream_stream(
    upstream: OpenAIUpstream, fake: FakeUpstream
) -> None:
    fake.mode = "stall"  # first delta, then the fake keeps the stream open
    deltas = upstream.stream_reply(Secret(KEY), "gpt-test", MESSAGES)
    assert await deltas.__anext__() == DEFAULT_DELTAS[0]
    assert not fake.closed.is_set()
    await deltas.aclose()
    await asyncio.wait_for(fake.closed.wait(), WAIT)


@pytest.mark.gen_test(timeout=10)
async def test_cancelled_consumer_closes_the_upstream_stream(
    upstream: OpenAIUpstream, fake: FakeUpstream
) -> None:
    fake.mode = "stall"
    first = asyncio.Event()

    async def consume() -> None:
        async with aclosing(upstream.stream_reply(Secret(KEY), "m", MESSAGES)) as deltas:
            async for _ in deltas:
                first.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(first.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.closed.wait(), WAIT)


@pytest.mark.gen_test(timeout=10)
async def test_session_without_workflow_is_upstream_error(upstream: OpenAIUpstream) -> None:
    with pytest.raises(UpstreamError):
        await upstream.create_chatkit_session(Secret(KEY), "", "alice")


@pytest.mark.parametrize("text", ["hello big  world ", "  leading", "one", "a\nb\tc", ""])
@pytest.mark.gen_test(timeout=10)
async def test_echo_streams_words_that_join_back_to_the_text(text: str) -> None:
    messages = [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": text},
    ]
    deltas = [d async for d in EchoUpstream().stream_reply(Secret(KEY), "echo", messages)]
    assert "".join(deltas) == text
    assert all(deltas)
    if text.split():
        assert len(deltas) == len(text.split())


@pytest.mark.gen_test(timeout=10)
async def test_echo_without_delay_gives_the_loop_a_turn_between_words() -> None:
    # Otherwise a long reply runs start to end while no reader of the thread can run.
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.ensure_future(count_turns())
    await asyncio.sleep(0)
    try:
        seen: list[int] = []
        messages = [{"role": "user", "content": "one two three four five"}]
        async for _ in EchoUpstream().stream_reply(Secret(KEY), "echo", messages):
            seen.append(turns)
    finally:
        counter.cancel()
        await asyncio.gather(counter, return_exceptions=True)
    assert len(seen) == 5
    assert all(b > a for a, b in itertools.pairwise(seen)), seen


@pytest.mark.gen_test(timeout=10)
async def test_echo_session_is_a_marked_local_fake() -> None:
    echo = EchoUpstream(clock=lambda: 1_000.0)
    session = await echo.create_chatkit_session(Secret(KEY), "wf", "alice")
    assert session["client_secret"].startswith("echo_cs_")
    assert KEY not in session["client_secret"]
    assert session["expires_at"] == 1_600


@pytest.mark.parametrize("url", ["", "echo", " Echo "])
def test_make_upstream_offline_choices(url: str) -> None:
    assert isinstance(make_upstream(url), EchoUpstream)


def test_make_upstream_url() -> None:
    upstream = make_upstream("https://api.openai.com/v1")
    assert isinstance(upstream, OpenAIUpstream)
    assert upstream.base_url == "https://api.openai.com/v1"


def test_make_upstream_rejects_non_http_url() -> None:
    with pytest.raises(ConfigError):
        make_upstream("ftp://example.com")


def test_warns_about_ambient_openai_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-operator")
    with caplog.at_level(logging.WARNING, logger="chatkit.upstream"):
        OpenAIUpstream("https://api.openai.com/v1")
    assert "OPENAI_ORG_ID" in caplog.text
    assert "org-operator" not in caplog.text


def test_no_secret_in_repr() -> None:
    assert KEY not in repr(OpenAIUpstream("https://api.openai.com/v1"))
