"""End to end in a real browser: ``tokensvc serve --demo`` driven by headless Chromium.

The page gets a session, opens a thread's events through a native EventSource authenticated
by a stream ticket, sends a message and shows the echo model's reply; then the session is
revoked from outside (as the extension host would) and the page must show it.

Chromium comes from ``TOKENSVC_TEST_CHROMIUM`` or ``chromium`` on the PATH; Playwright never
downloads one. Without a binary the test is skipped, unless ``TOKENSVC_TEST_CHROMIUM`` is set,
in which case a missing binary is a failure (CI sets it so the test cannot silently vanish).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

CHROMIUM_ENV = "TOKENSVC_TEST_CHROMIUM"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
READY_LINE = re.compile(r"tokensvc listening on (http://\S+)")
START_DEADLINE = 30.0
STOP_DEADLINE = 10.0
PAGE_WAIT_MS = 10_000
DEMO_USER = "demo-user"
MESSAGE = "hello from a real browser"


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


@contextlib.contextmanager
def demo_server(tmp_path: Path, config: str | None = None) -> Iterator[tuple[str, Path]]:
    """``tokensvc serve --demo`` on a free port in a scratch directory: (url, keys dir)."""
    keys_dir = tmp_path / "keys"
    options = []
    if config is not None:
        (tmp_path / "tokensvc.toml").write_text(config)
        options = ["--config", str(tmp_path / "tokensvc.toml")]
    env = {name: value for name, value in os.environ.items() if not name.startswith("TOKENSVC_")}
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokensvc", "serve", "--port", "0", "--demo",
             "--keys-dir", str(keys_dir), *options],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
        )
    try:
        deadline = time.monotonic() + START_DEADLINE
        url = None
        while url is None:
            match = READY_LINE.search(stdout_path.read_text())
            if match:
                url = match.group(1)
            elif proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"server did not start (exit {proc.poll()}):\n{stderr_path.read_text()}"
                )
            else:
                time.sleep(0.05)
        yield url, keys_dir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_DEADLINE)
            pytest.fail("server did not stop within 10 s of SIGTERM")
    assert proc.returncode == 0, stderr_path.read_text()


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


def test_demo_page_chats_over_eventsource_and_shows_revocation(tmp_path: Path) -> None:
    chromium = chromium_binary()  # before the server starts, so a skip costs nothing
    from playwright.sync_api import sync_playwright

    requests: list[tuple[str, str]] = []
    with demo_server(tmp_path) as (url, keys_dir), sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS, timeout=PAGE_WAIT_MS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(PAGE_WAIT_MS)
            page.on("request", lambda request: requests.append(
                (request.url, request.resource_type)))

            page.goto(url + "/chatkit/demo")
            # Selectors, not wait_for_function: the page's CSP (rightly) forbids eval.
            page.locator('body[data-status="connected"]').wait_for()

            page.fill("#text", MESSAGE)
            page.click("#send")
            reply = page.locator('.assistant[data-done="true"]')
            reply.wait_for()
            assert reply.count() == 1
            assert reply.text_content() == MESSAGE

            streams = [(u, kind) for u, kind in requests if urlsplit(u).path.endswith("/events")]
            assert streams, requests
            for stream_url, kind in streams:
                assert kind == "eventsource"
                (ticket,) = parse_qs(urlsplit(stream_url).query)["access_token"]
                assert jwt_header(ticket)["typ"] == "sse+jwt"

            revoke_user(url, keys_dir, DEMO_USER)
            page.locator('body[data-status="revoked"]').wait_for()
            assert page.locator("#send").is_disabled()
        finally:
            browser.close()


SHORT_SESSION = """
[tokens]
ttl = 10
max_ttl = 10
session_max_lifetime = 3600
"""


def test_demo_page_refreshes_and_resumes_its_stream_when_the_token_expires(
    tmp_path: Path,
) -> None:
    """Ten-second tokens: the page refreshes ahead, and when the stream's token runs out
    (``session_expired``) it resumes with a fresh ticket from its last event id, so a reply
    sent afterwards still arrives, and nothing is shown twice."""
    chromium = chromium_binary()
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with demo_server(tmp_path, SHORT_SESSION) as (url, _keys), sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS, timeout=PAGE_WAIT_MS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(PAGE_WAIT_MS)
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url + "/chatkit/demo")
            page.locator('body[data-status="connected"]').wait_for()
            page.fill("#text", "before expiry")
            page.click("#send")
            page.locator('.assistant[data-done="true"]').wait_for()

            # Past the first stream's token: the page must have reconnected by itself.
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline and len(event_streams(requests)) < 2:
                page.wait_for_timeout(200)
            streams = event_streams(requests)
            assert len(streams) >= 2, requests
            resumed = parse_qs(urlsplit(streams[-1]).query)
            assert "last_event_id" in resumed  # it resumed, not restarted
            assert any(urlsplit(u).path == "/sessions/refresh" for u in requests)
            page.locator('body[data-status="connected"]').wait_for()

            page.fill("#text", "after expiry")
            page.click("#send")
            page.locator('.assistant[data-done="true"] >> nth=1').wait_for()
            replies = page.locator(".assistant").all_text_contents()
            assert replies == ["before expiry", "after expiry"]  # no replay shown twice
            assert page.locator(".user").all_text_contents() == [
                "before expiry", "after expiry"
            ]
        finally:
            browser.close()


def event_streams(requests: list[str]) -> list[str]:
    return [u for u in requests if urlsplit(u).path.endswith("/events")]
