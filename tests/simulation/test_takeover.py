"""A running simulation is leased to the replica awaiting it; when that replica dies, another one takes it over.

Two ``sonalyze serve simulation`` processes on one PostgreSQL and one blob folder, their simulations on the
task queue (Redis database 15 of the test server, flushed first; one ``sonalyze worker`` with two
processes), pushing to a recording gateway: replica A accepts ``simulation.run`` (``wait: false``) and is
killed (SIGKILL) once the simulation runs; replica B claims it when A's lease lapses, runs it again and
the requesting device gets ``simulation.completed`` once; the simulation is recorded once. A replica that
stops gracefully releases its leases instead: the next one takes over at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from sonalyze.common.internal_auth import internal_headers
from sonalyze.simulation.main import create_app
from sonalyze.simulation.store import simulations_table
from sonalyze.storage.db import make_engine
from sonalyze.storage.outbox import outbox_table
from tests.simulation.conftest import flat, make_settings, shoebox_request
from tests.support.cluster import Worker
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ServiceProcess, ThreadedServer, free_port

LEASE_S = 2.0
REDIS_DB = 15
#: Seconds of work on one core (48 kHz ray tracing in a reverberant room, two pairs): outlasts the kill.
SLOW = shoebox_request(material=flat(0.05, 0.2), ray_tracing=True, sample_rate_hz=48000, microphones=[(5, 2, 1.2), (6, 4, 1.5)])


class RecordingGateway:
    """Stands in for the gateway's ``POST /internal/broadcast``: keeps each push, wakes up waiters."""

    def __init__(self) -> None:
        self.pushes: list[dict] = []
        self.arrived = threading.Condition()
        self.app = FastAPI()

        @self.app.post("/internal/broadcast")
        async def broadcast(request: Request) -> JSONResponse:
            push = json.loads(await request.body())
            with self.arrived:
                self.pushes.append(push)
                self.arrived.notify_all()
            return JSONResponse({"delivered": 1})

    def wait_for(self, event: str, timeout_s: float) -> dict:
        """The first push of ``event`` (AssertionError when none came within ``timeout_s``)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: any(p["event"] == event for p in self.pushes), timeout_s):
                raise AssertionError(f"no {event} push within {timeout_s} s: {[p['event'] for p in self.pushes]}")
            return next(p for p in self.pushes if p["event"] == event)

    def events(self) -> list[str]:
        with self.arrived:
            return [p["event"] for p in self.pushes]


async def _outbox_job_records(database_url: str, simulation_id: str) -> list[dict]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(outbox_table.c.payload).where(
                    (outbox_table.c.aggregate == simulation_id) & (outbox_table.c.resource == "simulation_jobs")
                )
            )
            return [row.payload for row in rows]
    finally:
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.redis
def test_a_killed_replicas_simulation_is_taken_over_and_completed_once(tmp_path, postgres_url, queue_url) -> None:
    gateway = RecordingGateway()
    gateway_server = ThreadedServer(gateway.app)
    worker = Worker(queue_url, processes=2)  # A's task still runs on one: B's runs on the other
    common = {
        "TASK_QUEUE_URL": queue_url,
        "DATABASE_URL": postgres_url,
        "BLOB_URL": f"file://{tmp_path / 'blobs'}",
        "GATEWAY_URL": gateway_server.url,
        "STORAGE_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: the storage records stay in the outbox
        "SIMULATION_JOB_LEASE_S": str(LEASE_S),
    }
    replicas = {
        name: ServiceProcess(
            "simulation", env={**common, "SIMULATION_DATA_DIR": str(tmp_path / name), "SIMULATION_REPLICA_ID": name}
        )
        for name in ("a", "b")
    }
    with gateway_server:
        try:
            for replica in replicas.values():  # one after the other: a child dies with the thread that started it
                replica.start()
            asked = httpx.post(
                replicas["a"].url + "/gateway/handle",
                json={"event": "simulation.run", "data": {**SLOW, "wait": False}, "device_id": "phone-1"},
                headers=internal_headers(INTERNAL_TOKEN, service=False),
                timeout=30,
            ).json()
            simulation_id = asked["data"]["id"]
            assert asked["data"]["status"] == "running", asked
            gateway.wait_for("simulation.progress", 120)  # A's task runs on the worker
            replicas["a"].kill()
            with httpx.Client(base_url=replicas["b"].url, headers=SERVICE_HEADERS, timeout=30) as b:
                assert b.get("/health").json()["workers"]["task_queue"] == "redis"
                assert b.get(f"/simulations/{simulation_id}").json()["status"] == "running"
                completed = gateway.wait_for("simulation.completed", 120)["data"]  # A's lease lapses, B runs it
                kept = b.get(f"/simulations/{simulation_id}").json()
                assert completed["id"] == simulation_id and completed["status"] == "succeeded", completed
                assert kept["pairs"] == completed["pairs"] and len(kept["pairs"]) == 2
                rir = b.get(kept["pairs"][1]["rir"]["path"])
                assert rir.status_code == 200 and rir.content[:4] == b"RIFF"
            assert "taking over simulation" in replicas["b"].log_text()
        finally:
            for replica in replicas.values():
                replica.stop()  # B's pushes and outbox rows are all sent or queued now
            worker.stop()
    pushed = [p for p in gateway.pushes if p["data"].get("id") == simulation_id]
    assert {tuple(p["targets"]["device_ids"]) for p in pushed} == {("phone-1",)}
    ends = [p["event"] for p in pushed if p["event"] != "simulation.progress"]
    assert ends == ["simulation.completed"], gateway.events()
    records = asyncio.run(_outbox_job_records(postgres_url, simulation_id))
    assert [record["status"] for record in records] == ["succeeded"]  # recorded once, by B


def _lease_row(database_url: str, simulation_id: str):
    async def read():
        engine = make_engine(database_url)
        try:
            async with engine.connect() as connection:
                columns = (simulations_table.c.status, simulations_table.c.runner, simulations_table.c.lease_until_s)
                return (await connection.execute(select(*columns).where(simulations_table.c.simulation_id == simulation_id))).one()
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_a_replica_stopping_gracefully_hands_its_simulation_over(tmp_path) -> None:
    """The embedded database shared by two replicas in turn: A stops mid-simulation and releases its lease
    (the simulation is not failed); B, started afterwards, takes it over at once and finishes it."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'simulations.db'}"

    def settings(name: str):
        return make_settings(
            tmp_path / name, database_url=database_url, blob_url=f"file://{tmp_path / 'blobs'}", replica_id=name, job_lease_s=60.0
        )

    with ThreadedServer(create_app(settings("a"))) as server_a, httpx.Client(base_url=server_a.url, headers=SERVICE_HEADERS) as a:
        asked = a.post(
            "/gateway/handle", json={"event": "simulation.run", "data": {**SLOW, "wait": False}, "device_id": "phone-1"}, timeout=30
        ).json()
        simulation_id = asked["data"]["id"]
        deadline_s = time.monotonic() + 60.0
        while a.get("/health").json()["workers"]["running"] == 0:  # the task runs in A's pool
            assert time.monotonic() < deadline_s
            time.sleep(0.05)
    assert tuple(_lease_row(database_url, simulation_id)) == ("running", "a", None)  # released, not failed
    with ThreadedServer(create_app(settings("b"))) as server_b, httpx.Client(base_url=server_b.url, headers=SERVICE_HEADERS) as b:
        deadline_s = time.monotonic() + 120.0  # the lease already ended: B's first lease turn claims it
        while (kept := b.get(f"/simulations/{simulation_id}").json())["status"] == "running":
            assert time.monotonic() < deadline_s, kept
            time.sleep(0.1)
        assert kept["status"] == "succeeded" and len(kept["pairs"]) == 2, kept
        assert b.get(kept["pairs"][0]["rir"]["path"]).status_code == 200
