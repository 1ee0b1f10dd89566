"""Several real ``tokensvc serve`` processes sharing one Redis (API.md sections 4, 5 and 8).

- two servers on different ports: tokens, revocations, stream tickets, ChatKit threads and
  their event streams work across processes, and revocations reach the other process (and
  its open streams) over Redis;
- Redis stopped and restarted, or hung, under a running server: fail closed once
  ``max_staleness`` has passed, recover afterwards, and keep the revocations the replica had
  seen;
- ``--workers 2``: one port, every worker honours a revocation, a dead worker is replaced,
  SIGTERM stops them all (even during a restart); the memory backend is refused.

Everything runs on loopback. Every wait is for a condition, with a bound generous enough for
a busy machine; how long propagation or failing closed takes is printed, never asserted
(the servers have no periodic resync, so only the Redis channel can carry a revocation
across within the bounds).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.redis_support import PrivateRedis
from tests.server_process import (
    EventStream,
    HttpClient,
    Response,
    ServerProcess,
    SseEvent,
    basic_auth,
    jwt_claims,
    run_tokensvc,
    wait_until,
    write_config,
)

# The tests that stop or freeze Redis need the replica to go stale soon; the others must
# never see it go stale, however long a busy machine keeps a server from running.
OUTAGE_STALENESS = 2.0
HEALTHY_STALENESS = 60.0
HEARTBEAT = 0.3
# How long to wait for a revocation to reach another process (API.md section 5 promises
# a second; that figure is not asserted here).
PROPAGATION = 15.0
# How long to wait for a server to fail closed once Redis is gone: its replica goes stale
# OUTAGE_STALENESS after the last confirmed sync; the rest is margin.
FAIL_CLOSED_WITHIN = OUTAGE_STALENESS + 15.0
# How long to wait for a server to be back: reconnect backoff (at most 2 s), the resync.
RECOVER_WITHIN = 30.0
# How long to wait for worker processes to start, or to be gone.
WORKERS_WITHIN = 30.0
CONSECUTIVE = 40
# How long a revocation may wait for a frozen Redis before the client gives up on it: far
# more than the server's two command timeouts, far less than forever.
REVOKE_GIVES_UP = 30.0


def _config(
    directory: Path, redis_url: str, max_staleness: float = HEALTHY_STALENESS
) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "revocation": {
            "backend": "redis",
            "redis_url": redis_url,
            "max_staleness": max_staleness,
        },
        "chatkit": {"heartbeat": HEARTBEAT},
    }
    return write_config(directory, sections)


def _ticket(client: HttpClient, token: str) -> Response:
    return client.request("POST", "/sessions/ticket", token=token)


def _poll(probe_status: Any, want: int, timeout: float, what: str) -> float:
    """Call ``probe_status()`` until it answers ``want``; the seconds that took."""
    start = time.monotonic()
    wait_until(lambda: probe_status() == want, timeout, what, interval=0.005)
    return time.monotonic() - start


def _data(event: SseEvent) -> Any:
    return json.loads(event.data)


def _assert_unavailable(answer: Response) -> None:
    assert answer.status == 503, answer.describe()
    assert answer.json()["error"] == "temporarily_unavailable"
    assert int(answer.headers["Retry-After"]) >= 1


@contextmanager
def _one_server(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, HttpClient]]:
    """One server on ``redis_url`` (soon stale without it) and a client of it; the server
    must then stop cleanly."""
    config = _config(tmp_path, redis_url, OUTAGE_STALENESS)
    with ServerProcess(tmp_path, "--config", str(config)) as server:
        url = server.serve()
        with HttpClient(url) as client:
            yield url, client
        assert server.stop() == 0, server.stderr()[-2000:]


def _await_recovery(client: HttpClient, token: str) -> None:
    """Wait until Redis is back for the server: ``token`` works and /readyz is 200."""
    _poll(lambda: _ticket(client, token).status, 200, RECOVER_WITHIN,
          "protected requests to recover")
    _poll(lambda: client.readyz().status, 200, RECOVER_WITHIN, "/readyz to recover")


# -- two servers, one Redis -----------------------------------------------------------------


@pytest.fixture
def two_servers(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, str]]:
    config = _config(tmp_path, redis_url)
    with ServerProcess(tmp_path, "--config", str(config), name="a") as a:
        url_a = a.serve()  # creates the shared key ring
        with ServerProcess(tmp_path, "--config", str(config), name="b") as b:
            url_b = b.serve()
            assert url_a != url_b
            yield url_a, url_b
            assert b.stop() == 0, b.stderr()[-2000:]
        assert a.stop() == 0, a.stderr()[-2000:]


def test_two_servers_share_tokens_revocations_tickets_and_threads(
    two_servers: tuple[str, str],
) -> None:
    url_a, url_b = two_servers
    with HttpClient(url_a) as a, HttpClient(url_b) as b:
        # Same key ring: a token minted by A is good on B.
        alice = a.new_session("alice")
        assert _ticket(b, alice).status == 200

        # DELETE /sessions/current on A: B rejects the token.
        started = time.monotonic()
        answer = a.request("DELETE", "/sessions/current", token=alice)
        assert answer.status == 204, answer.describe()
        took = _poll(lambda: _ticket(b, alice).status, 401, PROPAGATION, "B to reject")
        elapsed = time.monotonic() - started
        assert _ticket(a, alice).status == 401
        print(f"revocation A -> B: {elapsed * 1000:.1f} ms (first 401 after {took * 1000:.1f} ms)")

        # POST /sessions/revoke {"user"} on B: A rejects the token.
        bob = b.new_session("bob")
        assert _ticket(a, bob).status == 200
        started = time.monotonic()
        answer = b.request("POST", "/sessions/revoke", {"user": "bob"}, auth=basic_auth())
        assert answer.status == 200, answer.describe()
        assert answer.json() == {"revoked": True}
        _poll(lambda: _ticket(a, bob).status, 401, PROPAGATION, "A to reject")
        elapsed = time.monotonic() - started
        print(f"revocation B -> A: {elapsed * 1000:.1f} ms")
        assert b.new_session("bob")  # later sessions of that user are unaffected

        # A ChatKit thread created on A is readable on B.
        carol = a.new_session("carol")
        thread = a.new_thread(carol)
        answer = b.request("GET", f"/chatkit/threads/{thread}", token=carol)
        assert answer.status == 200, answer.describe()
        assert answer.json() == {"id": thread, "messages": []}
        # ... and invisible to another subject there too.
        dave = b.new_session("dave")
        assert b.request("GET", f"/chatkit/threads/{thread}", token=dave).status == 404

        # A stream ticket minted on A and used on B cannot be used again on A.
        ticket = _ticket(a, carol).json()["ticket"]
        events_path = f"/chatkit/threads/{thread}/events?access_token={ticket}"
        with EventStream(url_b, events_path) as stream:
            assert stream.status == 200
            with EventStream(url_a, events_path) as again:
                assert again.status == 401
                assert json.loads(again.response.read())["error"] == "invalid_token"

            # A message posted on A streams its reply to the stream open on B.
            answer = a.request(
                "POST", f"/chatkit/threads/{thread}/messages", {"text": "hello over redis"},
                token=carol,
            )
            assert answer.status == 202, answer.describe()
            response_id = answer.json()["response_id"]
            seen = stream.events_until(["done"], timeout=PROPAGATION)
            kinds = [event.event for event in seen]
            assert kinds[0] == "message"
            assert _data(seen[0])["text"] == "hello over redis"
            deltas = [_data(e) for e in seen if e.event == "delta"]
            assert [d["text"] for d in deltas] == ["hello ", "over ", "redis"]
            assert {d["response_id"] for d in deltas} == {response_id}
            assert _data(seen[-1]) == {"response_id": response_id, "text": "hello over redis"}
            ids = [int(event.id or 0) for event in seen]
            assert ids == sorted(set(ids)), ids  # thread events: strictly increasing ids
            assert ids[0] >= 1

            # The thread as B reads it now has both messages.
            answer = b.request("GET", f"/chatkit/threads/{thread}", token=carol)
            messages = answer.json()["messages"]
            assert [(m["role"], m["text"]) for m in messages] == [
                ("user", "hello over redis"),
                ("assistant", "hello over redis"),
            ]

            # A revocation made on A ends the stream open on B.
            started = time.monotonic()
            answer = a.request("DELETE", "/sessions/current", token=carol)
            assert answer.status == 204, answer.describe()
            last = stream.events_until(["revoked"], timeout=PROPAGATION)
            elapsed = time.monotonic() - started
            assert [event.event for event in last] == ["revoked"]
            print(f"stream on B revoked from A: {elapsed * 1000:.1f} ms")
            stream.expect_end(timeout=PROPAGATION)
        assert _ticket(b, carol).status == 401


# -- Redis stopped and restarted under a running server -------------------------------------


def test_redis_outage_fails_closed_and_recovers(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    with _one_server(tmp_path, private_redis.url) as (url, client):
        # Up: everything answers.
        alice = client.new_session("alice")
        bob = client.new_session("bob")
        assert _ticket(client, alice).status == 200
        assert client.readyz().status == 200
        thread = client.new_thread(alice)
        spare_ticket = _ticket(client, alice).json()["ticket"]
        # Revoked while Redis is up; remembered across the restart below.
        assert client.request("DELETE", "/sessions/current", token=bob).status == 204
        assert _ticket(client, bob).status == 401

        with EventStream(url, f"/chatkit/threads/{thread}/events", token=alice) as stream:
            assert stream.status == 200
            private_redis.stop()
            stopped = time.monotonic()

            # Down: fail closed once max_staleness has passed.
            _poll(lambda: _ticket(client, alice).status, 503, FAIL_CLOSED_WITHIN,
                  "protected requests to fail closed")
            closed_after = time.monotonic() - stopped
            _assert_unavailable(_ticket(client, alice))
            _assert_unavailable(
                client.request("GET", f"/chatkit/threads/{thread}", token=alice)
            )
            _assert_unavailable(
                client.request("GET", f"/chatkit/threads/{thread}/events"
                               f"?access_token={spare_ticket}")
            )
            _assert_unavailable(client.readyz())
            answer = client.request("GET", "/healthz")
            assert (answer.status, answer.json()) == (200, {"status": "ok"})
            # Revoking while Redis is down is a 503, never a false 200.
            _assert_unavailable(
                client.request("POST", "/sessions/revoke", {"user": "alice"},
                               auth=basic_auth())
            )
            _assert_unavailable(
                client.request("DELETE", "/sessions/current", token=alice)
            )

            # The open stream ends with an error event at its next heartbeat (here even
            # sooner: its thread store, Redis too, fails as soon as the connection drops).
            seen = stream.events_until(["error"], timeout=FAIL_CLOSED_WITHIN)
            assert [event.event for event in seen] == ["error"]
            assert _data(seen[-1]) == {"code": "temporarily_unavailable"}
            stream.expect_end(timeout=FAIL_CLOSED_WITHIN)
        print(f"failed closed {closed_after * 1000:.0f} ms after Redis stopped")

        # Back: the server reconnects, resyncs and serves again.
        private_redis.start()
        restarted = time.monotonic()
        _await_recovery(client, alice)
        print(f"recovered {(time.monotonic() - restarted) * 1000:.0f} ms after restart")
        assert client.new_thread(alice)

        # "Redis lost its data": a Redis restarted without persistence is empty, so
        # the revocations it held are gone from Redis (a server started now would not
        # know them) and so are the ChatKit threads. A running server's replica merges
        # what it resyncs instead of replacing itself with it (entries leave only by
        # expiring), so this server still rejects the token revoked before the restart.
        assert private_redis.revocation_keys() == []
        assert _ticket(client, bob).status == 401
        assert client.request("GET", f"/chatkit/threads/{thread}", token=alice).status == 404
        # Nothing was revoked by the refused revocations above.
        assert _ticket(client, alice).status == 200


def test_hung_redis_fails_closed_within_bounds(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """Redis that keeps its connections open but stops answering (SIGSTOP)."""
    with _one_server(tmp_path, private_redis.url) as (url, client):
        alice = client.new_session("alice")
        thread = client.new_thread(alice)
        with EventStream(url, f"/chatkit/threads/{thread}/events", token=alice) as stream:
            assert stream.status == 200
            private_redis.freeze()
            try:
                paused = time.monotonic()
                # The stream's thread read just waits, so it is the heartbeat's re-check
                # of the (now stale) revocation replica that ends the stream.
                seen = stream.events_until(["error"], timeout=FAIL_CLOSED_WITHIN)
                ended_after = time.monotonic() - paused
                assert [event.event for event in seen] == ["error"]
                assert _data(seen[-1]) == {"code": "temporarily_unavailable"}
                stream.expect_end(timeout=FAIL_CLOSED_WITHIN)
                _poll(lambda: _ticket(client, alice).status, 503, FAIL_CLOSED_WITHIN,
                      "protected requests to fail closed")
                _assert_unavailable(_ticket(client, alice))
                _assert_unavailable(client.readyz())
                assert client.request("GET", "/healthz").status == 200
                # A revocation waits for Redis at most about twice the command timeout
                # (2 s each), then answers 503, never a false 200; without that timeout
                # it would wait for the frozen Redis and the client would give up first.
                started = time.monotonic()
                with HttpClient(url, timeout=REVOKE_GIVES_UP) as patient:
                    answer = patient.request(
                        "POST", "/sessions/revoke", {"user": "alice"}, auth=basic_auth()
                    )
                revoke_took = time.monotonic() - started
                _assert_unavailable(answer)
            finally:
                private_redis.thaw()
        print(f"hung Redis: stream ended after {ended_after * 1000:.0f} ms, "
              f"revoke refused after {revoke_took * 1000:.0f} ms")
        _await_recovery(client, alice)


# -- --workers 2 ------------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    tasks = Path(f"/proc/{pid}/task")
    if tasks.is_dir():
        for task in tasks.iterdir():
            try:
                found.update(int(p) for p in (task / "children").read_text().split())
            except OSError:
                break  # no children file: this kernel lacks CONFIG_PROC_CHILDREN
        else:
            return found
    pgrep = shutil.which("pgrep")
    if pgrep is None:
        pytest.skip("cannot list child processes (no /proc children and no pgrep)")
    out = subprocess.run(
        [pgrep, "-P", str(pid)], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    return {int(p) for p in out.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _once(url: str, method: str, path: str, **kwargs: Any) -> Response:
    """One request on its own connection, so the kernel may hand it to either worker."""
    with HttpClient(url) as client:
        return client.request(method, path, headers={"Connection": "close"}, **kwargs)


def _serving_workers(
    server: ServerProcess, count: int, gone: frozenset[int] = frozenset()
) -> set[int]:
    """The parent's ``count`` children (none of ``gone``), once each has logged it serves."""

    def children() -> set[int] | None:
        kids = _children(server.pid)  # a dead child stays listed until it is reaped
        return kids if len(kids) == count and not kids & gone else None

    workers = wait_until(children, WORKERS_WITHIN, f"{count} worker processes")
    # The parent announces the port once it is bound; each worker logs when it serves.
    wait_until(
        lambda: all(f"(pid {pid})" in server.stderr() for pid in workers),
        WORKERS_WITHIN, "every worker to serve",
    )
    return workers


