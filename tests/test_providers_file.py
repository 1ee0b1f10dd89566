"""FileSecretProvider: a flat TOML table, re-read when the file changes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from tornado.ioloop import IOLoop

from tokensvc.config import SecretsConfig
from tokensvc.errors import ProviderUnavailable, UnknownSecret
from tokensvc.providers import (
    FileSecretProvider,
    SecretProvider,
    SingleFlightProvider,
    make_provider,
)
from tokensvc.providers.file import MAX_FILE_SIZE
from tokensvc.redacted import Secret

LOGGER = "tokensvc.providers.file"

Write = Callable[[str], Path]
Resolve = Callable[[SecretProvider, str], Secret]


@pytest.fixture
def secrets_path(tmp_path: Path) -> Path:
    return tmp_path / "secrets.toml"


@pytest.fixture
def write(secrets_path: Path) -> Write:
    """Write the secrets file in place, mode 0600."""

    def _write(text: str) -> Path:
        secrets_path.write_text(text, encoding="utf-8")
        secrets_path.chmod(0o600)
        return secrets_path

    return _write


def replace_atomically(path: Path, text: str) -> None:
    """Write a sibling file and rename it over ``path`` (a new inode, as deploy tools do)."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text, encoding="utf-8")
    staged.chmod(0o600)
    os.replace(staged, path)


@pytest.fixture
def resolve(io_loop: IOLoop) -> Resolve:
    """Run one lookup to completion on the test's IOLoop."""

    def _resolve(provider: SecretProvider, secret_key_id: str) -> Secret:
        result: Secret = io_loop.run_sync(lambda: provider.resolve(secret_key_id), timeout=5)
        return result

    return _resolve


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def test_resolves_quoted_ids_from_a_flat_table(write: Write, resolve: Resolve) -> None:
    provider = FileSecretProvider(write('"prod" = "sk-prod"\n"team.alpha:dev" = "sk-dev"\n'))
    assert resolve(provider, "prod") == Secret("sk-prod")
    assert resolve(provider, "team.alpha:dev").reveal() == "sk-dev"


@pytest.mark.parametrize("text", ['"prod" = "sk-prod"\n', '"prod" = "sk-prod"\n"empty" = ""\n'])
def test_absent_or_empty_id_is_unknown(write: Write, text: str, resolve: Resolve) -> None:
    provider = FileSecretProvider(write(text))
    for secret_key_id in ("other", "empty"):
        with pytest.raises(UnknownSecret):
            resolve(provider, secret_key_id)


def test_missing_file_means_no_secrets_and_warns_once(
    secrets_path: Path, caplog: pytest.LogCaptureFixture, resolve: Resolve
) -> None:
    provider = FileSecretProvider(secrets_path)
    for _ in range(3):
        with pytest.raises(UnknownSecret):
            resolve(provider, "prod")
    assert len(messages(caplog, logging.WARNING)) == 1


def test_file_created_later_is_picked_up(
    secrets_path: Path, write: Write, resolve: Resolve
) -> None:
    provider = FileSecretProvider(secrets_path)
    with pytest.raises(UnknownSecret):
        resolve(provider, "prod")
    write('"prod" = "sk-prod"\n')
    assert resolve(provider, "prod").reveal() == "sk-prod"


def test_in_place_edit_is_picked_up(write: Write, resolve: Resolve) -> None:
    provider = FileSecretProvider(write('"prod" = "sk-one"\n'))
    assert resolve(provider, "prod").reveal() == "sk-one"
    write('"prod" = "sk-two-longer"\n')
    assert resolve(provider, "prod").reveal() == "sk-two-longer"


def test_same_size_rewrite_with_mtime_restored_is_picked_up(write: Write, resolve: Resolve) -> None:
    # What ``cp -p`` does: new content, same size, same mtime. ctime still moves.
    path = write('"prod" = "sk-aaaa"\n')
    provider = FileSecretProvider(path)
    assert resolve(provider, "prod").reveal() == "sk-aaaa"
    before = path.stat()
    write('"prod" = "sk-bbbb"\n')
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert resolve(provider, "prod").reveal() == "sk-bbbb"


