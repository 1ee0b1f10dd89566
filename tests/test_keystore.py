"""The key ring on disk: generation, file modes, manifest, passphrase, atomicity, locking."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tokensvc import keystore
from tokensvc.errors import KeyRingError
from tokensvc.keys import SigningAlgorithm
from tokensvc.keystore import (
    KeyRecord,
    Manifest,
    build_ring,
    ensure_ring,
    load_ring,
    read_manifest,
    ring_lock,
    write_manifest,
)
from tokensvc.redacted import Secret

ALGORITHMS: list[SigningAlgorithm] = ["ES256", "EdDSA"]
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


def _record(keys_dir: Path, use: str) -> KeyRecord:
    (record,) = [k for k in read_manifest(keys_dir).keys if k.use == use]
    return record


def _key_file(keys_dir: Path, use: str) -> Path:
    record = _record(keys_dir, use)
    assert record.file is not None
    return keys_dir / record.file


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_first_run_creates_one_active_signing_and_sealing_key(keys_dir, clock, algorithm):
    ring, created = ensure_ring(keys_dir, algorithm=algorithm, clock=clock)

    assert created is True
    assert ring.signer.algorithm == algorithm
    expected = ec.EllipticCurvePrivateKey if algorithm == "ES256" else ed25519.Ed25519PrivateKey
    assert isinstance(ring.signer.private_key, expected)
    if algorithm == "ES256":
        assert isinstance(ring.signer.private_key, ec.EllipticCurvePrivateKey)
        assert isinstance(ring.signer.private_key.curve, ec.SECP256R1)
    assert len(ring.sealer.material) == 32
    assert [k["kid"] for k in ring.jwks()["keys"]] == [ring.signer.kid]


def test_second_run_loads_the_existing_ring(keys_dir, clock):
    first, _ = ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    second, created = ensure_ring(keys_dir, algorithm="ES256", clock=clock)

    assert created is False
    assert second.signer.kid == first.signer.kid
    assert second.sealer.material == first.sealer.material


def test_key_files_are_0600_and_new_directory_0700_whatever_the_umask(keys_dir, clock):
    old_umask = os.umask(0)  # the most permissive umask: modes must not depend on it
    try:
        ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    files = list(keys_dir.iterdir())
    assert len(files) == 4  # manifest, two keys, lock
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_manifest_records_every_key_and_its_dates(keys_dir, clock):
    ensure_ring(keys_dir, algorithm="EdDSA", clock=clock)

    data = json.loads((keys_dir / "manifest.json").read_text())
    assert data["version"] == 1
    by_use = {entry["use"]: entry for entry in data["keys"]}
    assert set(by_use) == {"sig", "enc"}
    # 1_800_000_000 is 2027-01-15 UTC: the kid carries the date and 32 random bits only.
    assert re.fullmatch(r"sig-20270115-[0-9a-f]{8}", by_use["sig"]["kid"])
    assert re.fullmatch(r"seal-20270115-[0-9a-f]{8}", by_use["enc"]["kid"])
    for use, suffix, alg in (("sig", ".pem", "EdDSA"), ("enc", ".key", "A256GCM")):
        entry = by_use[use]
        assert entry["alg"] == alg
        assert entry["state"] == "active"
        assert entry["file"] == entry["kid"] + suffix
        assert entry["created_at"] == clock.now
        assert entry["activated_at"] == clock.now
        assert entry["retiring_at"] is None
        assert entry["retired_at"] is None
        assert (keys_dir / entry["file"]).is_file()


def test_signing_key_is_pkcs8_pem_and_sealing_key_is_32_raw_bytes(keys_dir, clock):
    ring, _ = ensure_ring(keys_dir, algorithm="ES256", clock=clock)

    assert _key_file(keys_dir, "sig").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _key_file(keys_dir, "enc").read_bytes() == ring.sealer.material


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
@pytest.mark.parametrize("use", ["sig", "enc"])
def test_refuses_a_key_file_readable_by_group_or_others(keys_dir, clock, mode, use):
    ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    path = _key_file(keys_dir, use)
    path.chmod(mode)

    with pytest.raises(KeyRingError, match="chmod 600") as info:
        load_ring(keys_dir, algorithm="ES256")
    assert path.name in str(info.value)


def test_refuses_a_key_file_that_is_a_symlink(keys_dir, tmp_path, clock):
    ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    path = _key_file(keys_dir, "enc")
    elsewhere = tmp_path / "elsewhere.key"
    os.replace(path, elsewhere)  # still 0600: only the link itself is the problem
    path.symlink_to(elsewhere)

    with pytest.raises(KeyRingError, match="not a regular file"):
        load_ring(keys_dir, algorithm="ES256")


def test_refuses_a_key_file_that_is_a_directory(keys_dir, clock):
    ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    path = _key_file(keys_dir, "sig")
    path.unlink()
    path.mkdir(mode=0o700)

    with pytest.raises(KeyRingError, match="not a regular file"):
        load_ring(keys_dir, algorithm="ES256")


def test_missing_manifest_is_an_error(keys_dir):
    keys_dir.mkdir()
    with pytest.raises(KeyRingError, match=r"manifest\.json is missing"):
        load_ring(keys_dir, algorithm="ES256")


def _edit_manifest(keys_dir: Path, edit) -> None:
    data = json.loads((keys_dir / "manifest.json").read_text())
    edit(data)
    (keys_dir / "manifest.json").write_text(json.dumps(data))


def _second_active_sig(data):
    extra = dict(data["keys"][0], kid="sig-20270115-00000000", file="sig-20270115-00000000.pem")
    data["keys"].append(extra)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=2), "unsupported version"),
        (lambda d: d.update(keys="nope"), "keys"),
        (lambda d: d["keys"][0].update(kid="../../etc/passwd"), "kid must be"),
        (lambda d: d["keys"][0].update(file="../elsewhere.pem"), "file must be"),
        (lambda d: d["keys"][0].update(state="revoked"), "state must be"),
        (lambda d: d["keys"][0].update(alg="HS256"), "alg must be"),
        (lambda d: d["keys"][1].update(alg="ES256"), "alg must be"),
        (lambda d: d["keys"][0].update(activated_at=None), "needs activated_at"),
        (lambda d: d["keys"][0].update(created_at="yesterday"), "must be a finite number"),
        (lambda d: d["keys"][0].update(activated_at=float("nan")), "must be a finite number"),
        (lambda d: d["keys"].append(d["keys"][0]), "twice"),
        (_second_active_sig, "more than one active sig key"),
    ],
)
def test_inconsistent_manifest_is_an_error(keys_dir, clock, edit, message):
    ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    _edit_manifest(keys_dir, edit)

    with pytest.raises(KeyRingError, match=message):
        load_ring(keys_dir, algorithm="ES256")


def test_manifest_that_is_not_json_is_an_error(keys_dir, clock):
    ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    (keys_dir / "manifest.json").write_text('{"version": 1, "keys": [')

    with pytest.raises(KeyRingError, match="not valid JSON"):
        load_ring(keys_dir, algorithm="ES256")


@pytest.mark.parametrize("use", ["sig", "enc"])
def test_manifest_naming_a_missing_file_is_an_error(keys_dir, clock, use):
    ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    path = _key_file(keys_dir, use)
    path.unlink()

    with pytest.raises(KeyRingError, match="missing") as info:
        load_ring(keys_dir, algorithm="ES256")
    assert path.name in str(info.value)


def test_bad_pem_is_an_error(keys_dir, clock):
    ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    _key_file(keys_dir, "sig").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n")

    with pytest.raises(KeyRingError, match="not a valid PKCS#8 PEM"):
        load_ring(keys_dir, algorithm="ES256")


def test_sealing_key_of_the_wrong_length_is_an_error(keys_dir, clock):
    ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    _key_file(keys_dir, "enc").write_bytes(b"\x00" * 31)

    with pytest.raises(KeyRingError, match="not a sealing key"):
        load_ring(keys_dir, algorithm="ES256")


def test_key_that_does_not_match_its_algorithm_is_an_error(keys_dir, clock):
    ensure_ring(keys_dir, algorithm="EdDSA", clock=clock)
    _edit_manifest(keys_dir, lambda d: d["keys"][0].update(alg="ES256"))

    with pytest.raises(KeyRingError, match="not a P-256 key"):
        load_ring(keys_dir, algorithm="ES256")


def test_ring_without_a_signer_of_the_configured_algorithm_is_an_error(keys_dir, clock):
    ensure_ring(keys_dir, algorithm="EdDSA", clock=clock)

    with pytest.raises(KeyRingError, match=r"no active ES256 signing key.*EdDSA"):
        load_ring(keys_dir, algorithm="ES256")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_passphrase_encrypts_both_key_types_and_round_trips(keys_dir, clock, algorithm):
    ring, _ = ensure_ring(keys_dir, algorithm=algorithm, passphrase=PASSPHRASE, clock=clock)

    pem = _key_file(keys_dir, "sig").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    wrapped = _key_file(keys_dir, "enc").read_bytes()
    assert wrapped.startswith(b"TSKW\x01")
    assert ring.sealer.material not in wrapped

    again = load_ring(keys_dir, algorithm=algorithm, passphrase=Secret(PASSPHRASE))
    assert again.jwks() == ring.jwks()
    assert again.sealer.material == ring.sealer.material


@pytest.mark.parametrize("use", ["sig", "enc"])
def test_wrong_passphrase_is_a_clear_error_for_both_key_types(keys_dir, clock, use):
    ensure_ring(keys_dir, algorithm="ES256", passphrase=PASSPHRASE, clock=clock)
    # Load only the key under test, so the error is about its file.
    only = Manifest(keys=(_record(keys_dir, use),))

    with pytest.raises(KeyRingError, match="wrong passphrase") as info:
        build_ring(
            keys_dir, only, algorithm="ES256", passphrase="Tr0ub4dor&3", require_usable=False
        )
    assert _key_file(keys_dir, use).name in str(info.value)
    assert PASSPHRASE not in str(info.value)
    assert "Tr0ub4dor&3" not in str(info.value)


def test_missing_passphrase_names_the_variable(keys_dir, clock):
    ensure_ring(keys_dir, algorithm="ES256", passphrase=PASSPHRASE, clock=clock)

    with pytest.raises(KeyRingError, match="encrypted: set TOKENSVC_KEYS_PASSPHRASE"):
        load_ring(keys_dir, algorithm="ES256")


def test_wrapped_sealing_key_is_bound_to_its_kid(keys_dir, clock):
    ensure_ring(keys_dir, algorithm="ES256", passphrase=PASSPHRASE, clock=clock)
    record = _record(keys_dir, "enc")
    other = KeyRecord(
        kid="seal-20270115-ffffffff",
        use="enc",
        alg="A256GCM",
        state="staged",
        file="seal-20270115-ffffffff.key",
        created_at=clock.now,
    )
    # The same bytes under another kid must not unwrap: the kid is authenticated data.
    (keys_dir / "seal-20270115-ffffffff.key").write_bytes(_key_file(keys_dir, "enc").read_bytes())
    os.chmod(keys_dir / "seal-20270115-ffffffff.key", 0o600)

    with pytest.raises(KeyRingError, match="wrong passphrase"):
        build_ring(
            keys_dir,
            Manifest(keys=(other,)),
            algorithm="ES256",
            passphrase=PASSPHRASE,
            require_usable=False,
        )
    own = build_ring(
        keys_dir,
        Manifest(keys=(record,)),
        algorithm="ES256",
        passphrase=PASSPHRASE,
        require_usable=False,
    )
    assert own.unsealing_key(record.kid) is not None


def test_errors_never_contain_key_material(keys_dir, clock):
    ring, _ = ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    _key_file(keys_dir, "enc").chmod(0o644)

    with pytest.raises(KeyRingError) as info:
        load_ring(keys_dir, algorithm="ES256")
    message = str(info.value)
    assert ring.sealer.material.hex() not in message
    assert "PRIVATE KEY" not in message


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_writes_leave_no_temp_files(keys_dir, clock):
    ring, _ = ensure_ring(keys_dir, algorithm="ES256", clock=clock)

    assert _names(keys_dir) == {
        ".lock",
        "manifest.json",
        f"{ring.signer.kid}.pem",
        f"{ring.sealer.kid}.key",
    }


def test_failed_write_keeps_the_old_file_and_removes_its_temp_file(keys_dir, clock, monkeypatch):
    ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    before = (keys_dir / "manifest.json").read_bytes()
    names = _names(keys_dir)

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keystore.os, "replace", failing_replace)
    with pytest.raises(KeyRingError, match="cannot write"):
        write_manifest(keys_dir, Manifest())

    assert (keys_dir / "manifest.json").read_bytes() == before
    assert _names(keys_dir) == names


def test_stale_temp_files_are_removed_by_the_next_writer(keys_dir, clock):
    ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    leftover = keys_dir / ".manifest.json.abc123.tmp"
    leftover.write_bytes(b"half")

    with ring_lock(keys_dir):
        pass

    assert not leftover.exists()


def test_lock_times_out_while_another_writer_holds_it(keys_dir):
    with (
        ring_lock(keys_dir),
        pytest.raises(KeyRingError, match="another process"),
        ring_lock(keys_dir, timeout=0.1),
    ):
        pass


def test_lock_serialises_writers(keys_dir):
    acquired = threading.Event()

    def second_writer() -> None:
        with ring_lock(keys_dir, timeout=None):
            acquired.set()

    with ring_lock(keys_dir):
        thread = threading.Thread(target=second_writer)
        thread.start()
        # While the first writer holds the lock the second one must wait.
        assert not acquired.wait(0.2)
    # Once it is released, at once; the bound only keeps a broken lock from hanging.
    assert acquired.wait(30)
    thread.join(30)


def test_concurrent_first_runs_create_a_single_ring(keys_dir, clock):
    rings = []

    def start() -> None:
        rings.append(ensure_ring(keys_dir, algorithm="ES256", clock=clock))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert sorted(created for _, created in rings) == [False, False, False, True]
    assert len({ring.signer.kid for ring, _ in rings}) == 1
    assert len(read_manifest(keys_dir).keys) == 2


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_existing_directory_mode_is_left_alone(tmp_path, clock, umask_022):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o755)

    ensure_ring(keys_dir, algorithm="ES256", clock=clock)

    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o755
    for path in keys_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
