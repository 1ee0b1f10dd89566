"""Builders shared by the tests: in-memory key rings, fake providers, app wiring."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tokensvc.app import build_services, make_app
from tokensvc.config import ClientConfig, Config, TokensConfig
from tokensvc.errors import ProviderUnavailable, UnknownSecret
from tokensvc.keys import KeyRing, SealingKey, SigningKey
from tokensvc.redacted import Secret
from tokensvc.revocation.memory import MemoryRevocationStore
from tokensvc.services import Services

CLIENT_ID = "extension"
CLIENT_SECRET = "client-secret-for-tests-0123456789"
OTHER_CLIENT_ID = "other"
OTHER_CLIENT_SECRET = "other-client-secret-0123456789ab"
UPSTREAM_SECRET = "sk-upstream-real-secret-value-42"


def signing_key(kid: str, algorithm: str = "ES256", state: str = "active",
                created_at: float = 0.0) -> SigningKey:
    private: Any
    if algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return SigningKey(
        kid=kid,
        algorithm=algorithm,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        public_key=private.public_key(),
        private_key=private,
        created_at=created_at,
    )


def sealing_key(kid: str = "seal-1", state: str = "active") -> SealingKey:
    return SealingKey(kid=kid, state=state, material=os.urandom(32))  # type: ignore[arg-type]


def make_ring(algorithm: str = "ES256", *extra: SigningKey) -> KeyRing:
    return KeyRing(
        [signing_key("sig-1", algorithm), *extra],
        [sealing_key()],
        algorithm=algorithm,  # type: ignore[arg-type]
    )


def client(client_id: str, secret: str, patterns: tuple[str, ...] = ("*",),
           rate_limit: int = 1000) -> ClientConfig:
    return ClientConfig(
        client_id=client_id,
        secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
        secret_key_ids=patterns,
        rate_limit=rate_limit,
    )


def clear_tokensvc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every TOKENSVC_* variable for the test (code under test reads them)."""
    for name in list(os.environ):
        if name.startswith("TOKENSVC_"):
            monkeypatch.delenv(name)


def basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


class FakeProvider:
    """A secret holder with a call counter and switchable failures."""

    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        self.secrets = {"demo": UPSTREAM_SECRET} if secrets is None else secrets
        self.calls: list[str] = []
        self.fail = False
        self.gate: Any = None  # an asyncio.Event to hold lookups open

    async def resolve(self, secret_key_id: str) -> Secret:
        self.calls.append(secret_key_id)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ProviderUnavailable("holder down")
        if secret_key_id not in self.secrets:
            raise UnknownSecret(secret_key_id)
        return Secret(self.secrets[secret_key_id])

    async def close(self) -> None:
        return None


def make_config(**tokens: Any) -> Config:
    base = Config()
    return dataclasses.replace(
        base,
        tokens=dataclasses.replace(TokensConfig(), **tokens),
        clients=(
            client(CLIENT_ID, CLIENT_SECRET, ("demo", "team-*", "slow", "missing")),
            client(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET),
        ),
    )


def make_services(
    *,
    config: Config | None = None,
    ring: KeyRing | None = None,
    provider: Any = None,
    store: Any = None,
    clock: Callable[[], float] | None = None,
) -> Services:
    import time

    config = config or make_config()
    the_ring = ring or make_ring(config.tokens.algorithm)
    return build_services(
        config,
        ring=lambda: the_ring,
        revocations=store or MemoryRevocationStore(None, clock=clock or time.time),
        provider=provider or FakeProvider(),
        clock=clock or time.time,
    )


__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "OTHER_CLIENT_ID",
    "OTHER_CLIENT_SECRET",
    "UPSTREAM_SECRET",
    "FakeProvider",
    "basic",
    "client",
    "make_app",
    "make_config",
    "make_ring",
    "make_services",
    "sealing_key",
    "signing_key",
]
