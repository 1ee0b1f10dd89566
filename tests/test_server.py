"""Start-up checks of ``tokensvc serve`` that need no running server."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from tokensvc import server
from tokensvc.config import Config, KeysConfig, RevocationConfig, ServerConfig
from tokensvc.errors import ConfigError


def test_redis_backend_without_the_redis_package_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a)
    )
    config = dataclasses.replace(
        Config(),
        server=dataclasses.replace(ServerConfig(), workers=2),
        revocation=dataclasses.replace(RevocationConfig(), backend="redis"),
        keys=KeysConfig(dir=tmp_path / "keys"),
    )
    with pytest.raises(ConfigError, match=r"pip install 'tokensvc\[redis\]'"):
        server.prepare(config)
    assert not (tmp_path / "keys").exists()  # checked before anything is created


def test_first_start_creates_the_ring_and_the_client(tmp_path: Path) -> None:
    config = dataclasses.replace(Config(), keys=KeysConfig(dir=tmp_path / "keys"))
    prepared = server.prepare(config)
    assert [c.client_id for c in prepared.config.clients] == ["extension"]
    assert any("created a new key ring" in n for n in prepared.notices)
    secret = (tmp_path / "keys" / "extension.client-secret").read_text().strip()
    assert all(secret not in notice for notice in prepared.notices)
    again = server.prepare(config)
    assert any(n.startswith("using client 'extension'") for n in again.notices)
