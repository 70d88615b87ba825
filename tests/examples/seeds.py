"""Run the seeds' own clients (``seed_clients/``), adapted only in host and port, as subprocesses: the
Python ones with this interpreter, seed 002's JavaScript one with Node.js (``page.mjs`` first: what the
snippet takes from its page)."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.infra import require_binary, skip_unless_required

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SEEDS = REPO.parent / "shared" / "seeds"
CLIENTS = {
    "002": ("seed002_client.py", "### Python Client\n\n```python\n"),
    "003": ("seed003_client.py", "### Python (Test Client)\n\n```python\n"),
    "002-js": ("seed002_client.mjs", "### JavaScript Client\n\n```javascript\n"),
}
SEED_ADDRESS = "localhost:8000"


def seed_text(seed: str) -> str | None:
    """The client code as printed in the seed document, or None when the seeds are not beside the repo."""
    documents = sorted(SEEDS.glob(f"{seed[:3]}_*.txt")) if SEEDS.is_dir() else []
    if not documents:
        return None
    text = documents[0].read_text()
    start = text.index(CLIENTS[seed][1]) + len(CLIENTS[seed][1])
    return text[start:text.index("```", start)]


def client_code(seed: str) -> str:
    return (HERE / "seed_clients" / CLIENTS[seed][0]).read_text()


def node_with_websocket() -> list[str]:
    """The command that runs an ES module with a global ``WebSocket`` (Node 22+ has it; Node 20 with
    ``--experimental-websocket``); skips (fails under CI) without such a Node."""
    node = require_binary("node")
    for flags in ([], ["--experimental-websocket"]):
        probe = subprocess.run([node, *flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [node, *flags]
    skip_unless_required(f"{node} has no WebSocket (Node.js 20.10+ is needed for seed 002's JavaScript client)")


class SeedClient:
    """The seed's client against ``host:port``: its printed lines are read as they come."""

    def __init__(self, seed: str, port: int) -> None:
        code = client_code(seed)
        assert code.count(SEED_ADDRESS) >= 1
        code = code.replace(SEED_ADDRESS, f"127.0.0.1:{port}")
        self.folder: str | None = None
        if seed.endswith("-js"):
            command = node_with_websocket()
            self.folder = tempfile.mkdtemp(prefix="seed-client-")
            script = Path(self.folder) / "client.mjs"
            script.write_text((HERE / "seed_clients" / "page.mjs").read_text() + code)
            command.append(str(script))
        else:
            command = [sys.executable, "-u", "-c", code]
        self.popen = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next_line(self, timeout_s: float = 15.0) -> str:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"the seed client printed nothing for {timeout_s} s") from None
        if line is None:
            stderr = self.popen.stderr.read() if self.popen.stderr else ""
            raise AssertionError(f"the seed client exited ({self.popen.wait()}): {stderr[-2000:]}")
        return line

    def rest(self, timeout_s: float = 15.0) -> list[str]:
        """The lines it prints until it exits by itself (within ``timeout_s`` each)."""
        lines = []
        while True:
            try:
                line = self._lines.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"the seed client is still running after {timeout_s} s: {lines}") from None
            if line is None:
                return lines
            lines.append(line)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def wait_for_window_start(window_s: float, margin_s: float) -> None:
    """Sleep into the next window when fewer than ``margin_s`` seconds are left in this one."""
    left_s = window_s - time.time() % window_s
    if left_s < margin_s:
        time.sleep(left_s + 0.05)
