"""The pre-fork supervisor behind ``tokensvc serve --workers N``.

The parent has bound the listening sockets; it forks N children that serve on them
(Tornado's multi-process model), and then only supervises: it forwards SIGTERM, SIGINT and
SIGHUP to every child, restarts a child that dies unexpectedly, and gives up when children
keep dying. It announces readiness only once every child has said it is serving, through a
pipe, so the ready line never precedes a worker that then fails to start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable
from types import FrameType

__all__ = ["EXIT_GAVE_UP", "EXIT_START_FAILED", "Supervisor"]

log = logging.getLogger("tokensvc.workers")

EXIT_GAVE_UP = 1
EXIT_START_FAILED = 2
START_TIMEOUT = 120.0
# More restarts than this within the window means something is wrong with every worker
# (configuration, a dependency), not a one-off crash: stop rather than spin.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

ServeChild = Callable[[int, int | None], int]
"""Runs in a child: ``serve(index, ready_fd)`` serves until told to stop and returns the
exit status. When ``ready_fd`` is not None it writes one byte to it once it is serving."""


class Supervisor:
    """Forks and supervises ``workers`` children running ``serve``."""

    def __init__(self, workers: int, serve: ServeChild) -> None:
        self.workers = workers
        self._serve = serve
        self._children: dict[int, int] = {}  # pid -> worker index
        self._stopping = False
        self._restarts: deque[float] = deque()

    def run(self, on_ready: Callable[[], None]) -> int:
        """Serve until SIGTERM/SIGINT; returns the process exit status."""
        for sig in _FORWARDED:
            signal.signal(sig, self._forward)
        read_fd, write_fd = os.pipe()
        try:
            for index in range(self.workers):
                self._start(index, ready_fd=write_fd)
            os.close(write_fd)
            write_fd = -1
            if not self._wait_until_ready(read_fd):
                self._stop_all()
                self._reap_all()
                return EXIT_START_FAILED
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        if not self._stopping:
            on_ready()
        return self._supervise()

    def _start(self, index: int, ready_fd: int | None) -> None:
        # Forwarded signals wait while forking: a new child must not run the parent's
        # handler, and the parent must know a child's pid before it forwards anything to it.
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            if self._stopping:  # e.g. SIGTERM during a restart's pause: start nothing
                return
            pid = os.fork()
            if pid == 0:
                self._run_child(index, ready_fd)
            self._children[pid] = index
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)

    def _run_child(self, index: int, ready_fd: int | None) -> None:
        # Stop signals get their default action until the serving loop installs its own;
        # SIGHUP is ignored meanwhile, since its default action would end the process.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        code = 1
        try:
            code = self._serve(index, ready_fd)
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            os._exit(code)  # never return into the parent's code

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                os.kill(pid, signum)

    def _stop_all(self) -> None:
        self._forward(signal.SIGTERM, None)

    def _wait_until_ready(self, read_fd: int) -> bool:
        """True once every child reported ready; False if one exits first or time runs out."""
        ready = 0
        deadline = time.monotonic() + START_TIMEOUT
        while ready < self.workers and not self._stopping:
            if time.monotonic() > deadline:
                log.error("workers did not start within %.0f s", START_TIMEOUT)
                return False
            readable, _, _ = select.select([read_fd], [], [], 0.2)
            if readable:
                ready += len(os.read(read_fd, 64))
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                self._children.pop(pid, None)
                code = os.waitstatus_to_exitcode(status)
                log.error("a worker exited while starting (%d)", code)
                return False
        return True

    def _supervise(self) -> int:
        exit_code = 0
        while self._children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index = self._children.pop(pid, -1)
            if index < 0 or self._stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > RESTART_WINDOW:
                self._restarts.popleft()
            if len(self._restarts) >= MAX_RESTARTS:
                log.error(
                    "worker %d exited (%d); %d restarts within %.0f s, stopping",
                    index,
                    code,
                    len(self._restarts),
                    RESTART_WINDOW,
                )
                exit_code = EXIT_GAVE_UP
                self._stop_all()
                continue
            self._restarts.append(now)
            log.warning("worker %d exited (%d); restarting", index, code)
            time.sleep(min(1.0, 0.2 * len(self._restarts)))
            self._start(index, ready_fd=None)
        return exit_code

    def _reap_all(self) -> None:
        deadline = time.monotonic() + 10.0
        while self._children and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                self._children.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in list(self._children):  # did not stop in time
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
