"""The Redis form of revocation entries: compact JSON, and a key pattern for SCAN."""

from __future__ import annotations

import json
from typing import Any

from tokensvc.revocation.base import RevocationEntry

__all__ = ["dump_entry", "glob_escape", "parse_entry"]


def dump_entry(entry: RevocationEntry) -> bytes:
    """The entry as stored and published: compact JSON with sorted keys."""
    return json.dumps(entry.to_json(), separators=(",", ":"), sort_keys=True).encode()


def parse_entry(data: Any) -> RevocationEntry | None:
    """The entry in ``data``; None for nothing (an expired key) or anything unreadable."""
    if data is None:
        return None
    try:
        record = json.loads(data)
        if not isinstance(record, dict):
            return None
        return RevocationEntry.from_json(record)
    except (ValueError, TypeError):
        return None


def glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a prefix matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
