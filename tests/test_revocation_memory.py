"""The memory backend's file: restart, torn writes, compaction, permissions, failures."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tokensvc.errors import StoreUnavailable
from tokensvc.revocation import RevocationEntry, RevocationKind
from tokensvc.revocation.memory import MemoryRevocationStore

from .test_revocation_store import ISS, make_claims, make_entry, running


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "revocations.jsonl"


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().split("\n") if line]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _damage(path: Path) -> None:
    """A damaged line in the middle, then a crash in the middle of writing the last record."""
    intact = path.read_bytes()
    path.write_bytes(intact + b"not json at all\n" + intact[: len(intact) // 2])


def _make_unwritable(path: Path) -> None:
    """Root ignores permission bits, so make the path impossible to open for writing."""
    path.unlink()
    path.mkdir()


def _create_loose(path: Path) -> None:
    path.parent.mkdir()
    path.write_text("")
    path.chmod(0o644)


@pytest.mark.gen_test
async def test_revocations_and_used_tickets_survive_restart(path: Path, clock: Any) -> None:
    now = clock.now
    kinds: list[tuple[RevocationKind, str]] = [
        ("jti", "jti-7"),
        ("sid", "sid-7"),
        ("sub", "carol"),
        ("skid", "sk-7"),
        ("client", "ci"),
    ]
    async with running(MemoryRevocationStore(path, clock=clock)) as store:
        for kind, value in kinds:
            await store.revoke(make_entry(kind, value, now, client_id="ci"))
        assert await store.consume_ticket(ISS, "ticket-1", now + 60)

    async with running(MemoryRevocationStore(path, clock=clock)) as restarted:
        assert restarted.is_revoked(make_claims(now, jti="jti-7"))
        assert restarted.is_revoked(make_claims(now, client_id="ci", sid="sid-7"))
        assert restarted.is_revoked(make_claims(now, client_id="ci", sub="carol"))
        assert restarted.is_revoked(make_claims(now, client_id="ci", skid="sk-7"))
        assert restarted.is_revoked(make_claims(now, client_id="ci"))
        assert not restarted.is_revoked(make_claims(now))
        assert await restarted.consume_ticket(ISS, "ticket-1", now + 60) is False


@pytest.mark.gen_test
async def test_torn_last_line_is_skipped_and_not_glued_to_the_next(
    path: Path, clock: Any
) -> None:
    now = clock.now
    async with running(MemoryRevocationStore(path, clock=clock)) as store:
        await store.revoke(make_entry("sid", "sid-1", now))
    _damage(path)

    async with running(MemoryRevocationStore(path, clock=clock)) as store:
        assert store.is_revoked(make_claims(now, sid="sid-1"))
        await store.revoke(make_entry("sid", "sid-2", now))

    async with running(MemoryRevocationStore(path, clock=clock)) as store:
        assert store.is_revoked(make_claims(now, sid="sid-1"))
        assert store.is_revoked(make_claims(now, sid="sid-2"))


@pytest.mark.gen_test
async def test_compaction_keeps_live_entries_and_drops_expired(
    path: Path, clock: Any
) -> None:
    now = clock.now
    store = MemoryRevocationStore(path, clock=clock, compact_min_lines=10)
    async with running(store):
        await store.revoke(make_entry("sid", "keep-1", now, ttl=3600))
        for n in range(20):
            await store.revoke(make_entry("sid", f"short-{n}", now, ttl=60))
        assert len(_lines(path)) == 21  # nothing dead yet, so nothing to compact

        clock.advance(120)
        await store.revoke(make_entry("sid", "keep-2", clock.now, ttl=3600))

        lines = _lines(path)
        assert len(lines) == 2
        assert {json.loads(line)["value"] for line in lines} == {"keep-1", "keep-2"}
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
        assert _mode(path) == 0o600

    async with running(MemoryRevocationStore(path, clock=clock)) as restarted:
        assert restarted.is_revoked(make_claims(now, sid="keep-1"))
        assert restarted.is_revoked(make_claims(now, sid="keep-2"))
        assert not restarted.is_revoked(make_claims(now, sid="short-3"))


@pytest.mark.gen_test
async def test_file_is_private_and_its_folder_created(path: Path, clock: Any) -> None:
    assert not path.parent.exists()
    async with running(MemoryRevocationStore(path, clock=clock)) as store:
        await store.revoke(make_entry("sid", "sid-1", clock.now))
    assert _mode(path) == 0o600
    assert _mode(path.parent) & 0o077 == 0


@pytest.mark.gen_test
async def test_loosened_file_mode_is_tightened_on_start(path: Path, clock: Any) -> None:
    _create_loose(path)
    async with running(MemoryRevocationStore(path, clock=clock)):
        assert _mode(path) == 0o600


@pytest.mark.gen_test
async def test_unwritable_file_fails_revoke_and_records_nothing(
    path: Path, clock: Any
) -> None:
    now = clock.now
    heard: list[RevocationEntry] = []
    async with running(MemoryRevocationStore(path, clock=clock)) as store:
        store.subscribe(heard.append)
        await store.revoke(make_entry("sid", "sid-1", now))
        _make_unwritable(path)

        with pytest.raises(StoreUnavailable):
            await store.revoke(make_entry("sid", "sid-2", now))
        with pytest.raises(StoreUnavailable):
            await store.consume_ticket(ISS, "ticket-1", now + 60)

        assert not store.is_revoked(make_claims(now, sid="sid-2"))
        assert [entry.value for entry in heard] == ["sid-1"]
        assert store.is_revoked(make_claims(now, sid="sid-1"))


@pytest.mark.gen_test
async def test_unreadable_file_stops_start(tmp_path: Path, clock: Any) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    store = MemoryRevocationStore(blocker / "revocations.jsonl", clock=clock)
    with pytest.raises(StoreUnavailable):
        await store.start()
    assert not store.ready


@pytest.mark.gen_test
async def test_without_a_path_it_keeps_everything_in_memory(clock: Any) -> None:
    async with running(MemoryRevocationStore(None, clock=clock)) as store:
        assert store.path is None
        await store.revoke(make_entry("sid", "sid-1", clock.now))
        assert store.is_revoked(make_claims(clock.now))
        assert await store.consume_ticket(ISS, "ticket-1", clock.now + 60)
        assert not await store.consume_ticket(ISS, "ticket-1", clock.now + 60)
