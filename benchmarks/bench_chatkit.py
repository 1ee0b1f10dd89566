"""Streamed ChatKit answers per second: tokensvc's ``POST /chatkit`` against the official SDK.

Both servers answer ``threads.add_user_message`` with the offline echo reply: tokensvc with
its built-in echo model (``[chatkit] upstream_url = ""``), the SDK's ``ChatKitServer`` with
``benchmarks/chatkit_sdk_server.py``, an in-memory store and a ``respond()`` that sends the
same deltas at the same pace. Each is a real process on loopback, pinned with ``taskset``:

- tokensvc: ``python -m tokensvc serve --port 0 --config <tmp>/tokensvc.toml``, the
  ChatKit limits and the client rate limit raised so none of them throttles the run, and a
  session token from ``POST /sessions`` on every request;
- the SDK: ``openai-chatkit`` (pinned as ``tests/chatkit_sdk.py`` pins it) with uvicorn in
  ``.chatkit-sdk-venv``, the venv the tests build; built here if it is missing, and
  uvicorn added to it if need be (its import name ``chatkit`` is this project's too, so it
  can never run in this interpreter). A second SDK process, "SDK*", runs the same server
  with ``--reuse-request-adapter``: ``ChatKitServer.process()`` in SDK 1.6.5 builds a new
  pydantic ``TypeAdapter`` for every request, and SDK* shows the SDK without that cost
  (``--no-sdk-tuned`` leaves it out).

With three CPUs or more, tokensvc, the SDK servers and this process each get their own;
on two, both kinds of server share the first and the load generator has the second. Only
one server is loaded at a time, so they never compete.

The load generator is this process, on its own CPU: ``--concurrency`` clients, each with
one keep-alive HTTP/1.1 connection (raw asyncio, chunked bodies decoded). Per block each
client creates its thread (``threads.create``), then posts ``add_user_message`` on it over
and over for ``--warmup`` + ``--duration`` seconds. Only the last ``--duration`` seconds
count: answers completed per second (every event through the assistant's
``thread.item.done``, checked), and for requests sent and answered inside that window the
time from sending to the first ``assistant_message.content_part.text_delta`` and to the
end of the answer. Blocks alternate ABBA over ``--rounds``, one server loaded at a time.

Run: ``.venv/bin/python benchmarks/bench_chatkit.py [--concurrency 16] [--duration 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
SDK_SERVER = Path(__file__).resolve().parent / "chatkit_sdk_server.py"
# The same venv, pin and stamp as tests/chatkit_sdk.py, so each reuses what the other built.
SDK_PIN = "openai-chatkit==1.6.5"
SDK_VENV = ROOT / ".chatkit-sdk-venv"
SDK_STAMP = SDK_VENV / "tokensvc-pin.txt"
SDK_EXTRAS = ["uvicorn"]  # starlette comes with the SDK
BUILD_TIMEOUT = 600.0
START_TIMEOUT = 60.0  # the SDK imports openai-agents and mcp: seconds on a busy machine
STOP_TIMEOUT = 15.0

CLIENT_ID = "bench"
CLIENT_SECRET = "bench-client-secret-0123456789abcdef"  # noqa: S105 - a throwaway local secret
DELTA = b'"assistant_message.content_part.text_delta"'
ITEM_DONE = b'"thread.item.done"'
SENTENCE = ("the quick brown fox jumps over the lazy dog while the panel streams every word of "
            "its answer back to the user who asked for it")

TOKENSVC_READY = re.compile(r"^tokensvc listening on http://([\d.]+):(\d+)", re.M)
# chatkit/upstream.py's split of a text into the echo model's deltas.
WORDS = re.compile(r"\s*\S+\s*|\s+")
SDK_READY = re.compile(r"^chatkit-sdk listening on http://([\d.]+):(\d+) \((.*)\)", re.M)


# -- the SDK's venv -----------------------------------------------------------------------------


def _sdk_has(python: Path, modules: str) -> bool:
    probe = subprocess.run([str(python), "-I", "-c", f"import {modules}"],
                           capture_output=True, timeout=120, check=False)
    return probe.returncode == 0


def sdk_python() -> Path:
    """The SDK venv's interpreter, with the pinned SDK and uvicorn (built or completed here)."""
    python = SDK_VENV / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    try:
        if not (python.exists() and SDK_STAMP.exists() and SDK_STAMP.read_text() == SDK_PIN):
            print(f"building {SDK_VENV.name} with {SDK_PIN} (once)", flush=True)
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(SDK_VENV)],
                           check=True, timeout=BUILD_TIMEOUT)
            subprocess.run([*pip, SDK_PIN, *SDK_EXTRAS], check=True, timeout=BUILD_TIMEOUT)
            SDK_STAMP.write_text(SDK_PIN)
        elif not _sdk_has(python, "uvicorn, starlette"):
            print(f"adding {' '.join(SDK_EXTRAS)} to {SDK_VENV.name}", flush=True)
            subprocess.run([*pip, *SDK_EXTRAS], check=True, timeout=BUILD_TIMEOUT)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        raise SystemExit(f"bench_chatkit: cannot set up {SDK_VENV} ({err}); "
                         "the first run needs PyPI") from None
    return python


