"""The README's key rotation runbook, step by step, against a running ``tokensvc serve``.

The commands are taken from the README's "Key rotation" section and run as an operator
would: the cron line's ``scripts/rotate_keys.py``, ``tokensvc keys ...`` from the PATH, and
the ``curl`` that revokes a leaked upstream key. The server reads a config with short
durations (tokens of 30 s, no leeway, no JWKS max-age: a grace period of 30 s; a reload
interval of 0.2 s; heartbeats every 0.3 s) so the whole runbook fits in a test run.

Those commands run in their own processes on the real clock, so the tokens live long
enough for every step to finish on a busy machine, each wait is for a condition with a
generous bound, and how long a step took is never asserted. The first-run client may ask
for 60 sessions a minute: waits for the server to reload watch its log, not new sessions.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server_process import (
    EventStream,
    HttpClient,
    ServerProcess,
    basic_auth,
    clean_env,
    jwt_claims,
    jwt_header,
    wait_until,
    write_config,
)
from tokensvc.keystore import read_manifest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEFAULT_BASE = "http://127.0.0.1:8765"

# = max_ttl; with leeway 0 and jwks_max_age 0 this is the whole grace period. Long enough
# for the steps that use a token minted before a rotation, however slow their commands.
TTL = 30
GRACE = TTL
HEARTBEAT = 0.3
RELOAD_INTERVAL = 0.2
# How long to wait for a reload (by interval or SIGHUP), or for a stream to end, before
# failing (the README's "within a second" for `revoked` is not asserted).
SETTLE = 15.0
# No step here is about the write rate; their thread writes must never reach it.
WRITES_PER_MINUTE = 1_000_000
NEW_UPSTREAM_SECRET = "sk-replaced-upstream-secret-0099"


# -- the runbook, as the README tells it --------------------------------------------------------


def runbook() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"^### Key rotation\n(.*?)^### ", text, re.S | re.M)
    assert found, "README lost its Key rotation section"
    return found.group(1)


def _part(start: str, end: str | None) -> str:
    text = runbook()
    assert start in text, f"the runbook lost {start!r}"
    part = text.split(start, 1)[1]
    return part.split(end, 1)[0] if end else part


def cron_arguments() -> list[str]:
    """The arguments the scheduled rotation's cron line gives ``scripts/rotate_keys.py``."""
    part = _part("**Scheduled rotation**", "**Emergency rotation")
    line = re.search(r"\.venv/bin/python scripts/rotate_keys\.py([^\n]*)", part)
    assert line, "the scheduled rotation lost its cron line"
    return shlex.split(line.group(1))


def emergency_commands() -> list[list[str]]:
    """The ``tokensvc keys ...`` commands of the emergency rotation, in order."""
    part = _part("**Emergency rotation", "**After an upstream")
    return [shlex.split(c) for c in re.findall(r"^\d\. `(tokensvc keys [^`]+)`", part, re.M)]


def revoke_script() -> str:
    """The bash block that revokes every session of a leaked upstream key."""
    part = _part("**After an upstream API key leaked:**", None)
    block = re.search(r"```bash\n(.*?)```", part, re.S)
    assert block, "the upstream key runbook lost its curl command"
    return block.group(1)


# -- the running server --------------------------------------------------------------------------


@dataclass
class Deployment:
    """The folder an operator works in (``cd /srv/tokensvc``) and its running server."""

    folder: Path
    server: ServerProcess
    url: str

    @property
    def keys_dir(self) -> Path:
        return self.folder / "keys"

    @property
    def client_secret(self) -> str:
        # The first-run client: its secret is where the serve output says.
        return (self.keys_dir / "extension.client-secret").read_text(encoding="utf-8").strip()

    @property
    def auth(self) -> str:
        return basic_auth("extension", self.client_secret)

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """Run an operator's command in the folder, ``tokensvc`` on the PATH."""
        bin_dir = str(Path(sys.executable).parent)
        env = clean_env({"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")})
        return subprocess.run(
            argv, cwd=self.folder, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=30, check=False,
        )

    def reloads(self) -> int:
        """How many times the server has loaded a changed key ring so far."""
        return self.server.stderr().count("key ring reloaded")

    def wait_for_reload(self, before: int, what: str) -> None:
        """Until the server has reloaded its key ring since it had ``before`` reloads."""
        wait_until(lambda: self.reloads() > before, SETTLE, what)

    def active_kid(self) -> str:
        record = read_manifest(self.keys_dir).active("sig")
        assert record is not None
        return record.kid


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("srv-tokensvc")
    write_config(
        folder,
        {
            "tokens": {"ttl": TTL, "max_ttl": TTL, "leeway": 0, "jwks_max_age": 0},
            "keys": {"dir": "keys", "reload_interval": RELOAD_INTERVAL},
            "chatkit": {"heartbeat": HEARTBEAT, "writes_per_minute": WRITES_PER_MINUTE},
        },
        client=False,  # the first-run client, as the README's commands assume
        secrets={"demo": "sk-leaked-upstream-secret-0001", "other": "sk-other-secret-0002"},
    )
    with ServerProcess(folder, "--config", "tokensvc.toml") as server:
        url = server.serve()
        assert "keys/extension.client-secret" in server.stdout()
        yield Deployment(folder, server, url)
    assert server.proc is not None
    assert server.proc.returncode == 0


