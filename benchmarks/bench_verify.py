"""How much a protected request costs compared with a bare /healthz on the same process.

Two measurements, printed as a small table:

1. In-process: microseconds per ``TokenVerifier.verify`` (ES256 and EdDSA), and per full
   mixin check (verify + revocation lookup), with no HTTP around them.
2. Over HTTP: a real ``tokensvc serve`` subprocess on loopback; the same keep-alive client
   sends ``--requests`` GETs to ``/healthz`` and to a protected ChatKit route
   (``GET /chatkit/threads/{id}``), ``--concurrency`` at a time. Prints requests/s,
   p50/p99 latency and the protected/healthz ratio.

Run: ``.venv/bin/python benchmarks/bench_verify.py [--requests 3000] [--concurrency 8]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
        verify = services.verifier.verify
        is_revoked = services.revocations.is_revoked
        for _ in range(200):
            verify(issued.token, SESSION)
        start = time.perf_counter()
        for _ in range(rounds):
            verify(issued.token, SESSION)
        per_verify = (time.perf_counter() - start) / rounds * 1e6
        start = time.perf_counter()
        for _ in range(rounds):
            is_revoked(verify(issued.token, SESSION))
        per_check = (time.perf_counter() - start) / rounds * 1e6
        results.append((f"verify {algorithm}", per_verify))
        results.append((f"verify+revocation {algorithm}", per_check))
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


async def bench_http(base: str, secret: str, count: int, concurrency: int
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
        elapsed, latencies = await timed_gets(url, headers, count, concurrency)
        quantiles = statistics.quantiles(latencies, n=100)
        rows.append((name, count / elapsed, quantiles[49] * 1000, quantiles[98] * 1000))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5000)
    args = parser.parse_args()

    print("in-process (one core)")
    for name, micros in bench_in_process(args.rounds):
        print(f"  {name:<28} {micros:8.1f} us/op")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, base = start_server(workdir)
        try:
            secret = (workdir / "keys" / "extension.client-secret").read_text().strip()
            rows = asyncio.run(bench_http(base, secret, args.requests, args.concurrency))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"HTTP, one server process, {args.requests} requests, concurrency "
          f"{args.concurrency}")
    for name, rps, p50, p99 in rows:
        print(f"  {name:<28} {rps:8.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    print(f"  protected / healthz throughput ratio: {rows[1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
