"""``tokensvc keys ...``: every command, dry runs, the retire grace period, no key material."""

from __future__ import annotations

import argparse
import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support import clear_tokensvc_env
from tokensvc import keyadmin
from tokensvc.keystore import KeyRecord, load_ring, read_manifest

MAX_TTL, LEEWAY, JWKS_MAX_AGE = 600, 5, 60
GRACE = MAX_TTL + LEEWAY + JWKS_MAX_AGE


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # The commands read TOKENSVC_* like the server does; tests must not see the caller's.
    clear_tokensvc_env(monkeypatch)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokensvc.toml"
    path.write_text(
        "[tokens]\n"
        f"ttl = 300\nmax_ttl = {MAX_TTL}\nleeway = {LEEWAY}\njwks_max_age = {JWKS_MAX_AGE}\n"
        'algorithm = "ES256"\n'
        "[keys]\n"
        'dir = "keys"\n'
    )
    return path


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"  # [keys] dir of config_file, relative to the file


@pytest.fixture
def keys(config_file, clock, capsys):
    """Run ``tokensvc keys <argv> --config <file>``; returns (status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="tokensvc")
        keyadmin.register(parser.add_subparsers())
        args = parser.parse_args(["keys", *argv, "--config", str(config_file)])
        status = args.func(args, clock=clock)
        out, err = capsys.readouterr()
        return status, out, err

    return run


def _states(keys_dir: Path) -> dict[str, str]:
    return {k.kid: k.state for k in read_manifest(keys_dir).keys}


def _by_state(keys_dir: Path, state: str, use: str = "sig") -> list[KeyRecord]:
    return [k for k in read_manifest(keys_dir).keys if k.state == state and k.use == use]


def _utc(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    if not directory.exists():
        return {}
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()}


@pytest.fixture
def rotated_twice(keys, keys_dir, clock) -> tuple[str, str]:
    """A ring with one retiring and one active key of each use; returns (old, new) sig kids."""
    assert keys("rotate")[0] == 0
    old = _by_state(keys_dir, "active")[0].kid
    clock.advance(100)
    assert keys("rotate")[0] == 0
    new = _by_state(keys_dir, "active")[0].kid
    return old, new


def test_rotate_on_an_empty_directory_creates_an_active_ring(keys, keys_dir, clock):
    status, out, _ = keys("rotate")

    assert status == 0
    ring = load_ring(keys_dir, algorithm="ES256")
    assert ring.signer.activated_at == clock.now
    assert ring.signer.kid in out
    assert ring.sealer.kid in out


def test_stage_adds_a_staged_signing_and_sealing_key_that_is_published_not_used(
    keys, keys_dir, clock
):
    keys("rotate")
    signer = load_ring(keys_dir, algorithm="ES256").signer.kid
    clock.advance(10)

    status, out, _ = keys("stage")

    assert status == 0
    staged_sig = _by_state(keys_dir, "staged", "sig")
    staged_enc = _by_state(keys_dir, "staged", "enc")
    assert len(staged_sig) == len(staged_enc) == 1
    assert staged_sig[0].created_at == clock.now
    ring = load_ring(keys_dir, algorithm="ES256")
    assert ring.signer.kid == signer
    assert staged_sig[0].kid in [k["kid"] for k in ring.jwks()["keys"]]
    assert "new -> staged" in out


def test_activate_without_kid_takes_the_newest_staged_keys(keys, keys_dir, clock):
    keys("rotate")
    old_sig = _by_state(keys_dir, "active", "sig")[0].kid
    old_enc = _by_state(keys_dir, "active", "enc")[0].kid
    clock.advance(10)
    keys("stage")
    clock.advance(10)
    keys("stage")
    older, newest = _by_state(keys_dir, "staged", "sig")
    older_enc, newest_enc = _by_state(keys_dir, "staged", "enc")
    clock.advance(10)

    status, _, _ = keys("activate")

    assert status == 0
    states = _states(keys_dir)
    assert states[newest.kid] == states[newest_enc.kid] == "active"
    assert states[older.kid] == states[older_enc.kid] == "staged"
    assert states[old_sig] == states[old_enc] == "retiring"
    manifest = read_manifest(keys_dir)
    assert manifest.get(old_sig).retiring_at == clock.now  # type: ignore[union-attr]
    assert manifest.get(newest.kid).activated_at == clock.now  # type: ignore[union-attr]
    ring = load_ring(keys_dir, algorithm="ES256")
    assert ring.signer.kid == newest.kid
    assert ring.verifying_key(old_sig) is not None  # a retiring key still verifies
    assert ring.unsealing_key(old_enc) is not None  # and still unseals


def test_activate_a_signing_kid_brings_the_newest_staged_sealing_key(keys, keys_dir, clock):
    keys("rotate")
    clock.advance(10)
    keys("stage")
    clock.advance(10)
    keys("stage")
    older, _ = _by_state(keys_dir, "staged", "sig")
    _, newest_enc = _by_state(keys_dir, "staged", "enc")

    status, _, _ = keys("activate", older.kid)

    assert status == 0
    assert _by_state(keys_dir, "active", "sig")[0].kid == older.kid
    assert _by_state(keys_dir, "active", "enc")[0].kid == newest_enc.kid


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("unknown", "no key sig-19700101-00000000"),
        ("active", "only a staged key can be activated"),
    ],
)
def test_activate_refuses_a_kid_that_is_not_staged(keys, keys_dir, which, message):
    keys("rotate")
    kid = "sig-19700101-00000000" if which == "unknown" else _by_state(keys_dir, "active")[0].kid
    before = _snapshot(keys_dir)

    status, _, err = keys("activate", kid)

    assert status == 1
    assert message in err
    assert _snapshot(keys_dir) == before


def test_activate_without_staged_keys_is_refused(keys):
    keys("rotate")

    status, _, err = keys("activate")

    assert status == 1
    assert "tokensvc keys stage" in err


def test_activate_refuses_a_signing_key_of_another_algorithm(keys, keys_dir, config_file):
    keys("rotate")
    config_file.write_text(config_file.read_text().replace('"ES256"', '"EdDSA"'))
    keys("stage")  # an EdDSA key, staged under the new configuration
    eddsa = _by_state(keys_dir, "staged")[0].kid
    config_file.write_text(config_file.read_text().replace('"EdDSA"', '"ES256"'))

    status, _, err = keys("activate", eddsa)

    assert status == 1
    assert "tokens.algorithm is ES256" in err


@pytest.mark.parametrize(("elapsed", "status"), [(GRACE - 1, 1), (GRACE, 0)])
def test_retire_waits_for_max_ttl_plus_leeway_plus_jwks_max_age(
    keys, keys_dir, clock, rotated_twice, elapsed, status
):
    old, _ = rotated_twice
    clock.advance(elapsed)

    assert keys("retire")[0] == status
    assert _states(keys_dir)[old] == ("retiring" if status else "retired")


def test_retire_refusal_says_when_it_becomes_safe_and_changes_nothing(
    keys, keys_dir, clock, rotated_twice
):
    old, _ = rotated_twice
    retiring_at = clock.now
    clock.advance(60)
    before = _snapshot(keys_dir)

    status, out, err = keys("retire")

    assert status == 1
    assert out == ""
    assert old in err
    assert f"safe to retire from {_utc(retiring_at + GRACE)}" in err
    assert f"may be valid until {_utc(retiring_at + MAX_TTL + LEEWAY)}" in err
    assert "--force" in err
    assert _snapshot(keys_dir) == before


def test_retire_after_the_grace_period_removes_the_key_and_its_file(
    keys, keys_dir, clock, rotated_twice
):
    old, new = rotated_twice
    old_enc = _by_state(keys_dir, "retiring", "enc")[0]
    old_files = [keys_dir / f"{old}.pem", keys_dir / f"{old_enc.kid}.key"]
    clock.advance(GRACE)

    status, out, _ = keys("retire")

    assert status == 0
    record = read_manifest(keys_dir).get(old)
    assert record is not None
    assert (record.state, record.retired_at, record.file) == ("retired", clock.now, None)
    assert not any(path.exists() for path in old_files)
    ring = load_ring(keys_dir, algorithm="ES256")
    assert ring.verifying_key(old) is None
    assert ring.unsealing_key(old_enc.kid) is None
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new]
    assert "retiring -> retired" in out


def test_retire_force_within_the_grace_period_says_which_tokens_it_breaks(
    keys, keys_dir, clock, rotated_twice
):
    old, _ = rotated_twice
    retiring_at = clock.now
    clock.advance(60)

    status, _, err = keys("retire", old, "--force")

    assert status == 0
    assert _states(keys_dir)[old] == "retired"
    assert (
        f"tokens issued up to {_utc(retiring_at)} with this key, "
        f"valid until {_utc(retiring_at + MAX_TTL + LEEWAY)}"
    ) in err
    assert "keeps no list of issued tokens" in err
    # Only the named key: the retiring sealing key stays.
    assert len(_by_state(keys_dir, "retiring", "enc")) == 1


def test_retire_force_after_tokens_expired_mentions_only_jwks_caches(
    keys, keys_dir, clock, rotated_twice
):
    old, _ = rotated_twice
    clock.advance(MAX_TTL + LEEWAY + 1)

    status, _, err = keys("retire", old, "--force")

    assert status == 0
    assert "no token issued with it can still be valid" in err
    assert "JWKS caches" in err


def test_retire_refuses_a_key_that_is_not_retiring(keys, keys_dir, rotated_twice):
    _, new = rotated_twice

    status, _, err = keys("retire", new, "--force")

    assert status == 1
    assert "activate another key first" in err
    assert _states(keys_dir)[new] == "active"


def test_retire_with_nothing_retiring_is_nothing_to_do(keys):
    keys("rotate")

    status, out, _ = keys("retire")

    assert status == 0
    assert "nothing to retire" in out


def test_rotate_retires_only_keys_past_their_grace_and_never_forces(keys, keys_dir, clock):
    keys("rotate")
    first = _by_state(keys_dir, "active")[0].kid
    clock.advance(100)
    keys("rotate")
    second = _by_state(keys_dir, "active")[0].kid
    clock.advance(GRACE - 1)

    status, out, _ = keys("rotate")
    third = _by_state(keys_dir, "active")[0].kid

    assert status == 0
    assert _states(keys_dir)[first] == "retiring"
    assert f"{first} stays retiring" in out
    clock.advance(1)

    status, out, _ = keys("rotate")

    assert status == 0
    states = _states(keys_dir)
    assert states[first] == "retired"
    assert states[second] == "retiring"  # its grace started at the previous rotation
    assert states[third] == "retiring"
    assert load_ring(keys_dir, algorithm="ES256").signer.kid not in (first, second, third)
    assert len(_by_state(keys_dir, "active", "enc")) == 1
    assert len(_by_state(keys_dir, "retired", "enc")) == 1


@pytest.mark.parametrize(
    "argv",
    [["rotate"], ["stage"], ["activate"], ["retire"], ["retire", "--force"], ["list"]],
)
def test_dry_run_writes_nothing(keys, keys_dir, clock, rotated_twice, argv):
    keys("stage")
    clock.advance(GRACE)
    before = _snapshot(keys_dir)

    status, out, _ = keys(*argv, "--dry-run")

    assert status == 0
    assert _snapshot(keys_dir) == before
    if argv[0] != "list":
        assert "dry run, nothing written" in out


def test_dry_run_rotate_does_not_create_the_directory(keys, keys_dir):
    status, out, _ = keys("rotate", "--dry-run")

    assert status == 0
    assert not keys_dir.exists()
    assert "(new ES256 key)" in out
    assert "(new A256GCM key)" in out


def test_list_prints_a_table_without_key_material(keys, keys_dir, clock, rotated_twice):
    keys("stage")

    status, out, _ = keys("list")

    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "KID", "USE", "ALG", "STATE", "CREATED", "ACTIVATED", "RETIRING", "RETIRED"
    ]
    for record in read_manifest(keys_dir).keys:
        assert any(line.startswith(record.kid) and record.state in line for line in lines)
    assert "safe to retire from" in out
    for path in keys_dir.iterdir():
        if path.suffix == ".pem":
            body = path.read_text().splitlines()[1:-1]
            assert not any(chunk in out for chunk in body)
            assert "PRIVATE KEY" not in out
        elif path.suffix == ".key":
            material = path.read_bytes()
            for spelling in (
                material.hex(),
                base64.b64encode(material).decode(),
                base64.urlsafe_b64encode(material).decode().rstrip("="),
            ):
                assert spelling not in out


def test_list_without_a_ring_is_an_error(keys):
    status, _, err = keys("list")

    assert status == 2
    assert "manifest.json is missing" in err


def test_keys_dir_flag_overrides_the_config(keys, keys_dir, tmp_path):
    other = tmp_path / "elsewhere"

    status, _, _ = keys("rotate", "--keys-dir", str(other))

    assert status == 0
    assert (other / "manifest.json").exists()
    assert not keys_dir.exists()


def test_passphrase_from_the_environment_encrypts_new_keys(keys, keys_dir, monkeypatch):
    monkeypatch.setenv("TOKENSVC_KEYS_PASSPHRASE", "correct horse battery staple")

    assert keys("rotate")[0] == 0

    record = _by_state(keys_dir, "active")[0]
    assert (keys_dir / f"{record.kid}.pem").read_bytes().startswith(b"-----BEGIN ENCRYPTED")
    load_ring(keys_dir, algorithm="ES256", passphrase="correct horse battery staple")


def test_a_change_the_servers_could_not_load_is_not_written(keys, keys_dir, monkeypatch):
    monkeypatch.setenv("TOKENSVC_KEYS_PASSPHRASE", "correct horse battery staple")
    keys("rotate")
    monkeypatch.delenv("TOKENSVC_KEYS_PASSPHRASE")
    before = _snapshot(keys_dir)

    status, _, err = keys("stage")

    assert status == 2
    assert "set TOKENSVC_KEYS_PASSPHRASE" in err
    assert set(_snapshot(keys_dir)) == set(before)  # the new, unencrypted key files are gone
    assert (keys_dir / "manifest.json").read_bytes() == before["manifest.json"][0]


def test_bad_config_is_exit_status_2_with_one_line(keys, config_file):
    config_file.write_text(config_file.read_text() + "\n[tokens_typo]\nx = 1\n")

    status, _, err = keys("rotate")

    assert status == 2
    assert err.count("\n") == 1
    assert "tokens_typo" in err


def test_register_wires_every_command_and_option():
    parser = argparse.ArgumentParser()
    keyadmin.register(parser.add_subparsers())

    args = parser.parse_args(["keys", "retire", "sig-x", "--force", "--keys-dir", "d"])
    assert args.func is keyadmin.retire_keys
    assert (args.kid, args.force, args.keys_dir, args.dry_run) == ("sig-x", True, Path("d"), False)
    for command, func in [
        ("list", keyadmin.list_keys),
        ("stage", keyadmin.stage_keys),
        ("activate", keyadmin.activate_keys),
        ("rotate", keyadmin.rotate_keys),
    ]:
        assert parser.parse_args(["keys", command, "--dry-run"]).func is func
    with pytest.raises(SystemExit):
        parser.parse_args(["keys", "rotate", "--force"])  # --force is for retire only


@pytest.mark.parametrize("command", ["activate", "retire"])
def test_commands_that_need_a_ring_do_not_create_one(keys, keys_dir, command):
    status, _, err = keys(command)

    assert status == 2
    assert "manifest.json is missing" in err
    assert not keys_dir.exists()
