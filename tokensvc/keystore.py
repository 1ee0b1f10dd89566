"""The key ring on disk: one file per key plus ``manifest.json``, written atomically.

Layout of the keys directory (created 0700)::

    manifest.json            which keys exist, their use, algorithm, state and timestamps
    <kid>.pem                a signing key: PKCS#8 PEM (encrypted when a passphrase is set)
    <kid>.key                a sealing key: 32 raw bytes, or wrapped (see below)
    .lock                    flock(2) target that serialises writers

Every key file is written 0600 and loading refuses one that is group/world accessible or not
a regular file. ``manifest.json`` is a JSON object ``{"version": 1, "keys": [...]}``; each
entry has ``kid``, ``use`` (``sig`` | ``enc``), ``alg`` (``ES256`` | ``EdDSA`` |
``A256GCM``), ``state`` (``staged`` | ``active`` | ``retiring`` | ``retired``), ``file``
(``<kid>.pem`` / ``<kid>.key``; ``null`` once retired, because a retired key's private file is
deleted), and the UNIX times ``created_at``, ``activated_at``, ``retiring_at`` (when it stopped
signing or sealing) and ``retired_at`` (``null`` until they happen).

Writes are atomic: a temp file in the same directory, fsync, ``os.replace``, fsync of the
directory. Key files are written before the manifest that names them, and deleted only after a
manifest that no longer names them is in place, so a crash at any point leaves a manifest whose
files all exist. Readers take no lock: they only ever see a complete old or new manifest.

With a passphrase (``TOKENSVC_KEYS_PASSPHRASE``, read by the caller) signing keys are PKCS#8
``BestAvailableEncryption`` PEM and sealing keys are wrapped as::

    b"TSKW" | version (1) | log2(scrypt N) | scrypt r | scrypt p     8-byte header
    salt (16) | nonce (12) | AES-256-GCM(key, 32 bytes) + tag (48)  AAD = header + kid

Error messages name files and key ids, never key material.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tokensvc.errors import KeyRingError
from tokensvc.keys import (
    SIGNING_ALGORITHMS,
    KeyRing,
    KeyState,
    PrivateKey,
    SealingKey,
    SigningAlgorithm,
    SigningKey,
)
from tokensvc.redacted import Secret

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "PASSPHRASE_ENV",
    "KeyAlgorithm",
    "KeyRecord",
    "KeyUse",
    "Manifest",
    "Passphrase",
    "build_ring",
    "ensure_directory",
    "ensure_ring",
    "generate_sealing_key",
    "generate_signing_key",
    "load_ring",
    "new_kid",
    "new_record",
    "read_manifest",
    "remove_key_file",
    "ring_fingerprint",
    "ring_lock",
    "write_manifest",
    "write_sealing_key",
    "write_signing_key",
]

log = logging.getLogger("tokensvc.keys")

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
LOCK_NAME = ".lock"
PASSPHRASE_ENV = "TOKENSVC_KEYS_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret

KeyUse = Literal["sig", "enc"]
KeyAlgorithm = Literal["ES256", "EdDSA", "A256GCM"]
Passphrase = str | Secret | None
"""A passphrase as given by the caller: ``None`` or ``""`` means unencrypted key files."""

SEALING_ALGORITHM: KeyAlgorithm = "A256GCM"
_STATES: tuple[str, ...] = get_args(KeyState)
_FILE_SUFFIX: dict[str, str] = {"sig": ".pem", "enc": ".key"}
# Key ids become file names and JWT header values: URL-safe characters only, so a manifest
# entry can never name a path outside the keys directory.
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KID_PREFIX: dict[str, str] = {"sig": "sig", "enc": "seal"}
_TEMP_SUFFIX = ".tmp"

# Sealing-key wrap format (version 1).
_WRAP_MAGIC = b"TSKW"
_WRAP_VERSION = 1
_WRAP_HEADER_LEN = 8
_WRAP_SALT_LEN = 16
_WRAP_NONCE_LEN = 12
_WRAP_LEN = _WRAP_HEADER_LEN + _WRAP_SALT_LEN + _WRAP_NONCE_LEN + 32 + 16
# scrypt N = 2**15, r = 8: about 32 MiB and a tenth of a second per key, paid only when the
# ring is (re)loaded. Bounds on read stop a tampered header from asking for gigabytes.
_SCRYPT_LOG2_N, _SCRYPT_R, _SCRYPT_P = 15, 8, 1
_SCRYPT_MAX_LOG2_N, _SCRYPT_MAX_R, _SCRYPT_MAX_P = 20, 16, 4
_SEALING_KEY_LEN = 32


@dataclass(frozen=True)
class KeyRecord:
    """One manifest entry: what a key is and where it is in its life, never the key itself."""

    kid: str
    use: KeyUse
    alg: KeyAlgorithm
    state: KeyState
    file: str | None
    created_at: float
    activated_at: float | None = None
    retiring_at: float | None = None
    retired_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest entry as a JSON object."""
        return {
            "kid": self.kid,
            "use": self.use,
            "alg": self.alg,
            "state": self.state,
            "file": self.file,
            "created_at": self.created_at,
            "activated_at": self.activated_at,
            "retiring_at": self.retiring_at,
            "retired_at": self.retired_at,
        }


