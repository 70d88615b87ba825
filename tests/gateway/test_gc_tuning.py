"""The gateway's garbage-collector settings (gateway/gc_tuning.py), checked in a process of its own: they
are process-wide, and this test process must keep CPython's defaults."""

from __future__ import annotations

import json
import subprocess
import sys

from sonalyze.gateway.gc_tuning import GEN0_THRESHOLD

PROBE = """
import gc, json
from sonalyze.gateway.config import GatewaySettings
from tests.gateway.conftest import start_gateway
before = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
server = start_gateway(GatewaySettings(internal_auth_token="t"))
after = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
server.stop()
print(json.dumps({"before": before, "after": after}))
"""


def test_a_started_gateway_promotes_less_and_never_walks_its_start_up_objects_again() -> None:
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["before"]["threshold"][0] == 700 and report["before"]["frozen"] == 0
    assert report["after"]["threshold"][0] == GEN0_THRESHOLD
    assert report["after"]["frozen"] > 10_000  # the modules, routes and settings