# -- server processes ---------------------------------------------------------------------------


@dataclass
class Server:
    """One pinned server process, its output in files (no pipe can fill up and stall it)."""

    name: str
    argv: list[str]
    cwd: Path
    ready: re.Pattern[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    host: str = ""
    port: int = 0
    detail: str = ""
    _files: list[IO[bytes]] = field(default_factory=list)

    def start(self) -> None:
        out = open(self.cwd / f"{self.name}.out", "wb")  # noqa: SIM115 - closed in stop()
        self._files = [out]
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT)

    def output(self) -> str:
        return (self.cwd / f"{self.name}.out").read_text(encoding="utf-8", errors="replace")

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = self.ready.search(self.output())
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                self.detail = match.group(3) if match.re.groups > 2 else ""
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not start:\n{self.output()[-3000:]}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        for fh in self._files:
            fh.close()


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TOKENSVC_", "PYTHON", "OPENAI_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tokensvc_server(workdir: Path, cpu: int) -> Server:
    """tokensvc on its defaults plus limits that cannot throttle a benchmark."""
    digest = hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()
    (workdir / "tokensvc.toml").write_text(
        "[keys]\n"
        'dir = "keys"\n'
        "\n"
        f"[clients.{CLIENT_ID}]\n"
        f'secret_sha256 = "{digest}"\n'
        "rate_limit = 100000000\n"
        "\n"
        "[chatkit]\n"
        'upstream_url = ""\n'
        "writes_per_minute = 100000000\n"
        "max_replies_per_subject = 100000\n"
        "max_streams_per_subject = 100000\n"
        "max_thread_messages = 10000000\n"
    )
    (workdir / "secrets.toml").write_text('demo = "sk-bench-upstream-secret"\n')
    (workdir / "secrets.toml").chmod(0o600)
    argv = ["taskset", "-c", str(cpu), sys.executable, "-m", "tokensvc", "serve",
            "--port", "0", "--config", str(workdir / "tokensvc.toml")]
    return Server("tokensvc", argv, workdir, TOKENSVC_READY, clean_env())


def sdk_server(workdir: Path, cpu: int, python: Path, *, access_log: bool, tuned: bool
               ) -> Server:
    # -I and a working directory without a chatkit/ folder: `import chatkit` is the SDK.
    argv = ["taskset", "-c", str(cpu), str(python), "-I", str(SDK_SERVER), "--port", "0",
            "--access-log" if access_log else "--no-access-log"]
    if tuned:
        argv.append("--reuse-request-adapter")
    return Server("sdk-tuned" if tuned else "sdk", argv, workdir, SDK_READY, clean_env())


LABELS = {"tokensvc": "tokensvc", "sdk": "SDK", "sdk-tuned": "SDK*"}


# -- the load generator -------------------------------------------------------------------------


class BadAnswer(Exception):
    """An answer that is not a complete streamed reply (status, events)."""


@dataclass
class Answer:
    status: int
    body: bytes
    first_delta: float  # perf_counter() when the first text delta arrived; 0.0 if none
    ended: float


