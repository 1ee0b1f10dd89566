"""``scripts/rotate_keys.py``: the cron entry point, run the way cron runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tokensvc.keystore import load_ring, read_manifest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "rotate_keys.py"


def run_script(*argv: str, cwd: Path, env: dict[str, str] | None = None):
    # Only the essentials of the environment: cron gives a near-empty one, and the test must
    # not pick up the caller's TOKENSVC_* settings.
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *argv],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_rotate_script_rotates_the_ring(tmp_path):
    keys_dir = tmp_path / "keys"

    first = run_script("--keys-dir", "keys", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    old = load_ring(keys_dir, algorithm="ES256").signer.kid

    second = run_script("--keys-dir", str(keys_dir), cwd=tmp_path)
    assert second.returncode == 0, second.stderr

    ring = load_ring(keys_dir, algorithm="ES256")
    assert ring.signer.kid != old
    assert read_manifest(keys_dir).get(old).state == "retiring"  # type: ignore[union-attr]
    assert ring.signer.kid in second.stdout


def test_rotate_script_dry_run_writes_nothing(tmp_path):
    result = run_script("--keys-dir", str(tmp_path / "keys"), "--dry-run", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "dry run, nothing written" in result.stdout
    assert not (tmp_path / "keys").exists()


def test_rotate_script_reads_the_config_and_the_passphrase(tmp_path):
    config = tmp_path / "tokensvc.toml"
    config.write_text('[tokens]\nalgorithm = "EdDSA"\n[keys]\ndir = "ring"\n')
    env = {"TOKENSVC_KEYS_PASSPHRASE": "correct horse battery staple"}

    result = run_script("--config", str(config), cwd=SCRIPT.parent, env=env)

    assert result.returncode == 0, result.stderr
    ring = load_ring(
        tmp_path / "ring", algorithm="EdDSA", passphrase="correct horse battery staple"
    )
    assert ring.signer.algorithm == "EdDSA"
    assert "correct horse" not in result.stdout + result.stderr


def test_rotate_script_reports_a_bad_config_with_exit_status_2(tmp_path):
    config = tmp_path / "tokensvc.toml"
    config.write_text("[tokens]\nleeway = 600\n")

    result = run_script("--config", str(config), cwd=tmp_path)

    assert result.returncode == 2
    assert "leeway" in result.stderr
    assert "Traceback" not in result.stderr


def test_rotate_script_accepts_the_rotate_options_only(tmp_path):
    help_text = run_script("--help", cwd=tmp_path)
    assert help_text.returncode == 0
    for option in ("--keys-dir", "--config", "--dry-run"):
        assert option in help_text.stdout

    forced = run_script("--force", cwd=tmp_path)
    assert forced.returncode == 2  # argparse usage error: rotate never forces
