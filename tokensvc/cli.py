"""Command line: ``tokensvc serve`` and ``tokensvc keys ...``. Parsing only, no logic."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokensvc import __version__
from tokensvc.config import load_config
from tokensvc.errors import ConfigError
from tokensvc.keyadmin import register as register_key_commands
from tokensvc.logs import configure_logging

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from tokensvc import server  # imported here so `tokensvc keys` stays light

    overrides: dict[str, dict[str, Any]] = {
        "server": {
            "host": args.host,
            "port": args.port,
            "workers": args.workers,
            "log_format": args.log_format,
            "demo": True if args.demo else None,
        },
        "keys": {"dir": args.keys_dir},
    }
    try:
        config = load_config(args.config, overrides=overrides)
        configure_logging(config.server.log_format)
        prepared = server.prepare(config)
    except ConfigError as err:
        print(f"tokensvc: configuration error: {err}", file=sys.stderr, flush=True)
        return 2
    try:
        return server.run(prepared)
    except OSError as err:
        # Typically the port is taken; one line, not a trace.
        print(f"tokensvc: cannot listen: {err.strerror}", file=sys.stderr, flush=True)
        return 2


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("port must be 0..65535")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokensvc",
        description="Short-lived sealed session tokens for an editor chat panel.",
    )
    parser.add_argument("--version", action="version", version=f"tokensvc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--host", help="listen address [127.0.0.1]")
    serve.add_argument("--port", type=_port, help="listen port, 0 picks a free one [8765]")
    serve.add_argument("--keys-dir", type=Path, help="key ring directory [./keys]")
    serve.add_argument("--workers", type=_positive, help="worker processes [1]")
    serve.add_argument("--log-format", choices=["text", "json"], help="log format [text]")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="serve the ChatKit demo page at /chatkit/demo (development only)",
    )
    serve.set_defaults(func=_serve)

    register_key_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        code: int = args.func(args)
    except ConfigError as err:
        print(f"tokensvc: configuration error: {err}", file=sys.stderr, flush=True)
        return 2
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
