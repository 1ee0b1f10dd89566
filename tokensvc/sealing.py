"""Sealing the upstream secret inside a token: AES-256-GCM with bound associated data.

The ``sec`` claim is base64url of a small envelope::

    version (1 byte) | len(kid) (1 byte) | sealing kid | nonce (12 bytes) | ciphertext+tag

The associated data binds the ciphertext to the token's ``jti``, the sealing key id and the
audience, so a sealed secret cut from one token and pasted into another (or replayed under
another audience) fails to open even when both tokens are validly signed.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tokensvc.errors import InvalidToken
from tokensvc.keys import RingSource
from tokensvc.redacted import Secret

__all__ = ["Sealer"]

_VERSION = 1
_NONCE_BYTES = 12  # 96-bit random nonce, the size GCM is specified for
_AAD_LABEL = b"tokensvc-sealed-secret-v1"


def _associated_data(jti: str, kid: str, audience: str) -> bytes:
    # NUL-separated: none of the parts may contain NUL (jti and kid are URL-safe, audience
    # is configuration), so the encoding is unambiguous.
    return b"\x00".join((_AAD_LABEL, jti.encode(), kid.encode(), audience.encode()))


class Sealer:
    """Seals secrets under the ring's active sealing key; opens them under any live one."""

    def __init__(
        self, ring: RingSource, *, new_nonce: Callable[[int], bytes] = os.urandom
    ) -> None:
        self._ring = ring
        self._new_nonce = new_nonce

    def seal(self, secret: Secret, *, jti: str, audience: str) -> str:
        key = self._ring().sealer
        kid = key.kid.encode()
        nonce = self._new_nonce(_NONCE_BYTES)
        if len(nonce) != _NONCE_BYTES:
            raise ValueError("nonce must be 12 bytes")
        aad = _associated_data(jti, key.kid, audience)
        ciphertext = AESGCM(key.material).encrypt(nonce, secret.reveal().encode(), aad)
        envelope = bytes((_VERSION, len(kid))) + kid + nonce + ciphertext
        return base64.urlsafe_b64encode(envelope).rstrip(b"=").decode()

    def unseal(self, sealed: str, *, jti: str, audience: str) -> Secret:
        """Open a ``sec`` claim; any failure is an invalid token (no detail leaks out)."""
        try:
            envelope = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        except (binascii.Error, ValueError) as err:
            raise InvalidToken("sealed secret is not base64url") from err
        if len(envelope) < 2 or envelope[0] != _VERSION:
            raise InvalidToken("sealed secret has an unknown version")
        kid_end = 2 + envelope[1]
        kid = envelope[2:kid_end].decode("ascii", errors="replace")
        nonce = envelope[kid_end : kid_end + _NONCE_BYTES]
        ciphertext = envelope[kid_end + _NONCE_BYTES :]
        if len(nonce) != _NONCE_BYTES or len(ciphertext) < 16:
            raise InvalidToken("sealed secret is truncated")
        key = self._ring().unsealing_key(kid)
        if key is None:
            raise InvalidToken("sealed secret names no live sealing key")
        try:
            plain = AESGCM(key.material).decrypt(
                nonce, ciphertext, _associated_data(jti, kid, audience)
            )
        except InvalidTag as err:
            raise InvalidToken("sealed secret failed authentication") from err
        try:
            return Secret(plain.decode())
        except UnicodeDecodeError as err:
            raise InvalidToken("sealed secret is not text") from err