class Connection:
    """One keep-alive HTTP/1.1 connection; chunked and Content-Length bodies."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def head(self, path: str, headers: dict[str, str]) -> bytes:
        """The request line and headers, all but Content-Length."""
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Content-Type: application/json",
                 *(f"{name}: {value}" for name, value in headers.items())]
        return ("\r\n".join(lines) + "\r\n").encode()

    async def post(self, head: bytes, body: bytes) -> Answer:
        reader, writer = self._reader, self._writer
        assert reader is not None
        assert writer is not None
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status_and_headers = await reader.readuntil(b"\r\n\r\n")
        status = int(status_and_headers[9:12])
        lowered = status_and_headers.lower()
        first_delta = 0.0
        if b"transfer-encoding: chunked" in lowered:
            parts: list[bytes] = []
            while True:
                size = int((await reader.readline()).split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers are sent
                    break
                chunk = (await reader.readexactly(size + 2))[:-2]
                # An event is never split across chunks by either server (one write each).
                if not first_delta and DELTA in chunk:
                    first_delta = time.perf_counter()
                parts.append(chunk)
            body_in = b"".join(parts)
        else:
            match = re.search(rb"content-length: *(\d+)", lowered)
            body_in = await reader.readexactly(int(match.group(1))) if match else b""
        return Answer(status, body_in, first_delta, time.perf_counter())


def events_of(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: ")]


def check_reply(answer: Answer, deltas: int) -> None:
    """Cheap checks for every measured answer: status, every delta, both items done."""
    if answer.status != 200:
        raise BadAnswer(f"HTTP {answer.status}: {answer.body[:300]!r}")
    if answer.body.count(DELTA) != deltas or answer.body.count(ITEM_DONE) != 2:
        raise BadAnswer(f"incomplete reply: {answer.body[-300:]!r}")
    if b'"type":"error"' in answer.body:
        raise BadAnswer(f"error event: {answer.body[-300:]!r}")


def user_input(text: str) -> dict[str, Any]:
    return {"content": [{"type": "input_text", "text": text}], "attachments": [],
            "inference_options": {}}


def add_message(thread_id: str, text: str) -> bytes:
    return json.dumps({"type": "threads.add_user_message",
                       "params": {"thread_id": thread_id, "input": user_input(text)}}).encode()


async def session_token(host: str, port: int) -> str:
    conn = Connection(host, port)
    await conn.open()
    try:
        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        answer = await conn.post(conn.head("/sessions", {"Authorization": f"Basic {basic}"}),
                                 json.dumps({"secret_key_id": "demo", "user": "bench"}).encode())
    finally:
        conn.close()
    if answer.status != 200:
        raise SystemExit(f"POST /sessions answered {answer.status}: {answer.body[:300]!r}")
    token: str = json.loads(answer.body)["access_token"]
    return token


async def conversation(host: str, port: int, headers: dict[str, str], text: str
                       ) -> list[dict[str, Any]]:
    """threads.create then one add_user_message, every event parsed: the second's events."""
    conn = Connection(host, port)
    await conn.open()
    try:
        head = conn.head("/chatkit", headers)
        created = await conn.post(head, json.dumps(
            {"type": "threads.create", "params": {"input": user_input(text)}}).encode())
        check_reply(created, len(WORDS.findall(text)))
        thread_id = events_of(created.body)[0]["thread"]["id"]
        added = await conn.post(head, add_message(thread_id, text))
        check_reply(added, len(WORDS.findall(text)))
    finally:
        conn.close()
    events = events_of(added.body)
    deltas = "".join(e["update"]["delta"] for e in events
                     if e.get("update", {}).get("type", "").endswith(".text_delta"))
    if deltas != text or events[-1]["item"]["content"][0]["text"] != text:
        raise SystemExit(f"the echo reply is not the user's text: {deltas!r}")
    return events


def shape(events: list[dict[str, Any]]) -> list[str]:
    """Each event's type, with the item update's type for thread.item.updated."""
    return [e["type"] + (":" + e["update"]["type"].rsplit(".", 1)[-1] if "update" in e else "")
            for e in events]


@dataclass
class Block:
    server: str
    answers_per_s: float
    first_delta: list[float]  # seconds, requests sent and answered inside the window
    total: list[float]
    server_cpu_s: float
    client_cpu_s: float
    answered: int
    errors: list[str]


