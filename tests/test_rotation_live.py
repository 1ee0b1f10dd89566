"""Key rotation against real ``tokensvc serve`` processes: reloads, SIGHUP, bad rings, workers.

Every server reads a config file with a short ``reload_interval`` (0.2 s), no leeway and no
JWKS max-age, so a change on disk reaches it in well under a second on an idle machine. Each
wait is for a condition, bounded generously so that a busy machine is no failure; how long
a reload takes is not asserted. Tokens live far longer than any test runs, so none of them
expires in the middle of one, however slow the machine.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.server_process import (
    HttpClient,
    Response,
    ServerProcess,
    basic_auth,
    jwt_claims,
    jwt_header,
    wait_until,
    write_config,
)
from tokensvc.cli import build_parser
from tokensvc.keystore import ensure_ring, read_manifest

RELOAD_INTERVAL = 0.2
# How long to wait for a change on disk to reach the server before failing: many intervals,
# so that a busy machine that is slow to load the ring is no failure.
RELOAD_BOUND = 15.0
# How long to wait for a SIGHUP's reload; the tests that send one use a reload_interval of
# a minute, so a reload within this bound can only be the signal's.
SIGHUP_BOUND = 15.0
SIGNALLED_RELOAD_INTERVAL = 60
# Longer than any test here runs (see pytest's timeout), so no token expires during one.
TTL = 600
# No test here is about the write rate; the traffic must never reach it.
WRITES_PER_MINUTE = 1_000_000
PASSPHRASE = "a long random passphrase for the integration test"
STALE = "invalid on disk; serving the last good ring"


@pytest.fixture(autouse=True)
def _no_tokensvc_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The key commands run in this process and read TOKENSVC_* like the servers would not
    # (they get a clean environment): keep the caller's settings out of both.
    for name in list(os.environ):
        if name.startswith("TOKENSVC_") and not name.startswith("TOKENSVC_TEST_"):
            monkeypatch.delenv(name)


def sections(**overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    base: dict[str, dict[str, Any]] = {
        "tokens": {"ttl": TTL, "max_ttl": TTL, "leeway": 0, "jwks_max_age": 0},
        "keys": {"dir": "keys", "reload_interval": RELOAD_INTERVAL},
        # The traffic below creates threads as fast as the machine lets it: the default
        # write rate (60 a minute per owner) would answer 429 after a second or two.
        "chatkit": {"heartbeat": 0.3, "writes_per_minute": WRITES_PER_MINUTE},
    }
    for name, values in overrides.items():
        base.setdefault(name, {}).update(values)
    return base


def active_kid(keys_dir: Path) -> str:
    record = read_manifest(keys_dir).active("sig")
    assert record is not None
    return record.kid


def kid_of_new_token(client: HttpClient) -> str:
    kid: str = jwt_header(client.new_session())["kid"]
    return kid


def keys_command(config: Path, *argv: str) -> int:
    """``tokensvc keys ARGV --config CONFIG``, parsed by the real CLI and run in-process
    (a subprocess would spend a second importing; ``test_runbook.py`` runs them for real)."""
    args = build_parser().parse_args(["keys", *argv, "--config", str(config)])
    status: int = args.func(args)
    return status


class Traffic(threading.Thread):
    """Keeps one keep-alive client busy: new session, a protected route, a refresh."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[str, Response]] = []
        self.kids: list[str] = []  # of every token issued, in order
        self.connects = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            with HttpClient(self.url) as client:
                while not self._stop_event.wait(0.005):  # busy, but leaves the CPU some air
                    self._round(client)
                self.connects = client.connects
        except BaseException as err:  # reported by finish()
            self.error = err

    def _round(self, client: HttpClient) -> None:
        issued = self._record(
            "POST /sessions",
            client.request(
                "POST", "/sessions", {"secret_key_id": "demo", "user": "load"}, auth=basic_auth()
            ),
        )
        if issued is None:
            return
        token = issued["access_token"]
        for path in ("/chatkit/threads", "/sessions/refresh"):
            self._record(f"POST {path}", client.request("POST", path, token=token))

    def _record(self, what: str, answer: Response) -> Any:
        self.answers.append((what, answer))
        if answer.status // 100 != 2:
            return None
        body = answer.json()
        if "access_token" in body:
            self.kids.append(jwt_header(body["access_token"])["kid"])
        return body

    def issued_since(self, mark: int) -> list[str]:
        return self.kids[mark:]

    def finish(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)
        assert not self.is_alive(), "the traffic thread did not stop"
        if self.error is not None:
            raise AssertionError(f"the traffic thread failed: {self.error!r}") from self.error


