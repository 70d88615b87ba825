"""The system's end-to-end truth test: the whole backend from one command, a virtual session through it.

`sonalyze serve` starts all five services; `sonalyze.demo` runs a complete measurement (two speakers,
three microphones) through the gateway; every measured metric must agree with the simulation's own
analysis of the impulse response the virtual microphone recorded through.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sonalyze.demo.session import DemoConfig, run_demo
from sonalyze.services import SERVICES
from tests.support.servers import REPO_ROOT, free_port_block

BANDS_CHECKED_HZ = (250, 500, 1000, 2000, 4000)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """`sonalyze serve` on a free block of ports with a fresh data folder; stopped with Ctrl-C (SIGINT)."""
    data_dir = tmp_path_factory.mktemp("sonalyze-data")
    base_port = free_port_block(len(SERVICES))
    log_path = data_dir / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HTTP_TIMEOUT_SECONDS": "120", "RATE_LIMIT_RPS": "200", "RATE_LIMIT_BURST": "400"}
    env.pop("INTERNAL_AUTH_TOKEN", None)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sonalyze", "serve", "--host", "127.0.0.1", "--base-port", str(base_port), "--data-dir", str(data_dir)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while "Sonalyze is running" not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"sonalyze serve did not start:\n{log_path.read_text()}")
        time.sleep(0.2)
    yield {"gateway_url": f"http://127.0.0.1:{base_port}", "process": process, "log": log_path, "data_dir": data_dir}
    if process.poll() is None:
        process.kill()


@pytest.mark.slow
async def test_virtual_session_measures_what_the_simulation_predicts(backend, tmp_path):
    messages: list[str] = []
    result = await run_demo(DemoConfig(gateway_url=backend["gateway_url"], room="shoebox", snr_db=60.0, seed=3), messages.append)

    assert len(result.pairs) == 2 * 3
    assert any("session step: analyzing" in message for message in messages)
    for pair in result.pairs:
        measured, simulated = pair.measured, pair.simulated
        for band_hz in BANDS_CHECKED_HZ:
            index = measured["bands_hz"].index(band_hz)
            t30_measured, t30_simulated = measured["t30_s"]["bands"][index], simulated["t30_s"]["bands"][index]
            assert t30_measured is not None and t30_simulated is not None, (pair.label, band_hz, measured["t30_s"]["reasons"])
            assert abs(t30_measured / t30_simulated - 1) <= 0.05, (pair.label, band_hz, t30_measured, t30_simulated)
        for index, band_hz in enumerate(measured["bands_hz"]):
            c80_measured, c80_simulated = measured["c80_db"]["bands"][index], simulated["c80_db"]["bands"][index]
            assert c80_measured is not None and c80_simulated is not None, (pair.label, band_hz)
            assert abs(c80_measured - c80_simulated) <= 1.0, (pair.label, band_hz, c80_measured, c80_simulated)
        assert abs(measured["sti"]["value"] - simulated["sti"]["value"]) <= 0.03, pair.label

    from sonalyze.demo.session import save_outputs

    written = save_outputs(result, tmp_path / "plots")
    assert len(written) == len(result.pairs) + 1
    assert all(path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in written)


def test_ctrl_c_stops_every_service(backend):
    process: subprocess.Popen = backend["process"]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    log = backend["log"].read_text()
    assert "Sonalyze stopped." in log
    for name in SERVICES:
        assert f"  {name:<12} http://127.0.0.1:" in log
    assert (Path(backend["data_dir"]) / "lobby.db").exists()