def _revoked_counts(url: str, samples: int) -> set[int]:
    """The distinct ``revoked`` rejection counts seen in ``samples`` /metrics answers."""
    found: set[int] = set()
    pattern = re.compile(r'^tokensvc_token_rejections_total\{reason="revoked"\} (\d+)$', re.M)
    for _ in range(samples):
        answer = _once(url, "GET", "/metrics")
        assert answer.status == 200, answer.describe()
        match = pattern.search(answer.body.decode())
        found.add(int(match.group(1)) if match else 0)
    return found


def test_two_workers_share_revocations_and_stop_together(
    tmp_path: Path, redis_url: str
) -> None:
    config = _config(tmp_path, redis_url)
    with ServerProcess(tmp_path, "--config", str(config), "--workers", "2") as server:
        url = server.serve()
        ready = [line for line in server.stdout().splitlines() if "listening on" in line]
        assert ready == [f"tokensvc listening on {url} (2 workers)"]
        workers = _serving_workers(server, 2)

        # Many requests, each on a new connection: any worker may answer any of them.
        tokens = [_once(url, "POST", "/sessions", body={"secret_key_id": "demo",
                                                         "user": f"user{i}"},
                        auth=basic_auth()) for i in range(10)]
        assert all(t.status == 200 for t in tokens), [t.describe() for t in tokens]
        token = tokens[0].json()["access_token"]
        thread = _once(url, "POST", "/chatkit/threads", token=token).json()["id"]
        for _ in range(20):
            answer = _once(url, "GET", f"/chatkit/threads/{thread}", token=token)
            assert answer.status == 200, answer.describe()

        # A revocation made through one request is honoured by every following request,
        # whichever worker answers it: CONSECUTIVE 401s in a row.
        started = time.monotonic()
        answer = _once(url, "DELETE", "/sessions/current", token=token)
        assert answer.status == 204, answer.describe()
        statuses: list[int] = []
        run = 0
        while run < CONSECUTIVE and time.monotonic() - started < PROPAGATION:
            status = _once(url, "GET", f"/chatkit/threads/{thread}", token=token).status
            statuses.append(status)
            run = run + 1 if status == 401 else 0
        elapsed = time.monotonic() - started
        assert run == CONSECUTIVE, statuses
        assert set(statuses) <= {200, 401}, statuses
        print(f"--workers 2: {CONSECUTIVE} consecutive 401s within {elapsed * 1000:.0f} ms "
              f"({statuses.count(200)} stale answers before)")
        # Each worker counts the revoked tokens it refused (metrics are per process): two
        # non-zero counts adding up to the 401s prove that both workers took part. The
        # kernel may hand a run of connections to one worker, so keep asking until both did.
        refused = statuses.count(401)
        counts: set[int] = set()

        def both_counted() -> bool:
            nonlocal refused, counts
            for _ in range(5):
                answer = _once(url, "GET", f"/chatkit/threads/{thread}", token=token)
                assert answer.status == 401, answer.describe()
                refused += 1
            counts = _revoked_counts(url, 6)
            if len(counts) == 1:  # both refused exactly half, or one answered every sample
                return 2 * min(counts) == refused
            return len(counts) == 2 and sum(counts) == refused and min(counts) > 0

        try:
            wait_until(both_counted, PROPAGATION, "both workers to have refused the token")
        except AssertionError as err:
            raise AssertionError(f"{err}: counts {sorted(counts)} for {refused} 401s") from None
        other = tokens[1].json()["access_token"]
        assert _once(url, "POST", "/sessions/ticket", token=other).status == 200
        assert _children(server.pid) == workers  # no worker died and was replaced

        # SIGTERM to the parent stops everything, exit status 0, no orphan left behind.
        server.signal(signal.SIGTERM)
        assert server.wait_exit(timeout=15) == 0, server.stderr()[-2000:]
        wait_until(
            lambda: not any(_alive(pid) for pid in workers), WORKERS_WITHIN, "workers to be gone"
        )
    assert "Traceback" not in server.stderr()