@pytest.fixture
def client(deployment: Deployment) -> Iterator[HttpClient]:
    with HttpClient(deployment.url) as http:
        yield http


def new_session(client: HttpClient, deployment: Deployment, skid: str = "demo") -> str:
    return client.new_session(auth=deployment.auth, secret_key_id=skid)


def open_stream(
    client: HttpClient, deployment: Deployment, token: str
) -> tuple[str, EventStream]:
    """A new thread and its event stream, opened as the panel does: with a stream ticket."""
    thread_id = client.new_thread(token)
    answer = client.request("POST", "/sessions/ticket", token=token)
    assert answer.status == 200, answer.describe()
    ticket = answer.json()["ticket"]
    stream = EventStream(
        deployment.url, f"/chatkit/threads/{thread_id}/events?access_token={ticket}"
    )
    assert stream.status == 200
    return thread_id, stream


def kid_of_new_token(client: HttpClient, deployment: Deployment) -> str:
    kid: str = jwt_header(new_session(client, deployment))["kid"]
    return kid


# -- the steps ------------------------------------------------------------------------------------


def test_scheduled_rotation(deployment: Deployment, client: HttpClient) -> None:
    cron = [sys.executable, str(ROOT / "scripts" / "rotate_keys.py"), *cron_arguments()]
    assert cron[2:] == ["--config", "tokensvc.toml"]
    old_token = new_session(client, deployment)
    old_kid = jwt_header(old_token)["kid"]

    thread_id, stream = open_stream(client, deployment, old_token)
    with stream:
        reloads = deployment.reloads()
        first = deployment.run(cron)
        assert first.returncode == 0, first.stderr
        new_kid = deployment.active_kid()
        assert new_kid != old_kid
        assert new_kid in first.stdout

        # New tokens carry the new kid once the server reloads (by interval: no signal).
        deployment.wait_for_reload(reloads, "the rotated ring to be loaded")
        assert kid_of_new_token(client, deployment) == new_kid
        # Tokens signed by the previous key keep working until they expire.
        assert client.request("POST", "/chatkit/threads", token=old_token).status == 201
        refreshed = client.request("POST", "/sessions/refresh", token=old_token)
        assert refreshed.status == 200, refreshed.describe()
        # Live streams are not affected: the one opened before the rotation carries on.
        posted = client.request(
            "POST", f"/chatkit/threads/{thread_id}/messages", {"text": "after the rotation"},
            token=old_token,
        )
        assert posted.status == 202, posted.describe()
        events = stream.events_until(["done", "revoked", "session_expired"], SETTLE)
        assert events[-1].event == "done", events
        assert '"text": "after the rotation"' in events[-1].data
    assert client.jwks()[0] == [old_kid, new_kid]

    # The previous key is retired by a later run once its grace period has passed.
    record = read_manifest(deployment.keys_dir).get(old_kid)
    assert record is not None
    assert record.state == "retiring"
    assert record.retiring_at is not None
    safe_at = record.retiring_at + GRACE
    time.sleep(max(0.0, safe_at - time.time()) + 0.05)
    second = deployment.run(cron)
    assert second.returncode == 0, second.stderr
    assert re.search(rf"{old_kid}\s.*retiring -> retired", second.stdout), second.stdout
    after = read_manifest(deployment.keys_dir)
    retired = after.get(old_kid)
    assert retired is not None
    assert retired.state == "retired"
    assert not list(deployment.keys_dir.glob(f"{old_kid}.*"))  # private key file deleted
    newest = deployment.active_kid()
    wait_until(lambda: client.jwks()[0] == [new_kid, newest], SETTLE, "the JWKS without it")