def test_rotation_under_continuous_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sections())
    keys_dir = tmp_path / "keys"
    with ServerProcess(tmp_path, "--config", str(config)) as server:
        url = server.serve()
        traffic = Traffic(url)
        with HttpClient(url) as client:
            old_token = client.new_session()
            old_kid = jwt_header(old_token)["kid"]
            assert old_kid == active_kid(keys_dir)
            thread_id = client.new_thread(old_token)
            jwks_before, etag_before = client.jwks()
            assert jwks_before == [old_kid]

            traffic.start()
            try:
                # 20 tokens take at least 10 rounds of 3 requests (the 30 checked below).
                wait_until(lambda: len(traffic.kids) >= 20, 30, "traffic to get going")

                # 1. Rotate: stage + activate. New tokens carry the new kid, with no signal.
                mark = len(traffic.kids)
                assert keys_command(config, "rotate") == 0
                new_kid = active_kid(keys_dir)
                assert new_kid != old_kid
                wait_until(
                    lambda: new_kid in traffic.issued_since(mark),
                    RELOAD_BOUND,
                    "a token signed with the new key",
                )
                assert kid_of_new_token(client) == new_kid

                # The token minted before the rotation still verifies (retiring key) and its
                # secret still unseals (retiring sealing key).
                posted = client.request(
                    "POST", f"/chatkit/threads/{thread_id}/messages", {"text": "still here"},
                    token=old_token,
                )
                assert posted.status == 202, posted.describe()
                refreshed = client.request("POST", "/sessions/refresh", token=old_token)
                assert refreshed.status == 200, refreshed.describe()
                again = refreshed.json()
                assert jwt_header(again["access_token"])["kid"] == new_kid
                assert again["session_id"] == jwt_claims(old_token)["sid"]

                jwks_rotated, etag_rotated = client.jwks()
                assert jwks_rotated == [old_kid, new_kid]  # retiring and active
                assert etag_rotated != etag_before

                # 2. A staged key is published (and its ETag changes) but does not sign.
                assert keys_command(config, "stage") == 0
                staged = read_manifest(keys_dir).with_states(use="sig", states=("staged",))
                staged_kid = staged[-1].kid
                wait_until(
                    lambda: staged_kid in client.jwks()[0], RELOAD_BOUND, "the staged key"
                )
                jwks_staged, etag_staged = client.jwks()
                assert jwks_staged == [old_kid, new_kid, staged_kid]
                assert etag_staged not in (etag_before, etag_rotated)
                assert kid_of_new_token(client) == new_kid

                # 3. Retire: refused within the grace period, then forced. The old token is
                # rejected within the interval, and the old key leaves the JWKS.
                capsys.readouterr()
                assert keys_command(config, "retire") == 1
                assert "safe to retire from" in capsys.readouterr().err
                assert keys_command(config, "retire", "--force") == 0

                def old_token_rejected() -> Response | None:
                    answer = client.request("POST", "/chatkit/threads", token=old_token)
                    return answer if answer.status == 401 else None

                rejected = wait_until(old_token_rejected, RELOAD_BOUND, "the old token's 401")
                assert time.time() < jwt_claims(old_token)["exp"]  # rejected, not expired
                challenge = rejected.headers["WWW-Authenticate"]
                assert 'error="invalid_token"' in challenge
                assert "expired" not in challenge
                assert client.jwks()[0] == [new_kid, staged_kid]
                assert kid_of_new_token(client) == new_kid
                # Nothing it issued can be used, not even to refresh.
                refused = client.request("POST", "/sessions/refresh", token=old_token)
                assert refused.status == 401
            finally:
                traffic.finish()

    # No request of the traffic failed, on one connection that was never dropped.
    failed = [f"{what}: {answer.describe()}" for what, answer in traffic.answers
              if answer.status // 100 != 2]
    assert failed == []
    assert len(traffic.answers) >= 30
    assert traffic.connects == 1
    # The switch is clean: once the new key signed, the old one never did again.
    first_new = traffic.kids.index(new_kid)
    assert set(traffic.kids[:first_new]) == {old_kid}
    assert set(traffic.kids[first_new:]) == {new_kid}


def test_sighup_reloads_at_once(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, sections(keys={"reload_interval": SIGNALLED_RELOAD_INTERVAL})
    )
    keys_dir = tmp_path / "keys"
    with ServerProcess(tmp_path, "--config", str(config)) as server, \
            HttpClient(server.serve()) as client:
        old_token = client.new_session()
        old_kid = jwt_header(old_token)["kid"]

        assert keys_command(config, "rotate") == 0
        new_kid = active_kid(keys_dir)
        # Without a signal, a 60 s interval keeps the old ring for now.
        time.sleep(0.5)
        assert kid_of_new_token(client) == old_kid

        server.signal(signal.SIGHUP)
        wait_until(lambda: kid_of_new_token(client) == new_kid, SIGHUP_BOUND, "the new kid")
        assert client.request("POST", "/chatkit/threads", token=old_token).status == 201
        assert client.jwks()[0] == [old_kid, new_kid]
        assert server.proc is not None
        assert server.proc.poll() is None  # SIGHUP reloads; it never stops the server
    assert server.proc.returncode == 0


def _truncate_half(path: Path) -> None:
    data = path.read_bytes()
    with open(path, "r+b") as fh:
        fh.truncate(len(data) // 2)


def _garbage(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(0)
        fh.write(b"-----BEGIN PRIVATE KEY-----\nnot a key at all\n-----END PRIVATE KEY-----\n")


def _group_readable(path: Path) -> None:
    path.chmod(0o640)


def test_a_corrupt_ring_on_disk_is_ignored(tmp_path: Path) -> None:
    config = write_config(tmp_path, sections())
    keys_dir = tmp_path / "keys"
    ensure_ring(keys_dir, algorithm="ES256")
    manifest = read_manifest(keys_dir)
    sig = manifest.active("sig")
    assert sig is not None
    assert sig.file is not None
    kid = sig.kid
    pem = keys_dir / sig.file
    breakages = [
        ("manifest.json cut in half", keys_dir / "manifest.json", _truncate_half),
        ("garbage in the active key file", pem, _garbage),
        ("a group-readable key file", pem, _group_readable),
    ]
    with ServerProcess(tmp_path, "--config", str(config)) as server, \
            HttpClient(server.serve()) as client:
        token = client.new_session()
        thread_id = client.new_thread(token)

        def key_ring_check() -> tuple[int, str]:
            answer = client.readyz()
            return answer.status, answer.json()["checks"]["key_ring_on_disk"]

        assert key_ring_check() == (200, "ok")
        for what, path, damage in breakages:
            original, mode = path.read_bytes(), path.stat().st_mode & 0o777
            assert mode == 0o600
            damage(path)
            wait_until(lambda: key_ring_check()[1] != "ok", RELOAD_BOUND, f"{what} noticed")
            # Still ready (it serves), but an operator is told the disk is broken.
            assert key_ring_check() == (200, STALE), what
            # The last good ring keeps signing, verifying and unsealing.
            assert kid_of_new_token(client) == kid, what
            assert client.request("GET", f"/chatkit/threads/{thread_id}", token=token).status == 200
            posted = client.request(
                "POST", f"/chatkit/threads/{thread_id}/messages", {"text": what}, token=token
            )
            assert posted.status == 202, posted.describe()
            assert client.jwks()[0] == [kid]

            path.write_bytes(original)
            path.chmod(mode)
            wait_until(lambda: key_ring_check() == (200, "ok"), RELOAD_BOUND, f"{what} fixed")
            assert kid_of_new_token(client) == kid

    # Each distinct failure was logged once, naming the file, never key material.
    log = server.stderr()
    assert "key ring on disk is invalid, keeping the last good ring" in log
    assert "manifest.json is not valid JSON" in log
    assert f"{pem} is not a valid PKCS#8 PEM private key" in log
    assert f"{pem} is accessible by group or others" in log
    assert "key ring on disk is valid again" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("use", ["sig", "enc"])
def test_a_group_readable_private_key_stops_start_up(tmp_path: Path, use: str) -> None:
    keys_dir = tmp_path / "keys"
    ensure_ring(keys_dir, algorithm="ES256")
    record = read_manifest(keys_dir).active(use)  # type: ignore[arg-type]
    assert record is not None
    assert record.file is not None
    key_file = keys_dir / record.file
    key_file.chmod(0o640)

    with ServerProcess(tmp_path, "--keys-dir", "keys") as server:
        server.start()
        assert server.wait_exit() == 2
        lines = server.stderr().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("tokensvc: configuration error: ")
    assert str(key_file) in lines[0]
    assert "group or others" in lines[0]
    assert "listening" not in server.stdout()


def _restart_fails(tmp_path: Path, config: Path, env: Mapping[str, str], name: str) -> str:
    with ServerProcess(tmp_path, "--config", str(config), env=env, name=name) as server:
        server.start()
        assert server.wait_exit() == 2
        lines = server.stderr().strip().splitlines()
        assert "listening" not in server.stdout()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_passphrase_encrypts_the_ring_and_is_needed_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, sections())
    keys_dir = tmp_path / "keys"
    env = {"TOKENSVC_KEYS_PASSPHRASE": PASSPHRASE}
    with ServerProcess(tmp_path, "--config", str(config), env=env) as server, \
            HttpClient(server.serve()) as client:
        manifest = read_manifest(keys_dir)
        sig, seal = manifest.active("sig"), manifest.active("enc")
        assert sig is not None
        assert seal is not None
        assert sig.file is not None
        assert seal.file is not None
        pem = keys_dir / sig.file
        assert pem.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        wrapped = (keys_dir / seal.file).read_bytes()
        assert wrapped.startswith(b"TSKW")
        assert len(wrapped) != 32  # not the raw key

        token = client.new_session()
        thread_id = client.new_thread(token)
        posted = client.request(
            "POST", f"/chatkit/threads/{thread_id}/messages", {"text": "sealed"}, token=token
        )
        assert posted.status == 202, posted.describe()  # unsealed with the decrypted key

        # A rotation under the same passphrase is picked up (decrypting in the reload).
        monkeypatch.setenv("TOKENSVC_KEYS_PASSPHRASE", PASSPHRASE)
        assert keys_command(config, "rotate") == 0
        new_kid = active_kid(keys_dir)
        wait_until(lambda: kid_of_new_token(client) == new_kid, RELOAD_BOUND, "new kid")
        assert client.request("POST", "/sessions/refresh", token=token).status == 200
        assert PASSPHRASE not in server.stdout() + server.stderr()

    no_passphrase = _restart_fails(tmp_path, config, {}, "without")
    assert "tokensvc: configuration error:" in no_passphrase
    assert "is encrypted: set TOKENSVC_KEYS_PASSPHRASE" in no_passphrase
    assert str(keys_dir) in no_passphrase

    wrong = _restart_fails(
        tmp_path, config, {"TOKENSVC_KEYS_PASSPHRASE": "not the passphrase"}, "wrong"
    )
    assert "wrong passphrase (TOKENSVC_KEYS_PASSPHRASE) or corrupt file" in wrong
    assert "not the passphrase" not in wrong


def test_workers_all_reload_on_sighup_to_the_parent(tmp_path: Path, redis_url: str) -> None:
    config = write_config(
        tmp_path,
        sections(
            server={"workers": 2},
            keys={"reload_interval": SIGNALLED_RELOAD_INTERVAL},
            revocation={"backend": "redis", "redis_url": redis_url},
        ),
    )
    keys_dir = tmp_path / "keys"
    with ServerProcess(tmp_path, "--config", str(config)) as server:
        url = server.serve()
        # A reload request while the workers are still starting must not kill them.
        server.signal(signal.SIGHUP)
        wait_until(
            lambda: len(re.findall(r"worker \d+ serving \(pid \d+\)", server.stderr())) == 2,
            30,
            "both workers to serve",
        )
        with HttpClient(url) as client:
            old_token = client.new_session()
            old_kid = jwt_header(old_token)["kid"]

        assert keys_command(config, "rotate") == 0
        new_kid = active_kid(keys_dir)
        assert new_kid != old_kid
        log_mark = len(server.stderr())
        server.signal(signal.SIGHUP)
        wait_until(
            lambda: server.stderr()[log_mark:].count("key ring reloaded") == 2,
            SIGHUP_BOUND,
            "a reload in each worker",
        )
        # Each request on a new connection, so the kernel hands them to either worker.
        kids = set()
        for _ in range(40):
            with HttpClient(url) as fresh:
                kids.add(kid_of_new_token(fresh))
                assert fresh.request("POST", "/chatkit/threads", token=old_token).status == 201
        assert kids == {new_kid}
        log = server.stderr()
        assert "exited" not in log, log[-2000:]
        assert "restarting" not in log
    assert server.proc is not None
    assert server.proc.returncode == 0
