"""Live reload: a rotation on disk reaches the server; a bad ring on disk is ignored."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from tests.support import clear_tokensvc_env
from tokensvc import keyadmin
from tokensvc.errors import KeyRingError
from tokensvc.keyreload import KeyRingReloader
from tokensvc.keystore import (
    ensure_ring,
    generate_signing_key,
    new_record,
    read_manifest,
    write_signing_key,
)

# How long the periodic checks (every 0.05 s) may take to see a rotation on a busy machine,
# where loading the ring off the event loop can wait its turn.
PICKED_UP_WITHIN = 15.0


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    clear_tokensvc_env(monkeypatch)


@pytest.fixture
def keys_dir(tmp_path: Path, clock) -> Path:
    directory = tmp_path / "keys"
    ensure_ring(directory, algorithm="ES256", clock=clock)
    return directory


@pytest.fixture
def errors() -> list[str]:
    return []


@pytest.fixture
def reloader(keys_dir, errors, clock) -> KeyRingReloader:
    return KeyRingReloader(
        keys_dir, algorithm="ES256", interval=0.05, on_error=errors.append, clock=clock
    )


def rotate(keys_dir: Path, clock) -> None:
    clock.advance(10)
    args = argparse.Namespace(keys_dir=keys_dir, config=None, dry_run=False)
    assert keyadmin.rotate_keys(args, clock=clock) == 0


def test_current_is_the_loaded_ring_and_check_without_changes_keeps_it(reloader, keys_dir):
    ring = reloader.current()

    assert ring.signer.kid == read_manifest(keys_dir).active("sig").kid  # type: ignore[union-attr]
    assert reloader.check() is False
    assert reloader.current() is ring
    assert reloader.status == "ok"
    assert reloader.last_error is None


def test_check_picks_up_a_rotation(reloader, keys_dir, clock):
    old = reloader.current().signer.kid
    rotate(keys_dir, clock)

    assert reloader.check() is True

    ring = reloader.current()
    assert ring.signer.kid != old
    assert ring.verifying_key(old) is not None  # retiring: tokens it signed still verify
    assert reloader.loaded_at == clock.now


def test_forced_check_reloads_even_without_a_change(reloader):
    ring = reloader.current()

    assert reloader.check(force=True) is True
    assert reloader.current() is not ring
    assert reloader.current().signer.kid == ring.signer.kid


def test_corrupt_ring_is_ignored_and_the_last_good_ring_keeps_serving(
    reloader, keys_dir, errors
):
    ring = reloader.current()
    (keys_dir / "manifest.json").write_text("{ half written")

    assert reloader.check() is False

    assert reloader.current() is ring
    assert reloader.status == "stale"
    assert "manifest.json" in (reloader.last_error or "")
    assert errors == [reloader.last_error]


def test_each_distinct_failure_is_reported_once(reloader, keys_dir, errors):
    (keys_dir / "manifest.json").write_text("{ half written")
    reloader.check()
    reloader.check()
    reloader.check(force=True)
    assert len(errors) == 1

    (keys_dir / "manifest.json").write_text("[]")
    reloader.check()

    assert len(errors) == 2
    assert errors[0] != errors[1]


def test_recovers_once_the_ring_on_disk_is_fixed(reloader, keys_dir, clock):
    good = (keys_dir / "manifest.json").read_bytes()
    (keys_dir / "manifest.json").write_text("{ half written")
    reloader.check()
    assert reloader.status == "stale"
    last_good = reloader.current()

    (keys_dir / "manifest.json").write_bytes(good)

    assert reloader.check() is True
    assert reloader.status == "ok"
    assert reloader.last_error is None
    assert reloader.current() is not last_good


def test_group_readable_key_is_refused_until_chmod_600(reloader, keys_dir, errors):
    ring = reloader.current()
    key_file = keys_dir / f"{ring.signer.kid}.pem"
    key_file.chmod(0o640)

    reloader.check()
    assert reloader.status == "stale"
    assert "chmod 600" in errors[0]
    assert reloader.current() is ring

    key_file.chmod(0o600)  # changes only the mode and ctime: still a change

    assert reloader.check() is True
    assert reloader.status == "ok"


def test_manifest_naming_a_missing_file_keeps_the_last_good_ring(reloader, keys_dir, clock):
    ring = reloader.current()
    data = json.loads((keys_dir / "manifest.json").read_text())
    data["keys"][0]["kid"] = "sig-20270115-0badf11e"
    data["keys"][0]["file"] = "sig-20270115-0badf11e.pem"
    (keys_dir / "manifest.json").write_text(json.dumps(data))

    assert reloader.check() is False
    assert reloader.current() is ring
    assert "sig-20270115-0badf11e.pem" in (reloader.last_error or "")


def test_key_files_written_before_their_manifest_change_nothing(reloader, keys_dir, clock):
    ring = reloader.current()
    # A writer mid-way: the new key file is in place, the manifest does not name it yet.
    record = new_record("sig", "ES256", clock.now)
    write_signing_key(keys_dir, record, generate_signing_key("ES256"), None)

    reloader.check()

    assert reloader.status == "ok"
    assert reloader.current().signer.kid == ring.signer.kid
    assert reloader.current().verifying_key(record.kid) is None


def test_constructor_refuses_an_unusable_ring(tmp_path):
    with pytest.raises(KeyRingError, match=r"manifest\.json is missing"):
        KeyRingReloader(tmp_path, algorithm="ES256")
    with pytest.raises(ValueError, match="interval"):
        KeyRingReloader(tmp_path, algorithm="ES256", interval=0)


def test_a_ring_given_at_start_is_checked_against_the_disk_once(keys_dir, clock):
    ring, _ = ensure_ring(keys_dir, algorithm="ES256", clock=clock)
    reloader = KeyRingReloader(keys_dir, algorithm="ES256", ring=ring, clock=clock)
    assert reloader.current() is ring

    assert reloader.check() is True
    assert reloader.check() is False


@pytest.mark.gen_test(timeout=2 * PICKED_UP_WITHIN)
async def test_periodic_checks_pick_up_a_rotation(reloader, keys_dir, clock):
    old = reloader.current().signer.kid
    reloader.start()
    reloader.start()  # idempotent
    try:
        rotate(keys_dir, clock)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PICKED_UP_WITHIN
        while loop.time() < deadline:
            if reloader.current().signer.kid != old:
                break
            await asyncio.sleep(0.01)
    finally:
        reloader.stop()

    assert reloader.current().signer.kid != old
    assert reloader.current().verifying_key(old) is not None


@pytest.mark.gen_test
async def test_check_async_runs_off_the_event_loop(reloader, keys_dir, clock):
    rotate(keys_dir, clock)

    assert await reloader.check_async(force=False) is True
    assert await reloader.check_async() is False