def test_atomic_replace_is_picked_up(write: Write, resolve: Resolve) -> None:
    path = write('"prod" = "sk-old"\n')
    provider = FileSecretProvider(path)
    assert resolve(provider, "prod").reveal() == "sk-old"
    replace_atomically(path, '"prod" = "sk-new"\n')
    assert resolve(provider, "prod").reveal() == "sk-new"


def test_unchanged_file_is_read_once(
    write: Write, caplog: pytest.LogCaptureFixture, resolve: Resolve
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    provider = FileSecretProvider(write('"prod" = "sk-prod"\n'))
    for _ in range(3):
        resolve(provider, "prod")
    assert len([m for m in messages(caplog, logging.INFO) if m.startswith("loaded")]) == 1


def test_removed_line_withdraws_the_secret(write: Write, resolve: Resolve) -> None:
    provider = FileSecretProvider(write('"prod" = "sk-prod"\n"dev" = "sk-dev"\n'))
    assert resolve(provider, "prod").reveal() == "sk-prod"
    write('"dev" = "sk-dev"\n')
    with pytest.raises(UnknownSecret):
        resolve(provider, "prod")


def test_deleted_file_withdraws_every_secret(write: Write, resolve: Resolve) -> None:
    path = write('"prod" = "sk-prod"\n')
    provider = FileSecretProvider(path)
    assert resolve(provider, "prod").reveal() == "sk-prod"
    path.unlink()
    with pytest.raises(UnknownSecret):
        resolve(provider, "prod")


def test_file_recreated_broken_after_deletion_serves_nothing(
    write: Write, resolve: Resolve
) -> None:
    path = write('"prod" = "sk-prod"\n')
    provider = FileSecretProvider(path)
    resolve(provider, "prod")
    path.unlink()
    with pytest.raises(UnknownSecret):
        resolve(provider, "prod")
    write('"prod" = \n')
    # The last good version is the deleted (empty) one, not the secrets before it.
    with pytest.raises(UnknownSecret):
        resolve(provider, "prod")


INVALID_FILES = [
    pytest.param('"prod" = "sk-hidden"\n"dev" = sk-bare-value\n', id="not-toml"),
    pytest.param('"prod" = "sk-hidden"\n"dev" = 42\n', id="non-string"),
    pytest.param('"prod" = "sk-hidden"\nteam.alpha = "sk-dotted"\n', id="bare-dotted-key"),
    pytest.param('"prod" = "sk-hidden"\n[dev]\nkey = "sk-table"\n', id="nested-table"),
]


@pytest.mark.parametrize("text", INVALID_FILES)
def test_invalid_file_never_good_is_unavailable_without_leaking(
    write: Write, text: str, caplog: pytest.LogCaptureFixture, resolve: Resolve
) -> None:
    provider = FileSecretProvider(write(text))
    with pytest.raises(ProviderUnavailable) as caught:
        resolve(provider, "prod")
    assert caught.value.__cause__ is None
    for secret in ("sk-hidden", "sk-bare-value", "sk-dotted", "sk-table", "42"):
        assert secret not in str(caught.value)
        assert secret not in caplog.text


def test_toml_error_keeps_only_the_position(
    write: Write, caplog: pytest.LogCaptureFixture, resolve: Resolve
) -> None:
    # tomllib would quote the offending character, here one of the secret's.
    provider = FileSecretProvider(write('"prod" = "sk-\x01"\n'))
    with pytest.raises(ProviderUnavailable) as caught:
        resolve(provider, "prod")
    assert "line 1, column" in str(caught.value)
    assert "\\x01" not in str(caught.value)
    assert "\\x01" not in caplog.text


def test_non_string_value_error_names_the_id(write: Write, resolve: Resolve) -> None:
    provider = FileSecretProvider(write('"prod" = 42\n'))
    with pytest.raises(ProviderUnavailable, match="'prod' is not a string"):
        resolve(provider, "prod")


@pytest.mark.parametrize("text", INVALID_FILES)
def test_invalid_after_valid_keeps_the_last_good_version_and_logs_once(
    write: Write, text: str, caplog: pytest.LogCaptureFixture, resolve: Resolve
) -> None:
    provider = FileSecretProvider(write('"prod" = "sk-good"\n'))
    assert resolve(provider, "prod").reveal() == "sk-good"
    write(text)
    for _ in range(3):
        assert resolve(provider, "prod").reveal() == "sk-good"
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1
    assert "last good version" in errors[0]
    assert "sk-hidden" not in caplog.text


def test_fixed_file_replaces_the_last_good_version(write: Write, resolve: Resolve) -> None:
    provider = FileSecretProvider(write('"prod" = "sk-good"\n'))
    resolve(provider, "prod")
    write('"prod" = \n')
    assert resolve(provider, "prod").reveal() == "sk-good"
    write('"prod" = "sk-fixed"\n')
    assert resolve(provider, "prod").reveal() == "sk-fixed"


def test_unreadable_path_is_unavailable_until_it_becomes_a_file(
    secrets_path: Path, write: Write, resolve: Resolve
) -> None:
    # A directory in the file's place: unreadable, whatever the test's privileges.
    secrets_path.mkdir()
    provider = FileSecretProvider(secrets_path)
    with pytest.raises(ProviderUnavailable, match="cannot read"):
        resolve(provider, "prod")
    secrets_path.rmdir()
    write('"prod" = "sk-prod"\n')
    assert resolve(provider, "prod").reveal() == "sk-prod"


def test_unreadable_after_valid_keeps_the_last_good_version(
    secrets_path: Path, write: Write, resolve: Resolve
) -> None:
    provider = FileSecretProvider(write('"prod" = "sk-good"\n'))
    resolve(provider, "prod")
    secrets_path.unlink()
    secrets_path.mkdir()
    # A missing file was never seen in between, so this is a broken version, not a deletion.
    assert resolve(provider, "prod").reveal() == "sk-good"


@pytest.mark.parametrize(
    "data",
    [b'"prod" = "\xff\xfe"\n', b"# " + b"x" * MAX_FILE_SIZE + b"\n"],
    ids=["not-utf8", "too-large"],
)
def test_undecodable_or_oversized_file_is_unavailable(
    secrets_path: Path, data: bytes, resolve: Resolve
) -> None:
    secrets_path.write_bytes(data)
    provider = FileSecretProvider(secrets_path)
    with pytest.raises(ProviderUnavailable):
        resolve(provider, "prod")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize(("mode", "warned"), [(0o600, 0), (0o640, 1), (0o604, 1), (0o400, 0)])
def test_warns_once_when_group_or_others_have_access(
    write: Write, caplog: pytest.LogCaptureFixture, mode: int, warned: int, resolve: Resolve
) -> None:
    path = write('"prod" = "sk-prod"\n')
    path.chmod(mode)
    provider = FileSecretProvider(path)
    resolve(provider, "prod")
    path.write_text('"prod" = "sk-again"\n', encoding="utf-8")  # forces a re-read
    resolve(provider, "prod")
    warnings = [m for m in messages(caplog, logging.WARNING) if "accessible" in m]
    assert len(warnings) == warned


def test_repr_shows_the_path_only(write: Write) -> None:
    path = write('"prod" = "sk-prod"\n')
    assert repr(FileSecretProvider(path)) == f"FileSecretProvider({str(path)!r})"


def test_make_provider_builds_the_file_provider_behind_single_flight(
    write: Write, resolve: Resolve, io_loop: IOLoop
) -> None:
    path = write('"prod" = "sk-prod"\n')
    provider = make_provider(SecretsConfig(provider="file", path=path, timeout=1.0))
    assert isinstance(provider, SingleFlightProvider)
    assert isinstance(provider.inner, FileSecretProvider)
    assert provider.inner.path == path
    assert resolve(provider, "prod").reveal() == "sk-prod"
    io_loop.run_sync(provider.close)