@dataclass(frozen=True)
class Manifest:
    """The whole manifest: every key record, retired ones included (the ring's history)."""

    keys: tuple[KeyRecord, ...] = ()
    version: int = MANIFEST_VERSION

    def get(self, kid: str) -> KeyRecord | None:
        """The record for ``kid``, if any."""
        for record in self.keys:
            if record.kid == kid:
                return record
        return None

    def with_states(self, *, use: KeyUse | None = None, states: Iterable[str]) -> list[KeyRecord]:
        """Records in one of ``states`` (and of ``use`` if given), oldest first."""
        wanted = set(states)
        found = [k for k in self.keys if k.state in wanted and (use is None or k.use == use)]
        return sorted(found, key=lambda k: (k.created_at, k.kid))

    def active(self, use: KeyUse) -> KeyRecord | None:
        """The active key of ``use`` (the manifest allows at most one)."""
        found = self.with_states(use=use, states=("active",))
        return found[0] if found else None

    def replaced(self, *records: KeyRecord) -> Manifest:
        """A new manifest with ``records`` replacing those of the same kid, or appended."""
        by_kid = {r.kid: r for r in records}
        kept = [by_kid.pop(k.kid, k) for k in self.keys]
        return replace(self, keys=(*kept, *by_kid.values()))

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON object."""
        return {"version": self.version, "keys": [k.to_json() for k in self.keys]}


# -- the manifest ---------------------------------------------------------------------------


def read_manifest(directory: str | os.PathLike[str], *, missing_ok: bool = False) -> Manifest:
    """Read and validate ``manifest.json`` (an empty manifest if missing and ``missing_ok``)."""
    path = Path(directory) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        if missing_ok:
            return Manifest()
        raise KeyRingError(f"no key ring in {directory}: {MANIFEST_NAME} is missing") from err
    except OSError as err:
        raise KeyRingError(f"cannot read {path}: {err.strerror}") from err
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise KeyRingError(f"{path} is not valid JSON") from err
    return _parse_manifest(raw, path)


def _parse_manifest(raw: Any, path: Path) -> Manifest:
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise KeyRingError(f"{path} must be an object with a \"keys\" list")
    if raw.get("version") != MANIFEST_VERSION:
        raise KeyRingError(f"{path} has an unsupported version (expected {MANIFEST_VERSION})")
    records: list[KeyRecord] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw["keys"]):
        record = _parse_record(entry, f"{path} keys[{index}]")
        if record.kid in seen:
            raise KeyRingError(f"{path} lists key {record.kid} twice")
        seen.add(record.kid)
        records.append(record)
    manifest = Manifest(keys=tuple(records))
    uses: tuple[KeyUse, ...] = ("sig", "enc")
    for use in uses:
        if len(manifest.with_states(use=use, states=("active",))) > 1:
            raise KeyRingError(f"{path} has more than one active {use} key")
    return manifest


def _parse_record(entry: Any, where: str) -> KeyRecord:
    if not isinstance(entry, dict):
        raise KeyRingError(f"{where} must be an object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not _KID_RE.match(kid):
        raise KeyRingError(f"{where}: kid must be 1-64 chars of A-Z a-z 0-9 _ -")
    where = f"{where} ({kid})"
    use, alg, state = entry.get("use"), entry.get("alg"), entry.get("state")
    if use not in _FILE_SUFFIX:
        raise KeyRingError(f"{where}: use must be sig or enc")
    allowed_algs: tuple[str, ...] = SIGNING_ALGORITHMS if use == "sig" else (SEALING_ALGORITHM,)
    if alg not in allowed_algs:
        raise KeyRingError(f"{where}: alg must be one of {' | '.join(allowed_algs)}")
    if state not in _STATES:
        raise KeyRingError(f"{where}: state must be one of {' | '.join(_STATES)}")
    times: dict[str, float | None] = {}
    for name in ("created_at", "activated_at", "retiring_at", "retired_at"):
        value = entry.get(name)
        # NaN or Infinity (which json accepts) would make every grace-period comparison
        # false, letting a key be retired at once.
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise KeyRingError(f"{where}: {name} must be a finite number or null")
        times[name] = None if value is None else float(value)
    created_at = times.pop("created_at")
    if created_at is None:
        raise KeyRingError(f"{where}: created_at is missing")
    # Each state needs the timestamp that put the key there; the retire grace period is
    # counted from retiring_at, so a retiring key without one cannot be reasoned about.
    needed = {"active": "activated_at", "retiring": "retiring_at", "retired": "retired_at"}
    if state in needed and times[needed[state]] is None:
        raise KeyRingError(f"{where}: a {state} key needs {needed[state]}")
    file = entry.get("file")
    expected = kid + _FILE_SUFFIX[use]
    if state == "retired":
        if file not in (None, expected):
            raise KeyRingError(f"{where}: file must be {expected} or null")
    elif file != expected:
        raise KeyRingError(f"{where}: file must be {expected}")
    return KeyRecord(
        kid=kid,
        use=use,
        alg=alg,
        state=state,
        file=file,
        created_at=created_at,
        **times,
    )


def write_manifest(directory: str | os.PathLike[str], manifest: Manifest) -> None:
    """Atomically replace ``manifest.json``. Write the key files it names first."""
    body = json.dumps(manifest.to_json(), indent=2).encode() + b"\n"
    _atomic_write(Path(directory), MANIFEST_NAME, body)


# -- atomic files, directory, lock ------------------------------------------------------------


def ensure_directory(directory: str | os.PathLike[str]) -> Path:
    """Create the keys directory 0700 if it does not exist (an existing one is left as is)."""
    path = Path(directory)
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not path.is_dir():
            raise KeyRingError(f"{path} exists and is not a directory") from None
        return path
    except OSError as err:
        raise KeyRingError(f"cannot create {path}: {err.strerror}") from err
    # mkdir's mode is filtered by the umask; only the owner may list or add key files.
    os.chmod(path, 0o700)
    return path


def _atomic_write(directory: Path, name: str, data: bytes) -> None:
    # mkstemp creates the file 0600 whatever the umask, so the key is never readable by
    # others, not even for the instant before a chmod. The leading dot keeps half-written
    # files out of the reloader's fingerprint and out of any loader's sight.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=_TEMP_SUFFIX, dir=directory)
    except OSError as err:
        raise KeyRingError(f"cannot write in {directory}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / name)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise KeyRingError(f"cannot write {directory / name}: {err.strerror}") from err
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry itself is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise KeyRingError(f"cannot sync {directory}: {err.strerror}") from err


def remove_key_file(directory: str | os.PathLike[str], name: str) -> None:
    """Delete a key file the manifest no longer names (already gone is fine).

    Only unlinking: overwriting first would promise an erasure that journaling and
    copy-on-write file systems and SSDs do not deliver.
    """
    path = Path(directory) / name
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise KeyRingError(f"cannot delete {path}: {err.strerror}") from err
    _fsync_directory(Path(directory))


@contextlib.contextmanager
def ring_lock(directory: str | os.PathLike[str], *, timeout: float | None = 30.0) -> Iterator[Path]:
    """Hold the writers' lock (``flock`` on ``<dir>/.lock``) for a read-modify-write.

    Two rotations (a cron job and an operator) must not both read the old manifest and both
    write a new one: the second would silently drop the first one's keys. The directory is
    created (0700) if needed. ``timeout=None`` waits forever; otherwise KeyRingError.
    Readers never take this lock.
    """
    path = ensure_directory(directory)
    lock_path = path / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        raise KeyRingError(f"cannot open {lock_path}: {err.strerror}") from err
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise KeyRingError(
                        f"another process is changing the key ring in {path} "
                        f"(lock {lock_path} held for over {timeout:g} s)"
                    ) from None
                time.sleep(0.05)
        _remove_stale_temp_files(path)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _remove_stale_temp_files(directory: Path) -> None:
    # Only a writer holding the lock creates temp files, so any found now were left by a
    # writer that crashed; they may hold key material, so they go.
    for entry in os.scandir(directory):
        if entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def ring_fingerprint(directory: str | os.PathLike[str]) -> tuple[tuple[Any, ...], ...]:
    """A cheap summary of the ring's files (names, inode, size, mtime, ctime, mode).

    Any write, rename, deletion or chmod changes it; temp and lock files (dot files) are left
    out so a writer mid-way does not count as a change until it renames into place.
    """
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return ()
    summary = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        summary.append(
            (entry.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
        )
    return tuple(sorted(summary))


# -- key files ---------------------------------------------------------------------------------


def new_kid(use: KeyUse, now: float, *, taken: Iterable[str] = ()) -> str:
    """A fresh key id: ``sig-<yyyymmdd>-<8 hex>`` / ``seal-<yyyymmdd>-<8 hex>``.

    Random, URL-safe and derived from nothing secret: a kid is published in every token
    header and in the JWKS.
    """
    day = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d")
    used = set(taken)
    while True:
        kid = f"{_KID_PREFIX[use]}-{day}-{secrets.token_hex(4)}"
        if kid not in used:
            return kid


def new_record(
    use: KeyUse, alg: KeyAlgorithm, now: float, *, taken: Iterable[str] = ()
) -> KeyRecord:
    """A manifest record for a new staged key (its file is ``<kid>.pem`` / ``<kid>.key``)."""
    kid = new_kid(use, now, taken=taken)
    return KeyRecord(
        kid=kid, use=use, alg=alg, state="staged", file=kid + _FILE_SUFFIX[use], created_at=now
    )


def generate_signing_key(algorithm: SigningAlgorithm) -> PrivateKey:
    """A new private key: P-256 for ES256, Ed25519 for EdDSA."""
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise KeyRingError(f"unsupported signing algorithm {algorithm!r}")


def generate_sealing_key() -> bytes:
    """32 random bytes for AES-256-GCM."""
    return secrets.token_bytes(_SEALING_KEY_LEN)


def _passphrase_bytes(passphrase: Passphrase) -> bytes | None:
    if passphrase is None:
        return None
    text = passphrase.reveal() if isinstance(passphrase, Secret) else passphrase
    # An empty value (a variable set to "") means no passphrase, as an unset one does.
    return text.encode() if text else None


def write_signing_key(
    directory: str | os.PathLike[str], record: KeyRecord, key: PrivateKey, passphrase: Passphrase
) -> None:
    """Atomically write a signing key as PKCS#8 PEM, encrypted when a passphrase is set."""
    if record.use != "sig" or record.file is None:
        raise KeyRingError(f"{record.kid} is not a signing key record")
    secret = _passphrase_bytes(passphrase)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret)
        if secret is not None
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    _atomic_write(Path(directory), record.file, pem)


