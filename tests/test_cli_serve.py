"""``tokensvc serve`` as a user runs it: a real process, its output, signals and exit codes."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tokensvc.keystore import ensure_ring

READY = re.compile(r"^tokensvc listening on http://127\.0\.0\.1:(\d+)( \(\d+ workers\))?$")
READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0
UPSTREAM = "sk-cli-upstream-secret-value-0042"


def clean_env() -> dict[str, str]:
    """The caller's environment without any TOKENSVC_* setting (they would change config)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}


class Server:
    """A ``python -m tokensvc`` child whose stdout lines are collected by a thread."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokensvc", *args],
            cwd=cwd,
            env={**clean_env(), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, daemon=True),
            threading.Thread(target=self._drain_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    def wait_ready(self) -> str:
        """The base URL from the ready line; fails after READY_TIMEOUT seconds."""
        while True:
            try:
                line = self._queue.get(timeout=READY_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no ready line within {READY_TIMEOUT:.0f} s: {self.lines}")
            if line is None:
                self.proc.wait(timeout=EXIT_TIMEOUT)
                pytest.fail(f"exited {self.proc.returncode} before ready: {self.stderr()}")
            self.lines.append(line)
            match = READY.match(line)
            if match:
                return f"http://127.0.0.1:{match.group(1)}"

    def stop(self) -> int:
        """SIGTERM, then the exit status (bounded wait)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        code = self.proc.wait(timeout=EXIT_TIMEOUT)
        for thread in self._threads:
            thread.join(timeout=EXIT_TIMEOUT)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        self._close_pipes()
        return code

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def stderr(self) -> str:
        return "".join(self._stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[Server] = []

    def _start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server(tmp_path, *args, env=env)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.kill()


def request(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    assert url.startswith("http://127.0.0.1:")  # the server under test, nothing else
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_run_serves_sessions_and_stops_cleanly_on_sigterm(
    tmp_path: Path, start: Any
) -> None:
    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text(f'"demo" = "{UPSTREAM}"\n', encoding="utf-8")
    secrets_file.chmod(0o600)
    keys = tmp_path / "keys"
    server = start("serve", "--port", "0", "--keys-dir", str(keys))
    base = server.wait_ready()

    output = "\n".join(server.lines)
    assert re.search(r"key ring", output), output
    secret_path = keys / "extension.client-secret"
    assert secret_path.exists()
    client_secret = secret_path.read_text(encoding="utf-8").strip()
    notice = [line for line in server.lines if "'extension'" in line]
    assert len(notice) == 1, output
    assert str(secret_path) in notice[0]
    assert client_secret not in output

    files = [p for p in keys.iterdir() if p.is_file() and p.name != ".lock"]
    assert any(p.suffix == ".pem" for p in files)
    assert any(p.suffix == ".key" for p in files)
    for path in files:
        assert mode(path) & 0o077 == 0, (path.name, oct(mode(path)))
    assert mode(secret_path) == 0o600
    assert mode(keys) & 0o077 == 0

    status, _, body = request(base + "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    basic = base64.b64encode(f"extension:{client_secret}".encode()).decode()
    status, headers, body = request(
        base + "/sessions",
        method="POST",
        headers={"Authorization": "Basic " + basic, "Content-Type": "application/json"},
        body=json.dumps({"secret_key_id": "demo", "user": "alice"}).encode(),
    )
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    session = json.loads(body)
    assert session["token_type"] == "Bearer"
    assert UPSTREAM.encode() not in body
    status, _, body = request(
        base + "/sessions/refresh",
        method="POST",
        headers={"Authorization": "Bearer " + session["access_token"]},
        body=b"",
    )
    assert status == 200, body
    status, _, jwks = request(base + "/.well-known/jwks.json")
    assert status == 200
    assert all("d" not in key for key in json.loads(jwks)["keys"])

    assert server.stop() == 0
    everything = "\n".join(server.lines) + server.stderr()
    for secret in (client_secret, UPSTREAM, session["access_token"]):
        assert secret not in everything


def test_second_run_reuses_keys_and_client_secret(tmp_path: Path, start: Any) -> None:
    keys = tmp_path / "keys"
    first = start("serve", "--port", "0", "--keys-dir", str(keys))
    first.wait_ready()
    assert first.stop() == 0
    secret = (keys / "extension.client-secret").read_text(encoding="utf-8")
    manifest = (keys / "manifest.json").read_text(encoding="utf-8")

    second = start("serve", "--port", "0", "--keys-dir", str(keys))
    second.wait_ready()
    assert not any("created a new key ring" in line for line in second.lines)
    assert second.stop() == 0
    assert (keys / "extension.client-secret").read_text(encoding="utf-8") == secret
    assert (keys / "manifest.json").read_text(encoding="utf-8") == manifest


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[tokens]\nleeway = 61\n", "leeway"),
        ("[server]\nprot = 8765\n", "prot"),
        # Wrong in the file even though --port overrides it: still refused.
        ("[server]\nport = \"8765\"\n", "port"),
    ],
)
def test_bad_config_exits_2_with_one_line_naming_the_key(
    tmp_path: Path, start: Any, toml: str, named: str
) -> None:
    config = tmp_path / "tokensvc.toml"
    config.write_text(toml, encoding="utf-8")
    server = start("serve", "--config", str(config), "--port", "0",
                   "--keys-dir", str(tmp_path / "keys"))
    assert server.wait() == 2
    lines = server.stderr().strip().splitlines()
    assert len(lines) == 1, lines
    assert named in lines[0]
    assert not any(READY.match(line) for line in server.lines)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"TOKENSVC_SEVER_PORT": "8766"}, "unknown config variable TOKENSVC_SEVER_PORT: "),
        ({"TOKENSVC_SERVER_PROT": "8766"}, "unknown config key TOKENSVC_SERVER_PROT"),
        ({"TOKENSVC_SERVER_WORKERS": "two"}, "TOKENSVC_SERVER_WORKERS must be an integer"),
    ],
)
def test_bad_env_var_exits_2_with_one_line_naming_it(
    tmp_path: Path, start: Any, env: dict[str, str], line: str
) -> None:
    server = start("serve", "--port", "0", "--keys-dir", str(tmp_path / "keys"), env=env)
    assert server.wait() == 2
    lines = server.stderr().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"tokensvc: configuration error: {line}")
    assert not (tmp_path / "keys").exists()  # stopped before anything was created