async def run_block(server: Server, headers: dict[str, str], text: str, concurrency: int,
                    warmup: float, duration: float) -> Block:
    deltas = len(WORDS.findall(text))
    conns = [Connection(server.host, server.port) for _ in range(concurrency)]
    await asyncio.gather(*(conn.open() for conn in conns))
    created = json.dumps({"type": "threads.create", "params": {"input": user_input(text)}})
    bodies = []
    for conn in conns:  # one thread per client, made by the client's first request
        answer = await conn.post(conn.head("/chatkit", headers), created.encode())
        check_reply(answer, deltas)
        bodies.append(add_message(events_of(answer.body)[0]["thread"]["id"], text))
    samples: list[tuple[float, float, float]] = []
    errors: list[str] = []
    start = time.perf_counter() + warmup
    stop = start + duration

    async def client(conn: Connection, body: bytes) -> None:
        head = conn.head("/chatkit", headers)
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            answer = await conn.post(head, body)
            try:
                check_reply(answer, deltas)
            except BadAnswer as err:
                errors.append(str(err))
                return
            samples.append((sent, answer.first_delta, answer.ended))

    cpu: dict[str, float] = {}

    async def meter() -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        cpu["server"], cpu["client"] = server.cpu_seconds(), time.process_time()
        await asyncio.sleep(max(0.0, stop - time.perf_counter()))
        cpu["server"] = server.cpu_seconds() - cpu["server"]
        cpu["client"] = time.process_time() - cpu["client"]

    try:
        await asyncio.wait_for(
            asyncio.gather(meter(), *(client(c, b) for c, b in zip(conns, bodies, strict=True))),
            warmup + duration + 60,
        )
    finally:
        for conn in conns:
            conn.close()
    done = [s for s in samples if start <= s[2] <= stop]
    inside = [s for s in done if s[0] >= start]
    return Block(
        server=server.name,
        answers_per_s=len(done) / duration,
        first_delta=[first - sent for sent, first, _ in inside],
        total=[ended - sent for sent, _, ended in inside],
        server_cpu_s=cpu.get("server", float("nan")),
        client_cpu_s=cpu.get("client", float("nan")),
        answered=len(done),
        errors=errors,
    )


# -- the report ---------------------------------------------------------------------------------


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def figures(blocks: list[Block], duration: float) -> dict[str, float]:
    """One server's figures over its blocks (rates: median of blocks; latencies: pooled)."""
    answered = sum(b.answered for b in blocks) or 1
    first = [v for b in blocks for v in b.first_delta]
    total = [v for b in blocks for v in b.total]
    return {
        "rate": statistics.median(b.answers_per_s for b in blocks),
        "fd50": percentile(first, 50) * 1000,
        "fd99": percentile(first, 99) * 1000,
        "t50": percentile(total, 50) * 1000,
        "t99": percentile(total, 99) * 1000,
        "cpu": sum(b.server_cpu_s for b in blocks) / answered * 1000,
        "busy": sum(b.server_cpu_s for b in blocks) / (duration * len(blocks)),
        "client": sum(b.client_cpu_s for b in blocks) / (duration * len(blocks)),
    }


ROWS = (
    ("answers/s (median of rounds)", "rate", ".1f"),
    ("first text delta p50, ms", "fd50", ".2f"),
    ("first text delta p99, ms", "fd99", ".2f"),
    ("complete answer p50, ms", "t50", ".2f"),
    ("complete answer p99, ms", "t99", ".2f"),
    ("server CPU per answer, ms", "cpu", ".2f"),
    ("server process's share of its CPU", "busy", ".0%"),
    ("load generator's share of its CPU", "client", ".0%"),
)


def report(blocks: list[Block], servers: list[Server], args: argparse.Namespace,
           cpus: tuple[int, int, int], text: str) -> None:
    names = [server.name for server in servers]
    by = {name: [b for b in blocks if b.server == name] for name in names}
    figs = {name: figures(by[name], args.duration) for name in names}
    peers = names[1:]
    # Throughput ratios pair the blocks of one round, measured next to each other.
    round_ratios = {
        peer: [t.answers_per_s / o.answers_per_s
               for t, o in zip(by["tokensvc"], by[peer], strict=True) if o.answers_per_s]
        for peer in peers
    }
    deltas = len(WORDS.findall(text))
    print()
    print(f"POST /chatkit threads.add_user_message, echo reply of {deltas} text deltas, "
          f"{args.concurrency} clients; {args.rounds} rounds x {args.duration:g} s "
          f"(+{args.warmup:g} s warm-up) per server, ABBA")
    print(f"tokensvc on CPU {cpus[0]}, SDK on CPU {cpus[1]} (uvicorn {servers[1].detail}), "
          f"load generator on CPU {cpus[2]}; one server loaded at a time")
    head = "".join(f"{LABELS[n]:>10}" for n in names)
    head += "".join(f"{'tokensvc/' + LABELS[p]:>15}" for p in peers)
    print(f"  {'':<34}{head}")
    for label, key, fmt in ROWS:
        line = f"  {label:<34}" + "".join(f"{figs[n][key]:>10{fmt}}" for n in names)
        if key not in ("busy", "client"):
            for peer in peers:
                ratio = figs["tokensvc"][key] / figs[peer][key] if figs[peer][key] else 0.0
                if key == "rate" and round_ratios[peer]:
                    ratio = statistics.median(round_ratios[peer])
                line += f"{ratio:>15.2f}"
        print(line)
    for peer in peers:
        print(f"  tokensvc/{LABELS[peer]} throughput per round: "
              + " ".join(f"{r:.2f}" for r in round_ratios[peer]))
    print("  ratios: above 1 means tokensvc is faster for answers/s; below 1 for latency and CPU")
    if "sdk-tuned" in names:
        print("  SDK* is the SDK with its request TypeAdapter built once "
              "(--reuse-request-adapter), not as shipped")
    errors = [e for b in blocks for e in b.errors]
    print(f"  bad answers: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print("rerun: .venv/bin/python benchmarks/bench_chatkit.py "
          f"--concurrency {args.concurrency} --duration {args.duration:g} "
          f"--warmup {args.warmup:g} --rounds {args.rounds} --words {args.words}"
          + ("" if args.sdk_tuned else " --no-sdk-tuned"))


