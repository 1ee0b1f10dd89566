#!/usr/bin/env python3
"""Rotate the tokensvc key ring: ``tokensvc keys rotate`` for cron.

Stages and activates a new signing key and sealing key, and retires retiring keys whose
grace period is over (never forced). Options: ``--keys-dir DIR``, ``--config FILE``,
``--dry-run``; the passphrase, if any, comes from ``TOKENSVC_KEYS_PASSPHRASE``. Exit status
0 on success, 2 on a configuration or key ring error. For example, weekly::

    17 3 * * 1  cd /srv/tokensvc && .venv/bin/python scripts/rotate_keys.py --config tokensvc.toml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from tokensvc import keyadmin
except ImportError:  # run from a checkout where tokensvc is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tokensvc import keyadmin


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the ``keys rotate`` options and rotate; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="rotate_keys.py", description="Rotate the tokensvc key ring (keys rotate)."
    )
    keyadmin.add_common_options(parser)
    return keyadmin.rotate_keys(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
