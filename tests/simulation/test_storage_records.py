"""Finished simulations reach the storage service (``simulation_jobs``, ``simulation_results``)."""

from __future__ import annotations

import time

import httpx

from sonalyze.simulation.main import create_app
from tests.simulation.conftest import make_settings, shoebox_request
from tests.support.servers import ServiceProcess, ThreadedServer, service_http


def wait_for(url: str, done=lambda body: True, timeout_s: float = 30.0, **params) -> dict:
    """Poll ``url`` until it answers 200 with a body ``done`` accepts (delivery is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = service_http.get(url, params=params)
        if response.status_code == 200 and done(response.json()):
            return response.json()
        assert time.monotonic() < deadline, f"{url}: {response.status_code} {response.text}"
        time.sleep(0.1)


def test_a_finished_simulation_is_sent_to_storage(tmp_path) -> None:
    storage_db = f"sqlite+aiosqlite:///{tmp_path / 'storage.db'}"
    with ServiceProcess("storage", env={"DATABASE_URL": storage_db}) as storage:
        settings = make_settings(tmp_path, storage_url=storage.url)
        with ThreadedServer(create_app(settings)) as server:
            body = shoebox_request(microphones=[(5, 2, 1.2), (6, 4, 1.5)])
            result = service_http.post(server.url + "/simulate", json=body, timeout=60).json()
            simulation_id = result["id"]

            job = wait_for(f"{storage.url}/v1/simulation_jobs/{simulation_id}")
            assert job["status"] == "succeeded"
            assert job["room"] == result["request"]["room"]
            assert job["parameters"]["microphones"] == [[5.0, 2.0, 1.2], [6.0, 4.0, 1.5]]
            assert job["parameters"]["theory"]["sabine_s"] == result["theory"]["sabine_s"]

            page = wait_for(
                f"{storage.url}/v1/simulation_results", lambda body: len(body["items"]) == 2, simulation_job_id=simulation_id
            )
            kept = sorted(page["items"], key=lambda r: r["receiver_id"])
            assert [(r["source_id"], r["receiver_id"]) for r in kept] == [("0", "0"), ("0", "1")]
            assert kept[1]["metrics"]["c80_db"] == result["pairs"][1]["metrics"]["c80_db"]
            assert kept[1]["curves"]["decay_curves"] == result["pairs"][1]["metrics"]["decay_curves"]