# -- main ---------------------------------------------------------------------------------------


def default_cpus() -> tuple[int, int, int]:
    """tokensvc, SDK, load generator: three CPUs if there are, else the servers on one."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 3:
        return cpus[0], cpus[1], cpus[2]
    if len(cpus) == 2:
        return cpus[0], cpus[0], cpus[1]
    raise SystemExit("bench_chatkit: needs at least 2 CPUs")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[None]:
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield
    finally:
        for server in servers:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16, help="clients (default 16)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="measured seconds per block (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="unrecorded seconds before each block (default 2)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of one block per server, ABBA (default 2)")
    parser.add_argument("--words", type=int, default=12,
                        help="words of the user message, hence text deltas (default 12)")
    parser.add_argument("--sdk-access-log", action=argparse.BooleanOptionalAction,
                        default=True, help="uvicorn's access log (default on: tokensvc "
                        "writes one access line per request too)")
    parser.add_argument("--sdk-tuned", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the SDK with its request TypeAdapter built once "
                        "(default on)")
    parser.add_argument("--cpus", type=lambda s: tuple(int(c) for c in s.split(",")),
                        help="tokensvc,sdk,client CPUs (default 0,1,2, or 0,0,1 on 2 CPUs)")
    args = parser.parse_args()
    if args.concurrency < 1 or args.duration <= 0 or args.rounds < 1 or args.words < 1:
        parser.error("--concurrency, --duration, --rounds and --words must be positive")
    cpus = args.cpus or default_cpus()
    words = SENTENCE.split()
    text = " ".join((words * (args.words // len(words) + 1))[: args.words])
    # SIGTERM unwinds like Ctrl-C, so the servers are stopped either way.
    signal.signal(signal.SIGTERM, _interrupted)
    python = sdk_python()
    os.sched_setaffinity(0, {cpus[2]})
    with tempfile.TemporaryDirectory(prefix="bench-chatkit-") as tmp:
        servers = [tokensvc_server(Path(tmp), cpus[0])]
        for tuned in (False, True) if args.sdk_tuned else (False,):
            servers.append(sdk_server(Path(tmp), cpus[1], python,
                                      access_log=args.sdk_access_log, tuned=tuned))
        with running(*servers):
            ours = servers[0]
            token = asyncio.run(session_token(ours.host, ours.port))
            headers = {s.name: {} for s in servers}
            headers["tokensvc"] = {"Authorization": f"Bearer {token}"}
            shapes = {s.name: shape(asyncio.run(
                conversation(s.host, s.port, headers[s.name], text))) for s in servers}
            for server in servers[1:]:
                if shapes[server.name] != shapes["tokensvc"]:
                    print(f"note: the streams differ:\n  tokensvc {shapes['tokensvc']}\n"
                          f"  {server.name} {shapes[server.name]}")
            print(f"each answer: {len(shapes['tokensvc'])} events, "
                  + ", ".join(shapes["tokensvc"][:4]) + ", ...", flush=True)
            blocks = []
            for index in range(args.rounds):
                for server in servers if index % 2 == 0 else servers[::-1]:
                    block = asyncio.run(run_block(server, headers[server.name], text,
                                                  args.concurrency, args.warmup,
                                                  args.duration))
                    blocks.append(block)
                    print(f"round {index + 1} {server.name:<9} {block.answers_per_s:8.1f} "
                          f"answers/s  first delta p50 "
                          f"{percentile(block.first_delta, 50) * 1000:7.2f} ms  p99 "
                          f"{percentile(block.first_delta, 99) * 1000:7.2f} ms"
                          + (f"  {len(block.errors)} bad answers" if block.errors else ""),
                          flush=True)
    report(blocks, servers, args, cpus, text)
    return 1 if any(b.errors for b in blocks) else 0


if __name__ == "__main__":
    sys.exit(main())
