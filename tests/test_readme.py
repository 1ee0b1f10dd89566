"""The README's curl walk-through, run verbatim against a freshly started server."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
DEFAULT_BASE = "http://127.0.0.1:8765"


def walkthrough() -> str:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"<!-- walkthrough:start -->(.*?)<!-- walkthrough:end -->", text, re.S)
    assert section, "README lost its walk-through markers"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "the walk-through has no bash block"
    return block.group(1)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokensvc", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    url = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("tokensvc listening on "):
            url = line.split()[-1]
            break
        if not line and proc.poll() is not None:
            break
    try:
        assert url, "server did not announce its URL"
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        finally:
            proc.stdout.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walk-through uses curl")
def test_readme_walkthrough_works_verbatim(server: str, tmp_path: Path) -> None:
    script = walkthrough()
    assert DEFAULT_BASE in script
    script = script.replace(DEFAULT_BASE, server)  # the only change: the test's free port
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(temp)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # The stream went to a temporary file, removed afterwards; the folder gets no events.txt.
    assert list(temp.iterdir()) == []
    assert not (tmp_path / "events.txt").exists()
    # The stream is the last thing printed.
    events = result.stdout[result.stdout.index("retry: "):]
    kinds = re.findall(r"^event: (\w+)$", events, re.M)
    assert kinds[0] == "message"
    assert kinds.count("delta") == 4  # "hello ", "from ", "the ", "panel"
    assert kinds[-2:] == ["done", "revoked"]
    assert '"text": "hello from the panel"' in events
    assert '"role":"assistant","text":"hello from the panel"' in result.stdout  # GET thread
    # The upstream secret never leaves the server.
    assert "sk-your-real-upstream-key" not in events + result.stdout
