"""Sealer: the upstream secret inside a token, AES-256-GCM bound to jti, sealing kid and aud."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

import pytest

from tests.support import UPSTREAM_SECRET, make_ring, sealing_key
from tokensvc.errors import InvalidToken
from tokensvc.keys import KeyRing, SealingKey
from tokensvc.redacted import Secret
from tokensvc.sealing import Sealer

JTI = "jti-AAAAAAAAAAAAAAAAAAAAAA"
AUDIENCE = "chatkit"
SECRET = Secret(UPSTREAM_SECRET)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def envelope_of(sealed: str) -> bytes:
    return base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))


def parts(sealed: str) -> tuple[int, str, bytes, bytes]:
    """version, sealing kid, nonce, ciphertext+tag."""
    envelope = envelope_of(sealed)
    kid_end = 2 + envelope[1]
    return (
        envelope[0],
        envelope[2:kid_end].decode(),
        envelope[kid_end : kid_end + 12],
        envelope[kid_end + 12 :],
    )


def with_sealing(ring: KeyRing, *keys: SealingKey) -> KeyRing:
    """``ring``'s signing keys with other sealing keys."""
    return KeyRing(ring.signing_keys.values(), keys, algorithm=ring.algorithm)


@pytest.fixture
def ring() -> KeyRing:
    return make_ring()


@pytest.fixture
def sealer(ring: KeyRing) -> Sealer:
    return Sealer(lambda: ring)


@pytest.fixture
def sealed(sealer: Sealer) -> str:
    return sealer.seal(SECRET, jti=JTI, audience=AUDIENCE)


@pytest.fixture
def unseal(sealer: Sealer) -> Callable[[str], Secret]:
    def _unseal(value: str, jti: str = JTI, audience: str = AUDIENCE) -> Secret:
        return sealer.unseal(value, jti=jti, audience=audience)

    return _unseal


def test_seal_unseal_round_trip(sealed: str, unseal: Callable[..., Secret]) -> None:
    opened = unseal(sealed)
    assert isinstance(opened, Secret)
    assert opened.reveal() == UPSTREAM_SECRET


def test_round_trip_of_empty_and_non_ascii_secrets(sealer: Sealer) -> None:
    for value in ("", "s\u00e9cr\u00e8t-\u2603", "x" * 4096):
        sealed = sealer.seal(Secret(value), jti=JTI, audience=AUDIENCE)
        assert sealer.unseal(sealed, jti=JTI, audience=AUDIENCE).reveal() == value


def test_sealed_string_never_contains_the_secret(sealed: str) -> None:
    raw = UPSTREAM_SECRET.encode()
    assert UPSTREAM_SECRET not in sealed
    # Any 3-byte-aligned base64 spelling of the secret would show up as this substring.
    for shift in range(3):
        chunk = raw[shift : shift + 18]
        assert b64url(chunk) not in sealed
        assert base64.b64encode(chunk).decode() not in sealed
    assert raw not in envelope_of(sealed)
    assert raw[:8] not in envelope_of(sealed)


def test_sealed_string_is_unpadded_base64url(sealed: str) -> None:
    assert set(sealed) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_envelope_names_the_active_sealing_key_and_a_96_bit_nonce(
    sealed: str, ring: KeyRing
) -> None:
    version, kid, nonce, ciphertext = parts(sealed)
    assert version == 1
    assert kid == ring.sealer.kid
    assert len(nonce) == 12
    assert len(ciphertext) == len(UPSTREAM_SECRET) + 16  # GCM tag


def test_every_seal_uses_a_fresh_nonce(sealer: Sealer) -> None:
    sealed = [sealer.seal(SECRET, jti=JTI, audience=AUDIENCE) for _ in range(50)]
    nonces = {parts(value)[2] for value in sealed}
    assert len(nonces) == 50
    assert len(set(sealed)) == 50


def test_seal_uses_the_injected_nonce_source(ring: KeyRing) -> None:
    asked: list[int] = []

    def nonce(size: int) -> bytes:
        asked.append(size)
        return os.urandom(size)

    sealed = Sealer(lambda: ring, new_nonce=nonce).seal(SECRET, jti=JTI, audience=AUDIENCE)
    assert asked == [12]
    assert Sealer(lambda: ring).unseal(sealed, jti=JTI, audience=AUDIENCE) == SECRET


def test_seal_refuses_a_nonce_that_is_not_96_bits(ring: KeyRing) -> None:
    short = Sealer(lambda: ring, new_nonce=lambda size: b"\x00" * (size - 1))
    with pytest.raises(ValueError, match="12 bytes"):
        short.seal(SECRET, jti=JTI, audience=AUDIENCE)


def test_unseal_fails_with_another_jti(sealed: str, unseal: Callable[..., Secret]) -> None:
    with pytest.raises(InvalidToken):
        unseal(sealed, jti=JTI + "x")
    with pytest.raises(InvalidToken):
        unseal(sealed, jti="")