def test_group_readable_key_file_exits_2(tmp_path: Path, start: Any) -> None:
    keys = tmp_path / "keys"
    ensure_ring(keys, algorithm="ES256", passphrase=None)
    private = sorted(keys.glob("*.pem"))[0]
    private.chmod(0o640)

    second = start("serve", "--port", "0", "--keys-dir", str(keys))
    assert second.wait() == 2
    lines = second.stderr().strip().splitlines()
    assert len(lines) == 1, lines
    assert private.name in lines[0]
    assert not any(READY.match(line) for line in second.lines)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_listening_url_is_printed_exactly_once(
    tmp_path: Path, start: Any, workers: int, fixtures: pytest.FixtureRequest
) -> None:
    args = ["serve", "--port", "0", "--keys-dir", str(tmp_path / "keys"),
            "--workers", str(workers)]
    if workers > 1:  # several workers share revocations through Redis
        redis_url = fixtures.getfixturevalue("redis_url")
        config = tmp_path / "tokensvc.toml"
        config.write_text(f'[revocation]\nbackend = "redis"\nredis_url = "{redis_url}"\n',
                          encoding="utf-8")
        args += ["--config", str(config)]
    server = start(*args)
    base = server.wait_ready()
    status, _, _ = request(base + "/healthz")
    assert status == 200
    assert server.stop() == 0
    # Every worker has logged that it serves before the line is printed; none names the URL.
    output = "\n".join(server.lines) + "\n" + server.stderr()
    assert output.count(base) == 1, output
    assert len([line for line in server.lines if READY.match(line)]) == 1
    if workers > 1:
        assert len(re.findall(r"worker \d+ serving \(pid \d+\)", server.stderr())) == workers


@pytest.fixture
def fixtures(request: pytest.FixtureRequest) -> pytest.FixtureRequest:
    """The fixture request, under a name that leaves ``request()`` above usable."""
    return request
