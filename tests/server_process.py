"""Real ``tokensvc`` processes for integration tests, with every wait bounded.

:class:`ServerProcess` runs ``python -m tokensvc serve`` in a working directory with a config
file, sends stdout and stderr to files there (so no pipe can fill up and stall the server),
reads the ready line ``tokensvc listening on <url>`` and stops the process with SIGTERM (then
SIGKILL) at the end. :class:`HttpClient` is one keep-alive HTTP/1.1 connection;
:class:`EventStream` reads a Server-Sent Events stream event by event against a deadline.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "UPSTREAM_SECRET",
    "EventStream",
    "HttpClient",
    "Response",
    "ServerProcess",
    "SseEvent",
    "basic_auth",
    "clean_env",
    "jwt_claims",
    "jwt_header",
    "run_tokensvc",
    "wait_until",
    "write_config",
]

READY = re.compile(r"^tokensvc listening on (http://\S+)")
START_TIMEOUT = 30.0  # importing the service takes a few seconds on a slow machine
STOP_TIMEOUT = 30.0  # a graceful stop (closing streams, Redis) can be slow on a busy machine
REQUEST_TIMEOUT = 10.0

CLIENT_ID = "extension"
CLIENT_SECRET = "integration-client-secret-0123456789"
UPSTREAM_SECRET = "sk-integration-upstream-secret-0042"

T = TypeVar("T")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without TOKENSVC_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
    env.update(extra or {})
    return env


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(
    directory: Path,
    sections: Mapping[str, Mapping[str, Any]],
    *,
    client: bool = True,
    secrets: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tokensvc.toml`` (and ``secrets.toml``) into ``directory``; the config's path.

    ``client`` adds ``[clients.extension]`` with :data:`CLIENT_SECRET` and a rate limit
    high enough for a test that keeps asking for sessions; without it the service makes
    its first-run client. ``secrets`` defaults to ``demo`` = :data:`UPSTREAM_SECRET`.
    """
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    if client:
        digest = hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()
        lines += [
            f"[clients.{CLIENT_ID}]",
            f'secret_sha256 = "{digest}"',
            "rate_limit = 100000",
            "",
        ]
    path = directory / "tokensvc.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    secrets_file = directory / "secrets.toml"
    table = {"demo": UPSTREAM_SECRET} if secrets is None else secrets
    secrets_file.write_text(
        "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in table.items()),
        encoding="utf-8",
    )
    secrets_file.chmod(0o600)
    return path


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02
) -> T:
    """Call ``probe`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def run_tokensvc(
    *argv: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tokensvc ARGV`` (e.g. ``keys rotate --config ...``) to completion."""
    return subprocess.run(
        [sys.executable, "-m", "tokensvc", *argv],
        cwd=cwd,
        env=clean_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServerProcess:
    """One ``tokensvc serve`` subprocess; use as a context manager so it is always stopped."""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        name: str = "server",
    ) -> None:
        self.workdir = workdir
        self.args = ("serve", "--port", "0", *args)
        self.env = clean_env(env)
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._files: list[IO[bytes]] = []

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> ServerProcess:
        """Launch the process (not waiting for it to be ready)."""
        assert self.proc is None, "already started"
        out = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in stop()
        err = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self._files = [out, err]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokensvc", *self.args],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        """The base URL from the ready line; fails if the process exits or takes too long."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stdout().splitlines():
                match = READY.match(line)
                if match:
                    self.url = match.group(1)
                    return self.url
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"tokensvc exited with {self.proc.returncode} before it was ready; "
                    f"stderr: {self.stderr()[-2000:]}"
                )
            time.sleep(0.02)
        raise AssertionError(f"no ready line within {timeout:g} s; stderr: {self.stderr()[-2000:]}")

    def serve(self) -> str:
        """Start and wait until ready: the base URL."""
        self.start()
        return self.wait_ready()

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        """Wait for the process to end by itself; its exit status."""
        assert self.proc is not None, "not started"
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"tokensvc still running after {timeout:g} s") from None

    def signal(self, signum: int) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(signum)

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if it hangs; close the output files. The exit status."""
        code: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=STOP_TIMEOUT)
            code = self.proc.returncode
        for fh in self._files:
            fh.close()
        self._files = []
        return code

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


# -- HTTP ---------------------------------------------------------------------------------------


def basic_auth(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def _b64_json(segment: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return data


def jwt_header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS, unverified."""
    return _b64_json(token.split(".")[0])


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a compact JWS, unverified."""
    return _b64_json(token.split(".")[1])


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        return f"{self.status} {self.body[:300]!r}"


class HttpClient:
    """One keep-alive connection to the server (reopened only if the server closed it)."""

    def __init__(self, url: str, timeout: float = REQUEST_TIMEOUT) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        self.host, self.port = parts.hostname, parts.port
        self.timeout = timeout
        self.connects = 0
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        auth: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        all_headers = dict(headers or {})
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        elif auth is not None:
            all_headers["Authorization"] = auth
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.connects += 1
        try:
            self._conn.request(method, path, body=payload, headers=all_headers)
            answer = self._conn.getresponse()
            data = answer.read()
        except Exception:
            self.close()
            raise
        if answer.will_close:
            self.close()
        return Response(answer.status, answer.headers, data)

    # The calls the tests make over and over.

    def new_session(self, user: str = "alice", *, auth: str | None = None, **extra: Any) -> str:
        """``POST /sessions`` for ``demo``: the access token (asserts a 200)."""
        answer = self.request(
            "POST",
            "/sessions",
            {"secret_key_id": "demo", "user": user, **extra},
            auth=auth or basic_auth(),
        )
        assert answer.status == 200, answer.describe()
        token: str = answer.json()["access_token"]
        return token

    def new_thread(self, token: str) -> str:
        answer = self.request("POST", "/chatkit/threads", token=token)
        assert answer.status == 201, answer.describe()
        thread_id: str = answer.json()["id"]
        return thread_id

    def jwks(self) -> tuple[list[str], str]:
        """The kids the JWKS lists, and its ETag."""
        answer = self.request("GET", "/.well-known/jwks.json")
        assert answer.status == 200, answer.describe()
        return [key["kid"] for key in answer.json()["keys"]], answer.headers["ETag"]

    def readyz(self) -> Response:
        return self.request("GET", "/readyz")


# -- Server-Sent Events ---------------------------------------------------------------------------


@dataclass
class SseEvent:
    event: str
    data: str
    id: str | None = None
    comments: list[str] = field(default_factory=list)


class EventStream:
    """A ``text/event-stream`` response read event by event, each read against a deadline."""

    def __init__(self, url: str, path: str, *, token: str | None = None) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=REQUEST_TIMEOUT)
        headers = {"Accept": "text/event-stream"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self._conn.request("GET", path, headers=headers)
            self.response = self._conn.getresponse()
        except Exception:
            self._conn.close()
            raise
        self.status = self.response.status
        self.ended = False
        self.pings = 0

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.response.close()
        self._conn.close()

    def next_event(self, timeout: float) -> SseEvent | None:
        """The next event (``: ping`` comments are counted, not returned); None at the end.

        AssertionError if nothing complete arrives within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        comments: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no complete event within {timeout:g} s")
            sock = self._conn.sock
            if sock is not None:
                sock.settimeout(remaining)
            try:
                raw = self.response.readline()
            except TimeoutError:
                raise AssertionError(f"no complete event within {timeout:g} s") from None
            if not raw:
                self.ended = True
                return None
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if "event" in fields or "data" in fields:
                    return SseEvent(
                        fields.get("event", "message"), fields.get("data", ""),
                        fields.get("id"), comments,
                    )
                continue  # a retry: block or the end of a comment
            if line.startswith(":"):
                comments.append(line[1:].strip())
                if line[1:].strip() == "ping":
                    self.pings += 1
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")

    def events_until(self, kinds: Sequence[str], timeout: float) -> list[SseEvent]:
        """Every event up to and including the first one whose kind is in ``kinds``."""
        deadline = time.monotonic() + timeout
        seen: list[SseEvent] = []
        while True:
            event = self.next_event(max(0.0, deadline - time.monotonic()) or 0.001)
            if event is None:
                raise AssertionError(f"stream ended before any of {kinds}: {seen}")
            seen.append(event)
            if event.event in kinds:
                return seen

    def expect_end(self, timeout: float) -> None:
        """The server closes the stream within ``timeout`` with no further event."""
        event = self.next_event(timeout)
        assert event is None, f"expected the stream to end, got {event}"