def test_unseal_fails_under_another_audience(sealed: str, unseal: Callable[..., Secret]) -> None:
    for audience in ("chatkit:stream", "CHATKIT", "", "chatkit\x00"):
        with pytest.raises(InvalidToken):
            unseal(sealed, audience=audience)


def test_associated_data_is_not_ambiguous(sealer: Sealer, ring: KeyRing) -> None:
    # Without separators, jti + kid + audience would read the same for both splits below.
    kid = ring.sealer.kid
    sealed = sealer.seal(SECRET, jti="a", audience=f"{kid}b")
    with pytest.raises(InvalidToken):
        sealer.unseal(sealed, jti=f"a{kid}", audience="b")


def test_unseal_fails_when_the_sealing_kid_is_not_in_the_ring(sealed: str, ring: KeyRing) -> None:
    other = with_sealing(ring, sealing_key("seal-2"))
    with pytest.raises(InvalidToken):
        Sealer(lambda: other).unseal(sealed, jti=JTI, audience=AUDIENCE)


def test_unseal_fails_under_a_different_key_with_the_same_kid(sealed: str, ring: KeyRing) -> None:
    impostor = with_sealing(ring, sealing_key("seal-1"))
    with pytest.raises(InvalidToken):
        Sealer(lambda: impostor).unseal(sealed, jti=JTI, audience=AUDIENCE)


def test_unseal_fails_when_the_envelope_names_another_live_key(ring: KeyRing) -> None:
    # The kid is in the associated data: relabelling the envelope with another key's id
    # (same length, so only the label changes) must not open it even if that key is live.
    shared = os.urandom(32)
    two = with_sealing(
        ring,
        SealingKey(kid="seal-1", state="active", material=shared),
        SealingKey(kid="seal-2", state="retiring", material=shared),
    )
    sealer = Sealer(lambda: two)
    sealed = sealer.seal(SECRET, jti=JTI, audience=AUDIENCE)
    relabelled = envelope_of(sealed).replace(b"seal-1", b"seal-2", 1)
    with pytest.raises(InvalidToken):
        sealer.unseal(b64url(relabelled), jti=JTI, audience=AUDIENCE)


def test_unseal_fails_on_any_flipped_byte(sealed: str, unseal: Callable[..., Secret]) -> None:
    envelope = envelope_of(sealed)
    for index in range(len(envelope)):
        tampered = bytearray(envelope)
        tampered[index] ^= 0x01
        with pytest.raises(InvalidToken):
            unseal(b64url(bytes(tampered)))


def test_unseal_fails_on_truncation(sealed: str, unseal: Callable[..., Secret]) -> None:
    envelope = envelope_of(sealed)
    for length in range(len(envelope)):
        with pytest.raises(InvalidToken):
            unseal(b64url(envelope[:length]))


def test_unseal_fails_on_appended_bytes(sealed: str, unseal: Callable[..., Secret]) -> None:
    with pytest.raises(InvalidToken):
        unseal(b64url(envelope_of(sealed) + b"\x00"))


@pytest.mark.parametrize(
    "value", ["", "A", "AAAAA", "\u00e9\u00e9\u00e9\u00e9", "!!!!", "====", "sealed secret"]
)
def test_unseal_fails_on_bad_base64(unseal: Callable[..., Secret], value: str) -> None:
    with pytest.raises(InvalidToken):
        unseal(value)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unseal_fails_on_unknown_version(
    sealed: str, unseal: Callable[..., Secret], version: int
) -> None:
    envelope = envelope_of(sealed)
    with pytest.raises(InvalidToken):
        unseal(b64url(bytes((version,)) + envelope[1:]))


def test_unseal_works_under_a_retiring_key_after_rotation(sealed: str, ring: KeyRing) -> None:
    old = ring.sealer
    rotated = with_sealing(
        ring,
        SealingKey(kid=old.kid, state="retiring", material=old.material),
        sealing_key("seal-2"),
    )
    after = Sealer(lambda: rotated)
    assert after.unseal(sealed, jti=JTI, audience=AUDIENCE) == SECRET
    # New secrets are sealed under the new active key only.
    resealed = after.seal(SECRET, jti=JTI, audience=AUDIENCE)
    assert parts(resealed)[1] == "seal-2"
    assert after.unseal(resealed, jti=JTI, audience=AUDIENCE) == SECRET


def test_unseal_fails_once_the_key_is_retired(sealed: str, ring: KeyRing) -> None:
    old = ring.sealer
    retired = with_sealing(
        ring,
        SealingKey(kid=old.kid, state="retired", material=old.material),
        sealing_key("seal-2"),
    )
    with pytest.raises(InvalidToken):
        Sealer(lambda: retired).unseal(sealed, jti=JTI, audience=AUDIENCE)


def test_failures_never_mention_the_secret(sealed: str, unseal: Callable[..., Secret]) -> None:
    with pytest.raises(InvalidToken) as caught:
        unseal(sealed, jti="other")
    assert UPSTREAM_SECRET not in str(caught.value)
    assert UPSTREAM_SECRET not in caught.value.log_message
    assert UPSTREAM_SECRET not in repr(caught.value)
