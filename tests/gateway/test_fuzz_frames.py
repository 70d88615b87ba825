"""A bounded run of the frame fuzzer (``tests/gateway/fuzz_frames.py``; the long run is in docs/security.md)."""

from __future__ import annotations

import logging

from tests.gateway.conftest import gateway_settings, start_gateway
from tests.gateway.fuzz_frames import fuzz


async def test_fuzzed_frames_never_crash_the_gateway_nor_starve_others(upstreams, caplog) -> None:
    caplog.set_level(logging.WARNING)
    server = start_gateway(gateway_settings(upstreams, max_connections_per_address=10_000))
    try:
        report = await fuzz(server.port, rounds=60, seed=15)
    finally:
        server.stop()
    assert report.rounds == 60 and report.server_errors == 0
    assert report.bad_close_codes == []  # every close the server chose carries a code RFC 6455 §7.4 allows
    assert sum(report.close_codes.values()) > 0  # the cases do provoke protocol closes
    assert report.slowest_bystander_s < 1.0
    crashes = [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]
    assert crashes == [], [record.getMessage() for record in crashes]
