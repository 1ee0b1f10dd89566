"""How much a protected request costs compared with a bare /healthz on the same process.

Two measurements, printed as a small table:

1. In-process: microseconds per ``TokenVerifier.verify`` (ES256 and EdDSA) for a token seen
   for the first time (signature and claims with PyJWT) and for one seen before (the
   verified-token cache), and per full check of a seen token (verify + revocation lookup),
   with no HTTP around them.
2. Over HTTP: a real ``tokensvc serve`` subprocess on loopback, loaded with GETs to
   ``/healthz`` and to a protected ChatKit route (``GET /chatkit/threads/{id}``),
   ``--concurrency`` keep-alive connections at a time. With ``wrk`` on the PATH (Debian
   package ``wrk``) it drives the load for ``--seconds`` each; otherwise a Python client
   sends ``--requests`` each (slower: the client then costs as much CPU as the server).
   Prints requests/s, p50/p99 latency and the protected/healthz throughput ratio.

Run: ``.venv/bin/python benchmarks/bench_verify.py [--concurrency 8] [--seconds 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import make_config, make_ring, make_services  # noqa: E402
from tokensvc.claims import SESSION  # noqa: E402
from tokensvc.redacted import Secret  # noqa: E402
from tokensvc.tokens import TokenVerifier  # noqa: E402


def per_op(start: float, rounds: int) -> float:
    """Microseconds per operation since ``start``."""
    return (time.perf_counter() - start) / rounds * 1e6


def bench_in_process(rounds: int) -> list[tuple[str, float]]:
    results = []
    for algorithm in ("ES256", "EdDSA"):
        config = make_config(algorithm=algorithm)
        services = make_services(config=config, ring=make_ring(algorithm))
        asyncio.run(services.revocations.start())
        issued = services.issuer.issue_session(
            client_id="extension", sub="bench", skid="demo",
            secret=Secret("sk-bench"), scope="chatkit", ttl=3600,
        )
        uncached = TokenVerifier(config.tokens, services.ring, cache_size=0).verify
        verify = services.verifier.verify
        is_revoked = services.revocations.is_revoked
        for _ in range(200):
            uncached(issued.token, SESSION)
            verify(issued.token, SESSION)
        start = time.perf_counter()
        for _ in range(rounds):
            uncached(issued.token, SESSION)
        results.append((f"verify {algorithm}, first sight", per_op(start, rounds)))
        start = time.perf_counter()
        for _ in range(rounds):
            verify(issued.token, SESSION)
        results.append((f"verify {algorithm}, seen before", per_op(start, rounds)))
        start = time.perf_counter()
        for _ in range(rounds):
            is_revoked(verify(issued.token, SESSION))
        results.append((f"verify+revocation {algorithm}, seen", per_op(start, rounds)))
    return results


def start_server(workdir: Path) -> tuple[subprocess.Popen[str], str]:
    (workdir / "secrets.toml").write_text('demo = "sk-bench-secret"\n')
    os.chmod(workdir / "secrets.toml", 0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokensvc", "serve", "--port", "0", "--keys-dir", "keys"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("tokensvc listening on "):
            return proc, line.split()[-1]
    proc.kill()
    raise SystemExit("server did not start")


async def timed_gets(url: str, headers: dict[str, str], count: int, concurrency: int
                     ) -> tuple[float, list[float]]:
    client = AsyncHTTPClient(max_clients=concurrency)
    latencies: list[float] = []
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            start = time.perf_counter()
            response = await client.fetch(HTTPRequest(url, headers=headers))
            latencies.append(time.perf_counter() - start)
            assert response.code == 200

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def wrk(url: str, headers: dict[str, str], seconds: int, concurrency: int
        ) -> tuple[float, float, float]:
    """requests/s, p50 ms, p99 ms measured by wrk (one thread: the server has the other core)."""
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", url]
    for name, value in headers.items():
        command[1:1] = ["-H", f"{name}: {value}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            timeout=seconds + 30).stdout
    if re.search(r"Non-2xx or 3xx responses", output):
        raise SystemExit(f"wrk saw failed requests:\n{output}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def percentile(name: str) -> float:
        match = re.search(rf"^\s+{name}%\s+([\d.]+)(us|ms|s)", output, re.M)
        assert match, output
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    return rps, percentile("50"), percentile("99")


async def bench_http(base: str, secret: str, count: int, concurrency: int, seconds: int
                     ) -> list[tuple[str, float, float, float]]:
    client = AsyncHTTPClient()
    session = await client.fetch(
        base + "/sessions", method="POST", auth_username="extension", auth_password=secret,
        headers={"Content-Type": "application/json"},
        body=json.dumps({"secret_key_id": "demo", "user": "bench"}),
    )
    token = json.loads(session.body)["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    thread = await client.fetch(base + "/chatkit/threads", method="POST", headers=bearer,
                                body=b"")
    thread_url = f"{base}/chatkit/threads/{json.loads(thread.body)['id']}"
    rows = []
    for name, url, headers in (("GET /healthz", base + "/healthz", {}),
                               ("GET /chatkit/threads/{id}", thread_url, bearer)):
        await timed_gets(url, headers, min(200, count), concurrency)  # warm-up
        if shutil.which("wrk"):
            rows.append((name, *wrk(url, headers, seconds, concurrency)))
            continue
        elapsed, latencies = await timed_gets(url, headers, count, concurrency)
        quantiles = statistics.quantiles(latencies, n=100)
        rows.append((name, count / elapsed, quantiles[49] * 1000, quantiles[98] * 1000))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()

    print("in-process (one core)")
    for name, micros in bench_in_process(args.rounds):
        print(f"  {name:<36} {micros:8.1f} us/op")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, base = start_server(workdir)
        try:
            secret = (workdir / "keys" / "extension.client-secret").read_text().strip()
            rows = asyncio.run(
                bench_http(base, secret, args.requests, args.concurrency, args.seconds)
            )
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    load = (f"wrk, {args.seconds} s each" if shutil.which("wrk")
            else f"Python client, {args.requests} requests each")
    print(f"HTTP, one server process, concurrency {args.concurrency}, {load}")
    for name, rps, p50, p99 in rows:
        print(f"  {name:<36} {rps:8.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    print(f"  protected / healthz throughput ratio: {rows[1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
