"""``sonalyze demo`` survives the gateway restarting in the middle of a session (issue 18).

The five services run as separate processes on loopback (wired as ``sonalyze serve`` wires them), so the
gateway alone can be killed (SIGKILL: no goodbye to any phone) and started again on the same port while
the first speaker's sweep plays. Its push history was in the process (``memory://``): the virtual devices
reconnect by themselves, are told to resynchronize, read the session status and carry out the step that
waits for them; requests and uploads that the dead gateway never answered are sent again. The session
must complete with a result for every speaker-microphone pair.
"""

from __future__ import annotations

import threading

import pytest

from sonalyze.demo.session import DemoConfig, run_demo
from sonalyze.launcher import service_environment
from sonalyze.services import SERVICES
from tests.support.servers import INTERNAL_TOKEN, ServiceProcess, free_port_block


@pytest.mark.slow
async def test_a_demo_session_completes_across_a_gateway_restart(tmp_path) -> None:
    base_port = free_port_block(len(SERVICES))
    ports = {name: base_port + index for index, name in enumerate(SERVICES)}
    envs = service_environment(list(SERVICES), data_dir=tmp_path, ports=ports, token=INTERNAL_TOKEN, base_env={})
    envs["gateway"] |= {"DEVICE_TOKEN_SECRET": "a-secret-the-restarted-gateway-keeps", "RATE_LIMIT_RPS": "200", "RATE_LIMIT_BURST": "400"}
    services = {name: ServiceProcess(name, env={**envs[name], "HTTP_TIMEOUT_SECONDS": "120"}, port=ports[name]) for name in SERVICES}
    restarts: list[str] = []
    finished = threading.Event()

    def restart_gateway() -> None:
        services["gateway"].kill()
        restarts.append("killed")
        services["gateway"].start()
        restarts.append("started")
        finished.wait(600)  # a child started here gets SIGTERM when this thread ends (PR_SET_PDEATHSIG)

    restarter = threading.Thread(target=restart_gateway)
    messages: list[str] = []

    def progress(message: str) -> None:
        messages.append(message)
        if "plays the sweep" in message and not restarter.is_alive() and not restarts:  # mid-session, first speaker
            restarter.start()

    try:
        for service in services.values():
            service.start()
        result = await run_demo(DemoConfig(gateway_url=services["gateway"].url, room="shoebox", snr_db=60.0, seed=3, session_timeout_s=180.0), progress)
    finally:
        for service in services.values():
            service.stop()
        finished.set()
        if restarter.is_alive():
            restarter.join(60)

    assert restarts == ["killed", "started"]
    played = next(i for i, message in enumerate(messages) if "plays the sweep" in message)
    reconnected = [message for message in messages[played:] if "reconnected; the session is" in message]
    assert len(reconnected) == 5, messages  # every virtual device came back by itself
    assert len(result.pairs) == 2 * 3  # both speakers, each heard by the three microphones
    for pair in result.pairs:
        index = pair.measured["bands_hz"].index(1000)
        t30_measured, t30_simulated = pair.measured["t30_s"]["bands"][index], pair.simulated["t30_s"]["bands"][index]
        assert t30_measured is not None and abs(t30_measured / t30_simulated - 1) <= 0.05, (pair.label, t30_measured, t30_simulated)
