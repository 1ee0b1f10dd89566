"""``tokensvc serve``: start-up checks, one or N worker processes, reload and shutdown.

Start-up order matters: configuration, key ring and clients are checked in the parent
before any socket is bound or process forked, so a bad set-up stops with one line and
exit status 2. With ``--workers N`` the parent binds the port once and hands over to
:mod:`tokensvc.workers`, which forks the children that share it and supervises them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import tornado.httpserver
import tornado.netutil

from tokensvc.app import Extension, build_services, load_extensions, make_app
from tokensvc.clients import bootstrap_client
from tokensvc.config import Config
from tokensvc.errors import ConfigError, KeyRingError, StoreUnavailable
from tokensvc.keyreload import KeyRingReloader
from tokensvc.keystore import PASSPHRASE_ENV, ensure_ring
from tokensvc.providers import make_provider, provider_problem
from tokensvc.revocation.factory import make_store
from tokensvc.web import MAX_BODY_BYTES
from tokensvc.workers import Supervisor

__all__ = ["prepare", "run"]

log = logging.getLogger("tokensvc.server")

_SHUTDOWN_GRACE = 5.0


@dataclass(frozen=True)
class Prepared:
    """What the parent checked and created before serving."""

    config: Config
    passphrase: str | None
    notices: tuple[str, ...]


def prepare(config: Config) -> Prepared:
    """Check keys and clients, creating first-run defaults; ConfigError on any problem."""
    notices: list[str] = []
    if config.revocation.backend == "redis" and importlib.util.find_spec("redis") is None:
        raise ConfigError(
            "[revocation] backend = \"redis\" needs the redis package: "
            "pip install 'tokensvc[redis]'"
        )
    passphrase = os.environ.get(PASSPHRASE_ENV) or None
    keys_dir = config.keys.dir
    try:
        _, created = ensure_ring(
            keys_dir, algorithm=config.tokens.algorithm, passphrase=passphrase
        )
    except KeyRingError as err:
        raise ConfigError(str(err)) from err
    if created:
        notices.append(f"created a new key ring in {keys_dir}")
    if not config.clients:
        client, path, made = bootstrap_client(keys_dir)
        config = config.with_clients((client,))
        verb = "created" if made else "using"
        notices.append(
            f"{verb} client '{client.client_id}'; its secret is in {path} (mode 0600)"
        )
    # Built once here only to validate it (a bad URL or header stops start-up with exit 2);
    # each worker builds its own after the fork.
    make_provider(config.secrets)
    _warn_about_development_settings(config)
    return Prepared(config=config, passphrase=passphrase, notices=tuple(notices))


def _warn_about_development_settings(config: Config) -> None:
    """Warnings, not errors: each of these may be deliberate, or fixed while serving."""
    problem = provider_problem(config.secrets)
    if problem is not None:
        log.warning("%s", problem)
    for client in config.clients:
        if client.plain_secret:
            log.warning(
                "client %s has a plain secret in the config file; use secret_sha256 "
                "outside development",
                client.client_id,
            )
    host = config.server.host
    if config.server.demo and not _is_loopback(host):
        log.warning(
            "--demo is for development, but the server listens on %s, which is not a "
            "loopback address: the demo routes still answer loopback requests only, while "
            "everything else is reachable from the network; use --host 127.0.0.1",
            host or "every address",
        )


def _is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the server on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "" (every address) or a host name that may resolve to anything


def run(prepared: Prepared) -> int:
    """Bind, fork if asked, serve until SIGTERM/SIGINT. Returns the exit status."""
    config = prepared.config
    # SIGHUP's default action ends the process. Until a serving loop handles it (a few
    # seconds while a worker imports and starts), a reload request must be a no-op, not a kill.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sockets = tornado.netutil.bind_sockets(config.server.port, config.server.host)
    port = sockets[0].getsockname()[1]
    host = config.server.host
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{port}"
    for notice in prepared.notices:
        print(notice, flush=True)
    if config.server.workers == 1:
        return asyncio.run(_serve(prepared, sockets, url))

    def serve_worker(index: int, ready_fd: int | None) -> int:
        return asyncio.run(_serve(prepared, sockets, url, worker=index, ready_fd=ready_fd))

    workers = config.server.workers
    return Supervisor(workers, serve_worker).run(
        on_ready=lambda: print(f"tokensvc listening on {url} ({workers} workers)", flush=True)
    )


async def _serve(
    prepared: Prepared,
    sockets: Sequence[object],
    url: str,
    *,
    worker: int | None = None,
    ready_fd: int | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT: the only process (``worker`` None), or one of several."""
    config = prepared.config
    reloader = KeyRingReloader(
        config.keys.dir,
        algorithm=config.tokens.algorithm,
        passphrase=prepared.passphrase,
        interval=config.keys.reload_interval,
    )
    store = make_store(config)
    provider = make_provider(config.secrets)
    services = build_services(
        config, ring=reloader.current, revocations=store, provider=provider
    )
    services.readiness["key_ring_on_disk"] = lambda: (
        True,
        "ok" if reloader.status == "ok" else "invalid on disk; serving the last good ring",
    )
    extensions: list[Extension] = load_extensions(config)
    try:
        await store.start()
    except StoreUnavailable as err:
        # e.g. an unreadable revocation file: serving with an empty list would let
        # revoked tokens through.
        print(f"tokensvc: revocation store unavailable: {err}", file=sys.stderr, flush=True)
        await provider.close()
        return 2
    for extension in extensions:
        await extension.start(services)
    app = make_app(services, extensions)
    server = tornado.httpserver.HTTPServer(
        app, max_body_size=MAX_BODY_BYTES, idle_connection_timeout=3600
    )
    server.add_sockets(sockets)  # type: ignore[arg-type]
    reloader.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # The reload runs in a worker thread: decrypting keys with a passphrase takes a while
    # and must not stall requests.
    loop.add_signal_handler(
        signal.SIGHUP, lambda: loop.create_task(reloader.check_async(force=True))
    )
    # A SIGHUP ignored since the ring was loaded above may have been a rotation: look once.
    reload_check = loop.create_task(reloader.check_async())
    # The listening line is printed once per server: here for a single process, by the
    # supervisor once every worker serves otherwise. A worker logs without the URL, so the
    # output names it only once.
    if worker is None:
        print(f"tokensvc listening on {url}", flush=True)
    else:
        log.info("worker %d serving (pid %d)", worker, os.getpid())
    if ready_fd is not None:  # tell the supervisor this worker is serving
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    await stop.wait()

    log.info("shutting down")
    server.stop()
    reloader.stop()
    await reload_check
    for extension in extensions:
        await extension.close()
    try:
        await asyncio.wait_for(server.close_all_connections(), _SHUTDOWN_GRACE)
    except TimeoutError:
        log.warning("connections still open after %.0f s; closing anyway", _SHUTDOWN_GRACE)
    await provider.close()
    await store.close()
    return 0
