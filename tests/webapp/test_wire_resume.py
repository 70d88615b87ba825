"""wire.js (the web app's gateway connection) resumes against a real gateway: tests/webapp/wire_resume.mjs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.gateway.conftest import TOKEN, gateway_settings, serve_three, start_gateway, stub_upstream
from tests.support.infra import skip_unless_required

HERE = Path(__file__).resolve().parent


def test_wire_js_identifies_with_its_last_position_and_gets_every_missed_push_once() -> None:
    node = shutil.which("node")
    if node is None:
        skip_unless_required("node is not installed: the web app's wire test needs Node.js 20+")
    upstreams_iter = serve_three(stub_upstream)
    upstreams = next(upstreams_iter)
    gateway = start_gateway(gateway_settings(upstreams, allow_insecure_device_ids=False, device_token_secret="wire-test-secret"))
    try:
        env = {**os.environ, "GATEWAY_URL": gateway.url, "WS_URL": gateway.ws_url, "INTERNAL_TOKEN": TOKEN}
        result = subprocess.run(
            [node, "--experimental-websocket", str(HERE / "wire_resume.mjs")], capture_output=True, text=True, timeout=120, env=env
        )
        assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
    finally:
        gateway.stop()
        next(upstreams_iter, None)