def test_emergency_rotation_after_a_signing_key_leak(
    deployment: Deployment, client: HttpClient
) -> None:
    steps = emergency_commands()
    assert steps == [
        ["tokensvc", "keys", "rotate", "--config", "tokensvc.toml"],
        ["tokensvc", "keys", "retire", "--force", "--config", "tokensvc.toml"],
    ]
    leaked_token = new_session(client, deployment)
    leaked_kid = jwt_header(leaked_token)["kid"]
    expires = jwt_claims(leaked_token)["exp"]

    _, stream = open_stream(client, deployment, leaked_token)
    with stream:
        # 1. A new key signs from now on.
        rotate = deployment.run(steps[0])
        assert rotate.returncode == 0, rotate.stderr
        # 2. The leaked key stops verifying; the command says until when its tokens would
        # have been valid.
        retire = deployment.run(steps[1])
        assert retire.returncode == 0, retire.stderr
        assert re.search(rf"{leaked_kid} is retired early: .* valid until", retire.stderr)
        assert re.search(rf"{leaked_kid}\s.*retiring -> retired", retire.stdout)
        # 3. SIGHUP: every server drops the key at once.
        deployment.server.signal(signal.SIGHUP)

        def rejected() -> bool:
            answer = client.request("POST", "/chatkit/threads", token=leaked_token)
            return answer.status == 401

        wait_until(rejected, SETTLE, "the leaked key's token to be rejected")
        assert client.request("POST", "/sessions/refresh", token=leaked_token).status == 401
        # The stream opened with it ends at its next heartbeat check, long before the
        # token would have expired.
        events = stream.events_until(["session_expired", "revoked", "error"], SETTLE)
        assert events[-1].event == "session_expired", events
        stream.expect_end(SETTLE)
        assert time.time() < expires

    assert leaked_kid not in client.jwks()[0]
    # Clients get new tokens from POST /sessions, signed by the new key.
    fresh = new_session(client, deployment)
    assert jwt_header(fresh)["kid"] == deployment.active_kid()
    assert client.request("POST", "/chatkit/threads", token=fresh).status == 201


def _run_revoke_curl(deployment: Deployment) -> subprocess.CompletedProcess[str]:
    script = revoke_script()
    assert DEFAULT_BASE in script
    script = script.replace(DEFAULT_BASE, deployment.url)  # the test's free port
    env = clean_env({"CLIENT_SECRET": deployment.client_secret})
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=deployment.folder, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="the runbook's command uses curl")
def test_after_an_upstream_key_leak(deployment: Deployment, client: HttpClient) -> None:
    leaked_token = new_session(client, deployment)
    other_token = new_session(client, deployment, skid="other")

    _, stream = open_stream(client, deployment, leaked_token)
    with stream:
        # Replace the secret at the holder first (the file provider re-reads the file).
        (deployment.folder / "secrets.toml").write_text(
            f'demo = "{NEW_UPSTREAM_SECRET}"\nother = "sk-other-secret-0002"\n',
            encoding="utf-8",
        )
        # Then revoke every session that carries the old one.
        result = _run_revoke_curl(deployment)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == '{"revoked":true}'
        events = stream.events_until(["revoked", "session_expired", "error"], SETTLE)
        assert events[-1].event == "revoked", events
        stream.expect_end(SETTLE)

    # Every token of that client with that secret_key_id issued up to now is rejected...
    answer = client.request("POST", "/chatkit/threads", token=leaked_token)
    assert answer.status == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert client.request("POST", "/sessions/refresh", token=leaked_token).status == 401
    # ... and no other: another secret_key_id's session goes on.
    assert client.request("POST", "/chatkit/threads", token=other_token).status == 201
    # A token issued afterwards works, even within the same second (see the test below).
    fresh = new_session(client, deployment)
    assert client.request("POST", "/chatkit/threads", token=fresh).status == 201
    thread_id = client.new_thread(fresh)
    posted = client.request(
        "POST", f"/chatkit/threads/{thread_id}/messages", {"text": "new key"}, token=fresh
    )
    assert posted.status == 202, posted.describe()
    log = deployment.server.stderr()
    assert NEW_UPSTREAM_SECRET not in log
    assert deployment.client_secret not in log


def test_a_session_issued_just_after_a_revocation_is_not_revoked(
    deployment: Deployment, client: HttpClient
) -> None:
    # Start right after a second boundary, so both requests fall in the same second.
    wait_until(lambda: time.time() % 1 < 0.3, SETTLE, "the start of a second", interval=0.01)
    answer = client.request(
        "POST", "/sessions/revoke", {"secret_key_id": "other"}, auth=deployment.auth
    )
    assert answer.status == 200
    after = new_session(client, deployment, skid="other")
    assert client.request("POST", "/chatkit/threads", token=after).status == 201
