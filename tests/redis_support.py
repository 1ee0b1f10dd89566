"""A ``redis-server`` of the tests' own, to stop, freeze (SIGSTOP) and bring back.

Used by the ``private_redis`` fixture (tests/conftest.py) and, when no
``TOKENSVC_TEST_REDIS_URL`` is given, by the session-wide ``redis_server_url`` fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

#: Set (to anything) to make a missing ``redis-server`` binary a failure, not a skip.
REQUIRE_REDIS_ENV = "TOKENSVC_TEST_REQUIRE_REDIS"
#: How long a redis-server may take to start listening, or to be stopped by SIGSTOP.
STATE_CHANGE_WITHIN = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` without persistence that a test may stop, freeze and start again."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STATE_CHANGE_WITHIN
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.02)

    def freeze(self) -> None:
        """SIGSTOP: the sockets stay open but nothing answers (a hung Redis).

        Returns once the process is stopped: the signal takes effect asynchronously, and a
        busy machine could otherwise let Redis answer a command sent just after this call.
        """
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        stat = Path(f"/proc/{self.proc.pid}/stat")
        if not stat.exists():
            return  # no procfs: nothing to watch
        deadline = time.monotonic() + STATE_CHANGE_WITHIN
        # The state is the field after the parenthesised command name: T once stopped.
        while stat.read_text().rpartition(")")[2].split()[0] not in ("T", "t"):
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server did not stop within {STATE_CHANGE_WITHIN:g} s")
            time.sleep(0.005)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a frozen server would not act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def revocation_keys(self) -> list[bytes]:
        import redis

        with redis.Redis.from_url(self.url) as client:
            return list(client.scan_iter(match="tokensvc:rev:*"))


def redis_server_binary() -> str:
    """The ``redis-server`` binary; skip without it, or fail if REQUIRE_REDIS_ENV is set."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get(REQUIRE_REDIS_ENV):
            pytest.fail(f"redis-server is required ({REQUIRE_REDIS_ENV} is set)")
        pytest.skip("needs the redis-server binary to stop, freeze and restart Redis")
    return binary


@contextmanager
def private_redis_server(workdir: Path) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis` working in ``workdir``, stopped afterwards."""
    binary = redis_server_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    server = PrivateRedis(binary, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