def write_sealing_key(
    directory: str | os.PathLike[str], record: KeyRecord, material: bytes, passphrase: Passphrase
) -> None:
    """Atomically write a sealing key: raw, or wrapped under the passphrase."""
    if record.use != "enc" or record.file is None:
        raise KeyRingError(f"{record.kid} is not a sealing key record")
    if len(material) != _SEALING_KEY_LEN:
        raise KeyRingError(f"sealing key {record.kid} must be {_SEALING_KEY_LEN} bytes")
    secret = _passphrase_bytes(passphrase)
    data = material if secret is None else _wrap(material, secret, record.kid)
    _atomic_write(Path(directory), record.file, data)


def _scrypt(secret: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**log2_n, r=r, p=p).derive(secret)


def _wrap(material: bytes, secret: bytes, kid: str) -> bytes:
    header = _WRAP_MAGIC + bytes([_WRAP_VERSION, _SCRYPT_LOG2_N, _SCRYPT_R, _SCRYPT_P])
    salt = secrets.token_bytes(_WRAP_SALT_LEN)
    nonce = secrets.token_bytes(_WRAP_NONCE_LEN)
    wrapping_key = _scrypt(secret, salt, _SCRYPT_LOG2_N, _SCRYPT_R, _SCRYPT_P)
    # The header and kid are authenticated: swapping files between kids, or editing the
    # parameters, fails to unwrap instead of yielding some other key.
    sealed = AESGCM(wrapping_key).encrypt(nonce, material, header + kid.encode())
    return header + salt + nonce + sealed


