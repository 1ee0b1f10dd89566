"""End to end in a real browser: ``tokensvc serve --demo`` driven by headless Chromium.

The page gets a session, opens a thread's events through a native EventSource authenticated
by a stream ticket, sends messages and shows the replies. The tests cover revocation from
outside (as the extension host would), token expiry mid-stream, a server restart
mid-session, an upstream that fails one reply, and a 300 px panel. Every test also holds
the page to zero console errors and uncaught exceptions (see :class:`PageWatch`).

Chromium comes from ``TOKENSVC_TEST_CHROMIUM`` or ``chromium`` on the PATH; Playwright never
downloads one. Without a binary the tests are skipped, unless ``TOKENSVC_TEST_CHROMIUM`` is
set, in which case a missing binary is a failure (CI sets it so the tests cannot silently
vanish).

Nothing here sleeps for a fixed time: every wait is on a condition with a generous bound,
and the page's reconnect backoff is shortened through the demo page's query string.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fake_upstream import DEFAULT_DELTAS, FakeUpstream, serve_in_thread

CHROMIUM_ENV = "TOKENSVC_TEST_CHROMIUM"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
READY_LINE = re.compile(r"tokensvc listening on (http://\S+)")
START_DEADLINE = 30.0
STOP_DEADLINE = 10.0
# Generous: a busy 2-core machine runs the server, Chromium and pytest at once.
PAGE_WAIT_MS = 20_000
DEMO_USER = "demo-user"
MESSAGE = "hello from a real browser"
# Reconnect backoff for the tests: the real defaults (0.5 s doubling to 30 s) would make a
# restart test wait for nothing.
FAST_BACKOFF = "?reconnect_initial_ms=50&reconnect_max_ms=250"
# Every limit the tests could run into, set here rather than inherited.
LIMITS = """
[chatkit]
heartbeat = 15
max_streams_per_subject = 8
writes_per_minute = 600
max_replies_per_subject = 4
max_thread_messages = 1000
"""
UPSTREAM_KEY = "sk-browser-test-upstream-key"
# How Chromium logs an event stream whose server went away mid-response.
STREAM_CUT_ERRORS = ("net::ERR_INCOMPLETE_CHUNKED_ENCODING", "net::ERR_CONNECTION_RESET")


def chromium_binary() -> str:
    """The Chromium executable: skip without one, fail if the configured one is missing."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            pytest.fail(f"{CHROMIUM_ENV} is set but {configured!r} is not an executable file")
        return configured
    found = shutil.which("chromium")
    if found is None:
        pytest.skip(f"no chromium binary: install chromium or set {CHROMIUM_ENV}")
    return found


