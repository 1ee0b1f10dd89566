"""Other people's clients against a live server, at their default settings.

Tokens: jose (Node, ``jwtVerify`` with ``createRemoteJWKSet``), joserfc, jwcrypto and PyJWT
each fetch ``/.well-known/jwks.json`` and verify a session token and a stream ticket the
moment they are issued, with no sleep: whole-second time claims are what makes that work
(a fractional ``nbf`` looks "not yet valid" to jose and joserfc for the rest of its second).

Streams: the ``eventsource`` npm package (ticket in the URL, as a browser's EventSource)
and ``httpx-sse`` (Bearer header) follow a thread through a reply and stop after ``revoked``.

Node and the npm packages come from ``npm ci --prefix tests/interop`` (``.ci/run`` does it).
Without them these tests skip, unless ``TOKENSVC_TEST_REQUIRE_NODE`` is set: then it fails.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from httpx_sse import connect_sse
from joserfc import jwt as joserfc_jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from tests.server_process import HttpClient, ServerProcess, write_config

INTEROP_DIR = Path(__file__).parent / "interop"
REQUIRE_NODE_ENV = "TOKENSVC_TEST_REQUIRE_NODE"
ISSUER = "tokensvc"
AUDIENCE = "chatkit"
STREAM_AUDIENCE = "chatkit:stream"
NODE_TIMEOUT = 60.0  # starting node and fetching the JWKS on a busy machine
STREAM_WAIT = 30.0


def node_binary() -> str:
    """``node`` with the interop packages installed: skip without, fail if they are required."""
    node = shutil.which("node")
    packages = ("jose", "eventsource")
    installed = all((INTEROP_DIR / "node_modules" / name).is_dir() for name in packages)
    if node and installed:
        return node
    why = "no node on the PATH" if not node else "run: npm ci --prefix tests/interop"
    if os.environ.get(REQUIRE_NODE_ENV):
        pytest.fail(f"{REQUIRE_NODE_ENV} is set but the Node interop clients are missing: {why}")
    pytest.skip(f"Node interop clients missing: {why}")


@pytest.fixture(scope="module", params=["ES256", "EdDSA"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp(f"interop-{request.param}")
    config = write_config(workdir, {
        "tokens": {"algorithm": request.param},
        "keys": {"dir": str(workdir / "keys")},
        "revocation": {"path": str(workdir / "revocations.jsonl")},
        # The tests create a thread and a message or two each: far below these.
        "chatkit": {"writes_per_minute": 1000, "max_streams_per_subject": 8},
    })
    with ServerProcess(workdir, "--config", str(config)) as process:
        yield process.serve()


@pytest.fixture
def client(server: str) -> Iterator[HttpClient]:
    with HttpClient(server) as http:
        yield http


def fresh_pair(client: HttpClient) -> tuple[str, str]:
    """A session token and a stream ticket, both issued a moment ago."""
    token = client.new_session("alice")
    answer = client.request("POST", "/sessions/ticket", token=token)
    assert answer.status == 200, answer.describe()
    return token, str(answer.json()["ticket"])


def jwks(server: str) -> dict[str, Any]:
    answer = httpx.get(server + "/.well-known/jwks.json", timeout=10)
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body


# -- tokens ---------------------------------------------------------------------------------


def test_jose_verifies_a_fresh_token_and_ticket(server: str, client: HttpClient) -> None:
    node = node_binary()
    token, ticket = fresh_pair(client)
    request = {
        "jwks_url": server + "/.well-known/jwks.json",
        "issuer": ISSUER,
        "checks": [
            {"token": token, "audience": AUDIENCE},
            {"token": ticket, "audience": STREAM_AUDIENCE},
        ],
    }
    done = subprocess.run(
        [node, str(INTEROP_DIR / "verify_jose.mjs")], input=json.dumps(request), text=True,
        capture_output=True, timeout=NODE_TIMEOUT, check=False, cwd=INTEROP_DIR,
    )
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, (results, done.stderr[-2000:])
    session, stream = results
    assert session["payload"]["sub"] == "alice"
    assert session["header"]["typ"] == "at+jwt"
    assert stream["payload"]["sid"] == session["payload"]["sid"]
    assert stream["header"]["typ"] == "sse+jwt"


def test_jose_rejects_a_ticket_as_a_session_token(server: str, client: HttpClient) -> None:
    # The oracle must be able to say no: a ticket's audience is not the session audience.
    node = node_binary()
    _, ticket = fresh_pair(client)
    request = {
        "jwks_url": server + "/.well-known/jwks.json",
        "issuer": ISSUER,
        "checks": [{"token": ticket, "audience": AUDIENCE}],
    }
    done = subprocess.run(
        [node, str(INTEROP_DIR / "verify_jose.mjs")], input=json.dumps(request), text=True,
        capture_output=True, timeout=NODE_TIMEOUT, check=False, cwd=INTEROP_DIR,
    )
    [result] = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1
    assert result == {**result, "ok": False, "code": "ERR_JWT_CLAIM_VALIDATION_FAILED"}


def test_joserfc_verifies_a_fresh_token_and_ticket(server: str, client: HttpClient) -> None:
    keys = KeySet.import_key_set(jwks(server))  # type: ignore[arg-type]
    token, ticket = fresh_pair(client)
    algorithm = pyjwt.get_unverified_header(token)["alg"]
    for value, audience in ((token, AUDIENCE), (ticket, STREAM_AUDIENCE)):
        if algorithm == "EdDSA":
            # joserfc's one non-default: it follows RFC 9864, which deprecates "EdDSA" for
            # the fully specified "Ed25519", so a verifier must allow it by name (and is
            # warned). ES256, the service's default, needs nothing.
            with pytest.warns(SecurityWarning, match="EdDSA is deprecated"):
                decoded = joserfc_jwt.decode(value, keys, algorithms=["EdDSA"])
        else:
            decoded = joserfc_jwt.decode(value, keys)
        registry = joserfc_jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": ISSUER},
            aud={"essential": True, "value": audience},
        )
        registry.validate(decoded.claims)  # exp, nbf and iat against the current second
        assert decoded.claims["sub"] == "alice"


def test_jwcrypto_verifies_a_fresh_token_and_ticket(server: str, client: HttpClient) -> None:
    keys = jwcrypto_jwk.JWKSet.from_json(json.dumps(jwks(server)))
    token, ticket = fresh_pair(client)
    for value, audience in ((token, AUDIENCE), (ticket, STREAM_AUDIENCE)):
        checked = jwcrypto_jwt.JWT(
            jwt=value, key=keys,
            check_claims={"iss": ISSUER, "aud": audience, "exp": None, "nbf": None},
        )
        assert json.loads(checked.claims)["sub"] == "alice"


def test_pyjwt_verifies_a_fresh_token_and_ticket(server: str, client: HttpClient) -> None:
    keys = pyjwt.PyJWKClient(server + "/.well-known/jwks.json")
    token, ticket = fresh_pair(client)
    for value, audience in ((token, AUDIENCE), (ticket, STREAM_AUDIENCE)):
        key = keys.get_signing_key_from_jwt(value)
        claims = pyjwt.decode(
            value, key, algorithms=[pyjwt.get_unverified_header(value)["alg"]],
            audience=audience, issuer=ISSUER,
        )
        assert claims["sub"] == "alice"


# -- event streams --------------------------------------------------------------------------


def _post_message(client: HttpClient, token: str, thread_id: str, text: str) -> None:
    answer = client.request(
        "POST", f"/chatkit/threads/{thread_id}/messages", {"text": text}, token=token
    )
    assert answer.status == 202, answer.describe()


def _revoke(client: HttpClient, token: str) -> None:
    answer = client.request("DELETE", "/sessions/current", token=token)
    assert answer.status == 204, answer.describe()


class _Lines:
    """A subprocess's stdout as JSON lines, each read against a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self._queue.put(json.loads(line))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.001, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind!r} within {timeout:g} s: {self.seen}") from None
            if line is None:
                raise AssertionError(f"client ended before {kind!r}: {self.seen}")
            self.seen.append(line)
            if line["type"] == kind:
                return line


