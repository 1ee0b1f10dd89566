"""The in-memory key ring: ``kid -> (key object, algorithm)``, loaded once.

A :class:`KeyRing` is immutable. Reloading builds a new one and swaps the reference, so a
request in flight always sees one consistent ring and the hot path needs no lock and no I/O.
Files on disk are the business of :mod:`tokensvc.keystore`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tokensvc.errors import KeyRingError

__all__ = [
    "SIGNING_ALGORITHMS",
    "VERIFYING_STATES",
    "KeyRing",
    "KeyState",
    "RingSource",
    "SealingKey",
    "SigningAlgorithm",
    "SigningKey",
    "public_jwk",
]

SigningAlgorithm = Literal["ES256", "EdDSA"]
SIGNING_ALGORITHMS: tuple[SigningAlgorithm, ...] = ("ES256", "EdDSA")
KeyState = Literal["staged", "active", "retiring", "retired"]
# Staged keys verify too: during a rotation another process or host may already have
# activated the key and be signing with it while this one still sees it staged.
VERIFYING_STATES: frozenset[str] = frozenset({"staged", "active", "retiring"})

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class SigningKey:
    """An asymmetric signing key. ``private_key`` is None when only verifying."""

    kid: str
    algorithm: SigningAlgorithm
    state: KeyState
    public_key: PublicKey = field(repr=False)
    private_key: PrivateKey | None = field(default=None, repr=False)
    created_at: float = 0.0
    activated_at: float | None = None
    retiring_at: float | None = None

    def __post_init__(self) -> None:
        expected: type = (
            ec.EllipticCurvePublicKey if self.algorithm == "ES256" else ed25519.Ed25519PublicKey
        )
        if not isinstance(self.public_key, expected):
            raise KeyRingError(f"signing key {self.kid} does not match algorithm {self.algorithm}")
        if (
            self.algorithm == "ES256"
            and isinstance(self.public_key, ec.EllipticCurvePublicKey)
            and not isinstance(self.public_key.curve, ec.SECP256R1)
        ):
            raise KeyRingError(f"signing key {self.kid}: ES256 needs a P-256 key")


@dataclass(frozen=True)
class SealingKey:
    """A 256-bit AES-GCM key that seals upstream secrets inside tokens."""

    kid: str
    state: KeyState
    material: bytes = field(repr=False)
    created_at: float = 0.0
    activated_at: float | None = None
    retiring_at: float | None = None

    def __post_init__(self) -> None:
        if len(self.material) != 32:
            raise KeyRingError(f"sealing key {self.kid} must be 32 bytes")


def public_jwk(key: SigningKey) -> dict[str, str]:
    """The public JWK of a signing key: never a private or symmetric member."""
    from jwt.utils import base64url_encode  # pure helper; jwt itself is used in tokens.py

    public = key.public_key
    if isinstance(public, ec.EllipticCurvePublicKey):
        numbers = public.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": base64url_encode(numbers.x.to_bytes(32, "big")).decode(),
            "y": base64url_encode(numbers.y.to_bytes(32, "big")).decode(),
            "kid": key.kid,
            "alg": key.algorithm,
            "use": "sig",
        }
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64url_encode(raw).decode(),
        "kid": key.kid,
        "alg": key.algorithm,
        "use": "sig",
    }


class KeyRing:
    """Signing and sealing keys by id, with the current signer and sealer."""

    def __init__(
        self,
        signing: Iterable[SigningKey],
        sealing: Iterable[SealingKey],
        *,
        algorithm: SigningAlgorithm = "ES256",
    ) -> None:
        self.algorithm = algorithm
        self._signing: dict[str, SigningKey] = {}
        self._sealing: dict[str, SealingKey] = {}
        for sig in signing:
            if sig.kid in self._signing:
                raise KeyRingError(f"duplicate signing key id {sig.kid}")
            self._signing[sig.kid] = sig
        for seal in sealing:
            if seal.kid in self._sealing:
                raise KeyRingError(f"duplicate sealing key id {seal.kid}")
            self._sealing[seal.kid] = seal
        # Only keys of the configured algorithm verify: one algorithm at a time.
        self._verifiers: dict[str, SigningKey] = {
            k.kid: k
            for k in self._signing.values()
            if k.state in VERIFYING_STATES and k.algorithm == algorithm
        }
        self._unsealers: dict[str, SealingKey] = {
            k.kid: k for k in self._sealing.values() if k.state in VERIFYING_STATES
        }
        self._signer = self._single_active(
            [k for k in self._signing.values() if k.algorithm == algorithm], "signing"
        )
        self._sealer = self._single_active(list(self._sealing.values()), "sealing")
        if self._signer is not None and self._signer.private_key is None:
            raise KeyRingError(f"active signing key {self._signer.kid} has no private key")
        self._jwks = {
            "keys": [public_jwk(k) for k in sorted(self._verifiers.values(), key=_by_age)]
        }
        body = json.dumps(self._jwks, sort_keys=True, separators=(",", ":")).encode()
        self._jwks_body = body
        self._etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'

    @staticmethod
    def _single_active(keys: list[Any], use: str) -> Any:
        active = [k for k in keys if k.state == "active"]
        if len(active) > 1:
            raise KeyRingError(f"more than one active {use} key")
        return active[0] if active else None

    @property
    def signer(self) -> SigningKey:
        """The one key new tokens are signed with."""
        if not isinstance(self._signer, SigningKey):
            raise KeyRingError(f"no active {self.algorithm} signing key")
        return self._signer

    @property
    def sealer(self) -> SealingKey:
        """The one key new secrets are sealed with."""
        if not isinstance(self._sealer, SealingKey):
            raise KeyRingError("no active sealing key")
        return self._sealer

    @property
    def usable(self) -> bool:
        return self._signer is not None and self._sealer is not None

    def verifying_key(self, kid: str) -> SigningKey | None:
        """The key for ``kid`` if it may verify tokens now (a dict lookup, no I/O)."""
        return self._verifiers.get(kid)

    def unsealing_key(self, kid: str) -> SealingKey | None:
        return self._unsealers.get(kid)

    @property
    def signing_keys(self) -> Mapping[str, SigningKey]:
        return dict(self._signing)

    @property
    def sealing_keys(self) -> Mapping[str, SealingKey]:
        return dict(self._sealing)

    def jwks(self) -> dict[str, Any]:
        """The published key set: staged, active and retiring public keys."""
        return self._jwks

    @property
    def jwks_body(self) -> bytes:
        return self._jwks_body

    @property
    def jwks_etag(self) -> str:
        return self._etag


RingSource = Callable[[], KeyRing]
"""How services get the current ring: a call, so a reload can swap it underneath."""


def _by_age(key: SigningKey) -> tuple[float, str]:
    return (key.created_at, key.kid)
