"""The services a running app shares, reachable by handlers as ``settings["tokensvc"]``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tokensvc.clients import ClientRegistry, RateLimiter
from tokensvc.config import Config
from tokensvc.keys import RingSource
from tokensvc.metrics import Metrics
from tokensvc.providers.base import SecretProvider
from tokensvc.revocation.base import RevocationStore
from tokensvc.sealing import Sealer
from tokensvc.tokens import TokenIssuer, TokenVerifier

__all__ = ["Services"]


@dataclass
class Services:
    """Everything a handler needs, built once at start-up (see ``tokensvc.app``)."""

    config: Config
    ring: RingSource
    issuer: TokenIssuer
    verifier: TokenVerifier
    sealer: Sealer
    revocations: RevocationStore
    clients: ClientRegistry
    rate_limiter: RateLimiter
    provider: SecretProvider
    clock: Callable[[], float]
    metrics: Metrics = field(default_factory=Metrics)
    # Extra readiness checks (e.g. the key ring on disk): name -> (ready, detail).
    readiness: dict[str, Callable[[], tuple[bool, str]]] = field(default_factory=dict)