def test_eventsource_follows_a_reply_with_a_ticket_and_stops_after_revoked(
    server: str, client: HttpClient
) -> None:
    node = node_binary()
    token = client.new_session("alice")
    thread_id = client.new_thread(token)
    ticket = client.request("POST", "/sessions/ticket", token=token).json()["ticket"]
    url = f"{server}/chatkit/threads/{thread_id}/events?access_token={ticket}"
    with subprocess.Popen(
        [node, str(INTEROP_DIR / "eventsource_client.mjs"), url, str(STREAM_WAIT)],
        cwd=INTEROP_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    ) as proc:
        try:
            lines = _Lines(proc)
            lines.until("open", STREAM_WAIT)
            _post_message(client, token, thread_id, "hello from eventsource")
            done = lines.until("done", STREAM_WAIT)
            assert json.loads(done["data"])["text"] == "hello from eventsource"
            _revoke(client, token)
            lines.until("revoked", STREAM_WAIT)
            assert proc.wait(timeout=STREAM_WAIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    kinds = [line["type"] for line in lines.seen]
    assert "connection_error" not in kinds, lines.seen
    assert kinds[0] == "open"
    assert {"message", "delta", "done", "revoked"} <= set(kinds)
    thread_ids = [int(line["id"]) for line in lines.seen if line["type"] in {"message", "done"}]
    assert thread_ids == sorted(thread_ids)
    assert len(set(thread_ids)) == len(thread_ids)


def test_httpx_sse_follows_a_reply_with_a_bearer_token_until_revoked(
    server: str, client: HttpClient
) -> None:
    token = client.new_session("alice")
    thread_id = client.new_thread(token)
    seen: list[tuple[str, str, str]] = []
    with httpx.Client(timeout=httpx.Timeout(STREAM_WAIT)) as http, connect_sse(
        http, "GET", f"{server}/chatkit/threads/{thread_id}/events",
        headers={"Authorization": f"Bearer {token}"},
    ) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        # The headers are out, so the stream follows the thread: start a reply now.
        _post_message(client, token, thread_id, "hello from httpx-sse")
        # The loop ends when the server closes the stream (each read bounded by the
        # client's timeout); revoked must be the last event before that.
        for event in source.iter_sse():
            seen.append((event.event, event.id, event.data))
            if event.event == "done":
                _revoke(client, token)
    assert seen, "no event at all"
    assert seen[-1][0] == "revoked", seen
    kinds = [kind for kind, _, _ in seen]
    assert {"message", "delta", "done", "revoked"} <= set(kinds)
    done = next(data for kind, _, data in seen if kind == "done")
    assert json.loads(done)["text"] == "hello from httpx-sse"