def _unwrap(data: bytes, secret: bytes, kid: str, path: Path) -> bytes:
    if len(data) != _WRAP_LEN or data[:4] != _WRAP_MAGIC:
        raise KeyRingError(f"{path} is not a sealing key (corrupt file?)")
    version, log2_n, r, p = data[4], data[5], data[6], data[7]
    if version != _WRAP_VERSION:
        raise KeyRingError(f"{path} has an unsupported wrap version {version}")
    in_range = 10 <= log2_n <= _SCRYPT_MAX_LOG2_N and 1 <= r <= _SCRYPT_MAX_R
    if not (in_range and 1 <= p <= _SCRYPT_MAX_P):
        raise KeyRingError(f"{path} has out-of-range scrypt parameters")
    header = data[:_WRAP_HEADER_LEN]
    offset = _WRAP_HEADER_LEN
    salt = data[offset : offset + _WRAP_SALT_LEN]
    offset += _WRAP_SALT_LEN
    nonce = data[offset : offset + _WRAP_NONCE_LEN]
    sealed = data[offset + _WRAP_NONCE_LEN :]
    wrapping_key = _scrypt(secret, salt, log2_n, r, p)
    try:
        return AESGCM(wrapping_key).decrypt(nonce, sealed, header + kid.encode())
    except InvalidTag:
        raise KeyRingError(
            f"cannot decrypt {path}: wrong passphrase ({PASSPHRASE_ENV}) or corrupt file"
        ) from None


