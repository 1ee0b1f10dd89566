"""Start-up checks of ``tokensvc serve`` that need no running server."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
from pathlib import Path

import pytest

from tokensvc import server
from tokensvc.config import (
    ClientConfig,
    Config,
    KeysConfig,
    RevocationConfig,
    SecretsConfig,
    ServerConfig,
)
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


# -- start-up warnings ----------------------------------------------------------------


def startup_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, config: Config
) -> list[str]:
    """The warnings ``prepare`` logs for ``config`` (its key ring in ``tmp_path``)."""
    config = dataclasses.replace(config, keys=KeysConfig(dir=tmp_path / "keys"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tokensvc.server"):
        server.prepare(config)
    return [r.getMessage() for r in caplog.records
            if r.name == "tokensvc.server" and r.levelno == logging.WARNING]


def with_secrets_file(path: Path) -> Config:
    return dataclasses.replace(Config(), secrets=SecretsConfig(path=path))


def test_missing_secrets_file_is_a_start_up_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "secrets.toml"
    (warning,) = startup_warnings(tmp_path, caplog, with_secrets_file(path))
    assert warning.startswith(f"secrets file {path} does not exist: ")
    assert "read again when it changes" in warning


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot be read (Is a directory)"),  # a directory where the file should be
        ('demo = "sk-secret-value-in-a-broken-file\n', "is unusable: not valid TOML"),
        ("[nested]\ndemo = 1\n", "is unusable: the value of 'nested' is not a string"),
    ],
)
def test_unusable_secrets_file_is_a_start_up_warning_without_its_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | None, problem: str
) -> None:
    path = tmp_path / "secrets.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content, encoding="utf-8")
        path.chmod(0o600)
    (warning,) = startup_warnings(tmp_path, caplog, with_secrets_file(path))
    assert warning.startswith(f"secrets file {path} {problem}")
    assert "sk-secret" not in warning


def test_good_secrets_file_and_other_providers_are_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text('demo = "sk-x"\n', encoding="utf-8")
    path.chmod(0o600)
    assert startup_warnings(tmp_path, caplog, with_secrets_file(path)) == []
    env = dataclasses.replace(Config(), secrets=SecretsConfig(provider="env"))
    assert startup_warnings(tmp_path, caplog, env) == []


def test_plain_client_secret_is_a_start_up_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "plain-client-secret-0123456789"
    plain = ClientConfig(client_id="dev", secret_sha256=hashlib.sha256(secret.encode())
                         .hexdigest(), plain_secret=True)
    hashed = dataclasses.replace(plain, client_id="prod", plain_secret=False)
    config = dataclasses.replace(quiet_config(tmp_path), clients=(plain, hashed))
    warnings = startup_warnings(tmp_path, caplog, config)
    assert warnings == [
        "client dev has a plain secret in the config file; use secret_sha256 outside development"
    ]
    assert secret not in caplog.text


@pytest.mark.parametrize(
    ("host", "warned"),
    [("127.0.0.1", False), ("::1", False), ("localhost", False), ("127.0.0.2", False),
     ("0.0.0.0", True), ("", True), ("::", True), ("192.0.2.10", True),  # noqa: S104
     ("tokensvc.example", True)],
)
def test_demo_on_a_non_loopback_address_is_a_start_up_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str, warned: bool
) -> None:
    config = quiet_config(tmp_path)
    demo = dataclasses.replace(config, server=ServerConfig(host=host, demo=True))
    warnings = startup_warnings(tmp_path, caplog, demo)
    assert len(warnings) == int(warned), warnings
    if warned:
        assert warnings[0].startswith(f"--demo is for development, but the server listens on "
                                      f"{host or 'every address'}, which is not a loopback")
    # The same address without --demo is an ordinary deployment: no warning.
    plain = dataclasses.replace(config, server=ServerConfig(host=host))
    assert startup_warnings(tmp_path, caplog, plain) == []


def quiet_config(tmp_path: Path) -> Config:
    """A config with a good secrets file, so only the warning under test is logged."""
    path = tmp_path / "secrets.toml"
    path.write_text('demo = "sk-x"\n', encoding="utf-8")
    path.chmod(0o600)
    return with_secrets_file(path)
