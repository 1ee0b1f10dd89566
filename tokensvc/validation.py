"""Checks for the fields clients send to the session endpoints."""

from __future__ import annotations

import re
from typing import Any

from tokensvc.errors import InvalidRequest, InvalidScope

__all__ = [
    "KNOWN_SCOPES",
    "only_fields",
    "optional_ttl",
    "optional_user",
    "requested_scope",
    "secret_key_id",
    "session_id",
]

KNOWN_SCOPES = frozenset({"chatkit"})
DEFAULT_SCOPE = "chatkit"
# Used with fullmatch: re.match with "$" would also accept a trailing newline.
_SECRET_KEY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def secret_key_id(value: Any) -> str:
    if not isinstance(value, str) or not _SECRET_KEY_ID.fullmatch(value):
        raise InvalidRequest("secret_key_id must be 1-128 chars of A-Z a-z 0-9 . _ : -")
    return value


def session_id(value: Any) -> str:
    if not isinstance(value, str) or not _SESSION_ID.fullmatch(value):
        raise InvalidRequest("session_id is malformed")
    return value


def optional_user(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 256 or not value.isprintable():
        raise InvalidRequest("user must be 1-256 printable characters")
    return value


def optional_ttl(value: Any, *, max_ttl: int) -> int | None:
    if value is None:
        return None
    # bool is an int subclass; true is not a lifetime.
    if isinstance(value, bool) or not isinstance(value, int) or not 10 <= value <= max_ttl:
        raise InvalidRequest(f"ttl must be an integer from 10 to {max_ttl}")
    return value


def requested_scope(value: Any) -> str:
    """The scope string for a new session: known scopes only, space-separated."""
    if value is None:
        return DEFAULT_SCOPE
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise InvalidRequest("scope must be a non-empty string")
    scopes = value.split()
    if not set(scopes) <= KNOWN_SCOPES:
        raise InvalidScope("unknown scope requested")
    return " ".join(sorted(set(scopes)))


def only_fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise InvalidRequest("unknown field in body")