class DemoServer:
    """``tokensvc serve --demo`` in a scratch directory, stopped with SIGTERM (exit 0).

    ``port`` 0 picks a free one; a second server on the same directory and port is the
    first one restarted (same keys, same revocation file).
    """

    def __init__(self, tmp_path: Path, config: str | None, *, port: int, name: str) -> None:
        self.keys_dir = tmp_path / "keys"
        options = []
        if config is not None:
            (tmp_path / "tokensvc.toml").write_text(config)
            options = ["--config", str(tmp_path / "tokensvc.toml")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
        self.stdout_path = tmp_path / f"{name}.stdout"
        self.stderr_path = tmp_path / f"{name}.stderr"
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tokensvc", "serve", "--port", str(port), "--demo",
                 "--keys-dir", str(self.keys_dir), *options],
                cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            )
        self.url = self._wait_ready()

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + START_DEADLINE
        while True:
            match = READY_LINE.search(self.stdout_path.read_text())
            if match:
                return match.group(1)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"server did not start (exit {self.proc.poll()}):\n"
                            f"{self.stderr_path.read_text()}")
            time.sleep(0.05)  # polling the ready line, bounded by the deadline above

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    def stop(self) -> int:
        """SIGTERM and wait (SIGKILL after 10 s, a failure): the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_DEADLINE)
            pytest.fail("server did not stop within 10 s of SIGTERM")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., DemoServer]]:
    """Start demo servers with ``servers(config, port=0, name="server")``; each is stopped
    at the end (after the page has closed) and must exit 0."""
    started: list[DemoServer] = []

    def start(config: str | None = None, *, port: int = 0, name: str = "server") -> DemoServer:
        server = DemoServer(tmp_path, config, port=port, name=name)
        started.append(server)
        return server

    yield start
    for server in started:
        code = server.stop()
        assert code == 0, server.stderr_path.read_text()


def revoke_user(url: str, keys_dir: Path, user: str) -> None:
    """``POST /sessions/revoke`` with the bootstrap client's credentials."""
    secret = (keys_dir / "extension.client-secret").read_text().strip()
    credentials = base64.b64encode(f"extension:{secret}".encode()).decode()
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        connection.request(
            "POST",
            "/sessions/revoke",
            body=json.dumps({"user": user}),
            headers={"Authorization": f"Basic {credentials}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {"revoked": True}
    finally:
        connection.close()


def jwt_header(token: str) -> dict[str, str]:
    segment = token.split(".", 1)[0]
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    header: dict[str, str] = json.loads(raw)
    return header


def event_streams(requests: list[str]) -> list[str]:
    return [u for u in requests if urlsplit(u).path.endswith("/events")]


@dataclass
class PageWatch:
    """One Chromium page and every problem it reported: console errors (Chromium logs each
    failed resource load there too, the favicon's included) and uncaught exceptions.

    A test that provokes failures on purpose (a server restart) names them with
    :meth:`expect`; anything else fails the test when the page closes.
    """

    page: Any
    requests: list[str] = field(default_factory=list)
    resource_types: dict[str, str] = field(default_factory=dict)  # url -> Playwright's type
    console_errors: list[tuple[str, str]] = field(default_factory=list)  # (text, url)
    page_errors: list[str] = field(default_factory=list)
    expected: list[tuple[str, Callable[[str, str], bool]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.set_default_timeout(PAGE_WAIT_MS)
        self.page.on("request", self._on_request)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def _on_request(self, request: Any) -> None:
        self.requests.append(request.url)
        self.resource_types[request.url] = request.resource_type

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append((message.text, message.location.get("url", "")))

    def expect(self, why: str, matches: Callable[[str, str], bool]) -> None:
        """Console errors for which ``matches(text, url)`` holds are expected, for ``why``."""
        self.expected.append((why, matches))

    def unexpected(self) -> list[str]:
        found = [f"pageerror: {error}" for error in self.page_errors]
        for text, url in self.console_errors:
            if not any(matches(text, url) for _why, matches in self.expected):
                found.append(f"console error: {text} ({url})")
        return found

    def events_requests(self) -> list[str]:
        return event_streams(self.requests)

    def status(self, status: str) -> None:
        """Wait until the page shows this connection status."""
        # Selectors, not wait_for_function: the page's CSP (rightly) forbids eval.
        self.page.locator(f'body[data-status="{status}"]').wait_for()

    def send(self, text: str) -> None:
        self.page.fill("#text", text)
        self.page.click("#send")

    def reply(self, index: int) -> Any:
        """The ``index``-th finished assistant reply (waited for)."""
        reply = self.page.locator('.assistant[data-done="true"]').nth(index)
        reply.wait_for()
        return reply

    def texts(self, role: str) -> list[str]:
        texts: list[str] = self.page.locator(f".{role} .text").all_text_contents()
        return texts


@pytest.fixture
def watch(servers: Callable[..., DemoServer]) -> Iterator[PageWatch]:
    """A fresh headless Chromium page; at the end, no unexpected console error or exception.

    It closes before the servers stop (it depends on their fixture), so the end of a test
    does not cut a live stream under the page's eyes.
    """
    chromium = chromium_binary()  # before any server starts, so a skip costs nothing
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS, timeout=PAGE_WAIT_MS
        )
        try:
            page_watch = PageWatch(browser.new_page())
            yield page_watch
        finally:
            browser.close()
    assert page_watch.unexpected() == []


Servers = Callable[..., DemoServer]


def test_demo_page_chats_over_eventsource_and_shows_revocation(
    servers: Servers, watch: PageWatch
) -> None:
    page = watch.page
    server = servers(LIMITS)
    page.goto(server.url + "/chatkit/demo")
    watch.status("connected")

    watch.send(MESSAGE)
    reply = watch.reply(0)
    assert page.locator(".assistant").count() == 1
    assert reply.locator(".text").text_content() == MESSAGE

    streams = watch.events_requests()
    assert streams, watch.requests
    for stream_url in streams:
        assert watch.resource_types[stream_url] == "eventsource"  # what a webview has
        (ticket,) = parse_qs(urlsplit(stream_url).query)["access_token"]
        assert jwt_header(ticket)["typ"] == "sse+jwt"

    revoke_user(server.url, server.keys_dir, DEMO_USER)
    watch.status("revoked")
    assert page.locator("#send").is_disabled()


SHORT_SESSION = """
[tokens]
ttl = 10
max_ttl = 10
session_max_lifetime = 3600
""" + LIMITS


def test_demo_page_refreshes_and_resumes_its_stream_when_the_token_expires(
    servers: Servers, watch: PageWatch
) -> None:
    """Ten-second tokens: the page refreshes ahead, and when the stream's token runs out
    (``session_expired``) it resumes with a fresh ticket from its last event id, so a reply
    sent afterwards still arrives, and nothing is shown twice."""
    page = watch.page
    server = servers(SHORT_SESSION)
    page.goto(server.url + "/chatkit/demo")
    watch.status("connected")
    watch.send("before expiry")
    watch.reply(0)

    # Past the first stream's token (10 s): the page must reconnect by itself, resuming.
    with page.expect_request(
        lambda request: urlsplit(request.url).path.endswith("/events")
        and "last_event_id" in parse_qs(urlsplit(request.url).query),
        timeout=30_000,
    ):
        pass
    assert any(urlsplit(u).path == "/sessions/refresh" for u in watch.requests)
    watch.status("connected")

    watch.send("after expiry")
    watch.reply(1)
    assert watch.texts("assistant") == ["before expiry", "after expiry"]  # no replays
    assert watch.texts("user") == ["before expiry", "after expiry"]


def test_demo_page_reconnects_after_a_server_restart_and_starts_a_new_thread(
    servers: Servers, watch: PageWatch
) -> None:
    """The server stops mid-session and starts again on the same port and keys: the page
    keeps retrying (with the backoff capped at 250 ms for the test), reconnects, finds its
    thread gone (the memory store does not survive a restart), says so, and chats on in a
    new thread."""
    page = watch.page
    first = servers(LIMITS, name="first")
    origin = first.url.rstrip("/")
    page.goto(first.url + "/chatkit/demo" + FAST_BACKOFF)
    watch.status("connected")
    watch.send("before the restart")
    watch.reply(0)
    old_thread = page.locator("body").get_attribute("data-thread")
    assert old_thread
    old_events = f"{origin}/chatkit/threads/{old_thread}/events?"
    # What the browser logs by itself from here on: the open stream cut by the stopping
    # server, refused connections while it is down, and the one 404 that tells the page
    # its thread is gone.
    watch.expect("stream cut", lambda text, where: where.startswith(old_events) and any(
        error in text for error in STREAM_CUT_ERRORS))
    watch.expect("server down", lambda text, where: where.startswith(origin + "/")
                 and "net::ERR_CONNECTION_REFUSED" in text)
    watch.expect("thread lost", lambda text, where: where == f"{origin}/chatkit/threads/"
                 f"{old_thread}" and "status of 404" in text)

    assert first.stop() == 0
    watch.status("offline")  # the page noticed, and keeps trying
    streams_before = len(watch.events_requests())

    second = servers(LIMITS, port=first.port, name="second")
    assert second.url == first.url
    page.locator(".notice.thread-lost").wait_for()
    watch.status("connected")
    new_thread = page.locator("body").get_attribute("data-thread")
    assert new_thread
    assert new_thread != old_thread
    streams = watch.events_requests()[streams_before:]
    assert streams
    assert all(f"/chatkit/threads/{new_thread}/events" in u for u in streams)

    watch.send("after the restart")
    reply = watch.reply(1)
    assert reply.locator(".text").text_content() == "after the restart"
    assert watch.texts("user") == ["before the restart", "after the restart"]
    assert "404" not in (page.locator("#log").text_content() or "")  # no raw error shown
    thread_lost = [text for text, _where in watch.console_errors if "status of 404" in text]
    assert len(thread_lost) == 1, watch.console_errors  # asked once, replaced once


@pytest.fixture
def fake_upstream() -> Iterator[tuple[FakeUpstream, str]]:
    """A fake OpenAI-compatible upstream in a thread: (its switches, its /v1 URL)."""
    fake = FakeUpstream()
    with serve_in_thread(fake) as url:
        yield fake, url


def test_a_failed_reply_keeps_the_stream_open_and_the_next_message_works(
    tmp_path: Path, fake_upstream: tuple[FakeUpstream, str], servers: Servers,
    watch: PageWatch,
) -> None:
    """The upstream answers 500 once: the server's ``error`` event shows in the panel, the
    same EventSource stays open, and the next message gets its reply."""
    page = watch.page
    fake, upstream_url = fake_upstream
    secrets = tmp_path / "secrets.toml"  # beside the config: the file provider's default
    secrets.write_text(f'demo = "{UPSTREAM_KEY}"\n')
    secrets.chmod(0o600)
    config = LIMITS.replace("[chatkit]\n", f'[chatkit]\nupstream_url = "{upstream_url}"\n')
    server = servers(config)
    page.goto(server.url + "/chatkit/demo" + FAST_BACKOFF)
    watch.status("connected")

    fake.mode = "fail"
    watch.send("this reply fails")
    failure = page.locator(".notice.error")
    failure.wait_for()
    assert "upstream_error" in (failure.text_content() or "")
    fake.mode = "ok"
    watch.send("this one works")
    reply = watch.reply(0)
    assert reply.locator(".text").text_content() == "".join(DEFAULT_DELTAS)

    assert page.locator("body").get_attribute("data-status") == "connected"
    assert len(watch.events_requests()) == 1, watch.events_requests()  # never reopened
    assert watch.texts("user") == ["this reply fails", "this one works"]
    assert [r.authorization for r in fake.requests] == [f"Bearer {UPSTREAM_KEY}"] * 2


LONG_WORD = "".join(chr(ord("a") + i % 26) for i in range(500))


def test_a_300px_panel_wraps_long_words_and_has_a_multiline_composer(
    servers: Servers, watch: PageWatch
) -> None:
    page = watch.page
    page.set_viewport_size({"width": 300, "height": 600})
    server = servers(LIMITS)
    page.goto(server.url + "/chatkit/demo")
    watch.status("connected")
    assert page.locator("#empty").is_visible()

    watch.send(LONG_WORD)
    reply = watch.reply(0)
    assert reply.locator(".text").text_content() == LONG_WORD
    assert not page.locator("#empty").is_visible()
    assert page.locator(".user .who").all_text_contents() == ["You"]
    assert page.locator(".assistant .who").all_text_contents() == ["Assistant"]

    scroll_width, client_width = page.evaluate(
        "() => [document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]"
    )
    assert scroll_width <= client_width == 300
    for message in page.locator(".msg").all():
        scroll, client, right = message.evaluate(
            "el => [el.scrollWidth, el.clientWidth, el.getBoundingClientRect().right]"
        )
        assert scroll <= client, message.get_attribute("class")
        assert right <= client_width, message.get_attribute("class")

    # Enter sends; Shift+Enter is a new line.
    composer = page.locator("#text")
    assert composer.evaluate("el => el.tagName") == "TEXTAREA"
    composer.fill("first line")
    composer.press("Shift+Enter")
    composer.press_sequentially("second line")
    assert composer.input_value() == "first line\nsecond line"
    composer.press("Enter")
    watch.reply(1)
    assert composer.input_value() == ""
    assert watch.texts("user") == [LONG_WORD, "first line\nsecond line"]
    # The page names its icon, so the browser never asks for /favicon.ico (a 404).
    assert any(urlsplit(u).path == "/chatkit/static/favicon.svg" for u in watch.requests)
    assert not any(urlsplit(u).path == "/favicon.ico" for u in watch.requests)


def test_reconnect_backoff_doubles_up_to_its_cap_with_jitter(
    servers: Servers, watch: PageWatch
) -> None:
    """Between half and all of min(cap, initial * 2**n), whatever the page's options."""
    server = servers(LIMITS)
    watch.page.goto(server.url + "/chatkit/demo")
    watch.status("connected")
    delays = watch.page.evaluate("""() => [0, 0.999999].map(r => {
        const chat = new TokensvcChat({reconnect: {initialDelayMs: 100, maxDelayMs: 1000},
                                       random: () => r});
        return [0, 1, 2, 3, 4, 5, 20].map(n => chat.backoffDelay(n));
    })""")
    assert delays == [[50, 100, 200, 400, 500, 500, 500], [100, 200, 400, 800, 1000, 1000, 1000]]
    defaults, junk = watch.page.evaluate("""() => [
        new TokensvcChat({}), new TokensvcChat({reconnect: {initialDelayMs: "x", maxDelayMs: -5}})
    ].map(chat => [chat.initialDelayMs, chat.maxDelayMs])""")
    assert defaults == junk == [500, 30000]