def _read_private_file(path: Path) -> bytes:
    """Read a key file, refusing anything but a private regular file.

    The checks are made on the opened descriptor (O_NOFOLLOW, fstat), so the file cannot be
    swapped for a symlink between the check and the read. O_NONBLOCK keeps a FIFO planted in
    the directory from hanging the loader.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise KeyRingError(f"{MANIFEST_NAME} names {path}, which is missing") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise KeyRingError(f"{path} is a symbolic link, not a regular file") from None
        raise KeyRingError(f"cannot read {path}: {err.strerror}") from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyRingError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyRingError(
                f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"a private key must be owner-only; fix: chmod 600 {path}"
            )
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def _load_signing_key(path: Path, record: KeyRecord, secret: bytes | None) -> PrivateKey:
    data = _read_private_file(path)
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
    if encrypted and secret is None:
        raise KeyRingError(f"{path} is encrypted: set {PASSPHRASE_ENV}")
    if not encrypted and secret is not None:
        # Accepted so a ring can move to encryption by rotating, but said out loud.
        log.warning("%s is not encrypted although a passphrase is set; rotate to fix", path)
    try:
        key = serialization.load_pem_private_key(data, password=secret if encrypted else None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if encrypted:
            raise KeyRingError(
                f"cannot decrypt {path}: wrong passphrase ({PASSPHRASE_ENV}) or corrupt file"
            ) from None
        raise KeyRingError(f"{path} is not a valid PKCS#8 PEM private key") from None
    if record.alg == "ES256":
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return key
        raise KeyRingError(f"{path} is not a P-256 key, but the manifest says ES256")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise KeyRingError(f"{path} is not an Ed25519 key, but the manifest says EdDSA")


def _load_sealing_key(path: Path, record: KeyRecord, secret: bytes | None) -> bytes:
    data = _read_private_file(path)
    if len(data) == _SEALING_KEY_LEN:
        if secret is not None:
            log.warning("%s is not encrypted although a passphrase is set; rotate to fix", path)
        return data
    if data[:4] != _WRAP_MAGIC:
        raise KeyRingError(f"{path} is not a sealing key (expected {_SEALING_KEY_LEN} bytes)")
    if secret is None:
        raise KeyRingError(f"{path} is encrypted: set {PASSPHRASE_ENV}")
    return _unwrap(data, secret, record.kid, path)


# -- rings -------------------------------------------------------------------------------------


def build_ring(
    directory: str | os.PathLike[str],
    manifest: Manifest,
    *,
    algorithm: SigningAlgorithm,
    passphrase: Passphrase = None,
    require_usable: bool = True,
) -> KeyRing:
    """Load the key files ``manifest`` names (retired keys excepted) into a KeyRing.

    With ``require_usable`` the ring must have an active ``algorithm`` signing key and an
    active sealing key, which is what a server needs; the key commands check a ring they are
    about to write with ``require_usable=False``, since a ring may lawfully pass through
    states without a signer (only staged keys, or a change of algorithm).
    """
    base = Path(directory)
    secret = _passphrase_bytes(passphrase)
    signing: list[SigningKey] = []
    sealing: list[SealingKey] = []
    for record in manifest.keys:
        if record.state == "retired" or record.file is None:
            continue  # a retired key neither verifies nor unseals; its file is deleted
        path = base / record.file
        if record.use == "sig":
            private = _load_signing_key(path, record, secret)
            signing.append(
                SigningKey(
                    kid=record.kid,
                    algorithm=record.alg,  # type: ignore[arg-type]  # checked by the parser
                    state=record.state,
                    public_key=private.public_key(),
                    private_key=private,
                    created_at=record.created_at,
                    activated_at=record.activated_at,
                    retiring_at=record.retiring_at,
                )
            )
        else:
            sealing.append(
                SealingKey(
                    kid=record.kid,
                    state=record.state,
                    material=_load_sealing_key(path, record, secret),
                    created_at=record.created_at,
                    activated_at=record.activated_at,
                    retiring_at=record.retiring_at,
                )
            )
    ring = KeyRing(signing, sealing, algorithm=algorithm)
    if require_usable and not ring.usable:
        active = manifest.active("sig")
        if active is None or active.alg != algorithm:
            hint = f" (the active signing key is {active.alg})" if active is not None else ""
            raise KeyRingError(
                f"no active {algorithm} signing key in {base}{hint}: run `tokensvc keys rotate`"
            )
        raise KeyRingError(f"no active sealing key in {base}: run `tokensvc keys rotate`")
    return ring


def load_ring(
    directory: str | os.PathLike[str],
    *,
    algorithm: SigningAlgorithm,
    passphrase: Passphrase = None,
) -> KeyRing:
    """Load the ring a server can use, or raise KeyRingError saying what is wrong.

    Missing or corrupt manifest, a named file missing, unsafe permissions, bad PEM, a key
    that does not match its algorithm, two active keys of one use, a wrong or missing
    passphrase, no active signing or sealing key: each is a KeyRingError naming the file.
    """
    manifest = read_manifest(directory)
    return build_ring(directory, manifest, algorithm=algorithm, passphrase=passphrase)


def ensure_ring(
    directory: str | os.PathLike[str],
    *,
    algorithm: SigningAlgorithm,
    passphrase: Passphrase = None,
    clock: Callable[[], float] = time.time,
) -> tuple[KeyRing, bool]:
    """Load the ring, creating a first one if the directory has no manifest.

    A first ring is one active signing key of ``algorithm`` and one active sealing key.
    Returns ``(ring, created)``. Creation happens under the writers' lock and re-checks for
    the manifest there, so two processes starting together create one ring, not two.
    """
    created = False
    if not (Path(directory) / MANIFEST_NAME).exists():
        with ring_lock(directory):
            if not (Path(directory) / MANIFEST_NAME).exists():
                _create_first_ring(Path(directory), algorithm, passphrase, clock())
                created = True
    return load_ring(directory, algorithm=algorithm, passphrase=passphrase), created


def _create_first_ring(
    directory: Path, algorithm: SigningAlgorithm, passphrase: Passphrase, now: float
) -> None:
    sig = new_record("sig", algorithm, now)
    seal = new_record("enc", SEALING_ALGORITHM, now, taken=[sig.kid])
    write_signing_key(directory, sig, generate_signing_key(algorithm), passphrase)
    write_sealing_key(directory, seal, generate_sealing_key(), passphrase)
    activated = [replace(r, state="active", activated_at=now) for r in (sig, seal)]
    write_manifest(directory, Manifest(keys=tuple(activated)))
