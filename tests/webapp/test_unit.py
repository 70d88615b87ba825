"""The app's pure modules (WAV encoding, frame indexing, session model and default names, results, room checks,
plot markers and offsets) under Node's test runner."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.infra import skip_unless_required

HERE = Path(__file__).resolve().parent


def test_pure_modules_with_node() -> None:
    node = shutil.which("node")
    if node is None:
        skip_unless_required("node is not installed: the web app's unit tests need Node.js 20+")
    result = subprocess.run([node, "--test", str(HERE / "unit.test.mjs")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