def test_workers_restart_a_dead_worker_and_stop_during_a_restart(
    tmp_path: Path, redis_url: str
) -> None:
    config = _config(tmp_path, redis_url)
    with ServerProcess(tmp_path, "--config", str(config), "--workers", "2") as server:
        url = server.serve()
        first = _serving_workers(server, 2)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # The parent replaces the dead worker; the service keeps answering meanwhile.
        workers = _serving_workers(server, 2, gone=frozenset({victim}))
        assert len(workers & first) == 1
        token = _once(url, "POST", "/sessions", body={"secret_key_id": "demo"},
                      auth=basic_auth()).json()["access_token"]
        for _ in range(10):
            assert _once(url, "POST", "/sessions/ticket", token=token).status == 200

        # SIGTERM while the parent pauses before restarting another dead worker (it logs
        # that it will restart, then pauses): it must not start a worker it will never
        # stop, and it must exit.
        os.kill(min(workers), signal.SIGKILL)
        wait_until(lambda: server.stderr().count("restarting") == 2, WORKERS_WITHIN,
                   "the parent to see the second worker die")
        server.signal(signal.SIGTERM)
        assert server.wait_exit(timeout=15) == 0, server.stderr()[-2000:]
        wait_until(
            lambda: not any(_alive(pid) for pid in workers), WORKERS_WITHIN, "workers to be gone"
        )


def test_two_workers_refuse_the_memory_backend(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"revocation": {"backend": "memory"}})
    result = run_tokensvc(
        "serve", "--port", "0", "--workers", "2", "--config", str(config), cwd=tmp_path,
        timeout=20,
    )
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "workers" in lines[0], lines[0]
    assert "redis" in lines[0], lines[0]
    assert "listening on" not in result.stdout


def test_session_token_carries_no_process_state(two_servers: tuple[str, str]) -> None:
    """The same session refreshed on A and used on B: sessions need no sticky routing."""
    url_a, url_b = two_servers
    with HttpClient(url_a) as a, HttpClient(url_b) as b:
        first = a.new_session("erin")
        answer = b.request("POST", "/sessions/refresh", token=first)
        assert answer.status == 200, answer.describe()
        second = answer.json()["access_token"]
        assert jwt_claims(second)["sid"] == jwt_claims(first)["sid"]
        assert _ticket(a, second).status == 200
        # Ending the session on B rejects both tokens of it on A.
        assert b.request("DELETE", "/sessions/current", token=second).status == 204
        _poll(lambda: _ticket(a, first).status, 401, PROPAGATION, "A to reject")
        assert _ticket(a, second).status == 401
