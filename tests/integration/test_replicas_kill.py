"""Issue 17's acceptance test: two of every replica on loopback, whole measurement sessions through them,
one replica of each kind killed (SIGKILL) in the middle of a session.

Two gateways (Redis broker, one push history), two lobbies, two measurement replicas, two ``sonalyze
worker`` processes, one storage service, on PostgreSQL (a database per service) and Redis (database 11:
the task queue and the gateways' stream). Four virtual phones (two speakers, two microphones) drive each
session through ``sonalyze.client``, spread over both gateways (the client's several gateway URLs stand
in for the load balancer). A first session runs with nothing killed; then one session each kills a
gateway (as the first analysis starts), the lobby awaiting the analysis, the measurement replica running
it, the worker analysing a recording. The victim is started again only after its session (a pod's
restart may take any time: the other replica must carry the session alone). After every session:

- it completed, with a result for every speaker-microphone pair;
- storage holds each record of the session exactly once: its lobby, measurement, participants, devices,
  and one analysis output per recording, and both services' outboxes are empty;
- every device got every push meant for it once: the positions it received are exactly the gateways'
  stream entries addressed to it, none twice, and its ``lobby.updated`` pushes are the lobby's log from
  its join on, each ``seq`` once; ``lobby.events`` through its gateway answers it that whole log.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from sqlalchemy import select

from sonalyze.client import PushedEvent, SonalyzeClient
from sonalyze.demo.session import DemoConfig, VirtualDevice, _Shared
from sonalyze.lobby.models import events as lobby_events
from sonalyze.lobby.models import sessions as lobby_sessions
from sonalyze.measurement.store import jobs_table
from sonalyze.measurement.storage_records import output_id
from sonalyze.storage.db import make_engine
from tests.integration.storage_reads import all_records, outbox_count
from tests.measurement.audio import encode, room_ir, sweep_recording
from tests.support import infra
from tests.support.cluster import Worker, measurement_replica, redis_database
from tests.support.servers import ServiceProcess, free_port_block, service_http

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

FS_HZ = 16000
SWEEP_S = 1.0
RT_S = 0.4
SPEAKERS = ("speaker-a", "speaker-b")
MICROPHONES = ("mic-1", "mic-2")
LEASE_S = 2.0
"""MEASUREMENT_JOB_LEASE_S and the lobby's analysis lease: a dead runner's analysis is taken over this long
after its last renewal."""
SESSION_TIMEOUT_S = 60.0
BUSY_CPU_S = 0.05
"""CPU time a worker spends on an analysis but not in the same moments idle."""
DELIVERY_TIMEOUT_S = 10.0
"""How long after the session's end its last pushes may still be on their way."""
STARTUP_TIMEOUT_S = 180.0
"""Ten Python processes starting at once on a loaded two-core machine."""
LOBBY_NAMES = ("lobby-a", "lobby-b")
MEASUREMENT_NAMES = ("measurement-a", "measurement-b")
PORTS = (22000, 23000)
"""This module's port range."""


@dataclass
class Cluster:
    gateways: list[ServiceProcess]
    lobbies: list[ServiceProcess]
    measurements: list[ServiceProcess]
    workers: list[Worker]
    storage: ServiceProcess
    databases: dict[str, str]
    """Service name to its PostgreSQL (SQLAlchemy URL)."""
    queue_url: str
    broker_url: str
    """The gateways' Redis (its stream ``{prefix}broadcast:stream`` is their push history)."""
    prefix: str
    """The gateways' broker prefix."""
    start_worker: Callable[[], Worker]

    def gateway_urls(self, first: int) -> str:
        """Both gateways, ``first`` first: a phone's load balancer."""
        urls = [gateway.url for gateway in self.gateways]
        return ",".join(urls[first:] + urls[:first])

    def logs(self) -> str:
        parts = [f"--- {kind} {index} ---\n{service.log_text()[-3000:]}" for kind, services in (
            ("gateway", self.gateways), ("lobby", self.lobbies), ("measurement", self.measurements)
        ) for index, service in enumerate(services)]
        parts += [f"--- worker {index} ---\n{worker.log_text()[-2000:]}" for index, worker in enumerate(self.workers)]
        return "\n".join(parts)


def _start_all(services: list[ServiceProcess]) -> None:
    """Start ``services`` side by side (spawned from this thread: a pool thread's children die with it)."""
    for service in services:
        service.spawn()
    with ThreadPoolExecutor(len(services)) as pool:
        list(pool.map(lambda service: service.wait_started(STARTUP_TIMEOUT_S), services))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    infra.require(infra.POSTGRES_ADMIN_URL, 5432, "PostgreSQL")
    queue_url = redis_database(11)
    created = [asyncio.run(infra.create_postgres_database()) for _ in ("lobby", "measurement", "storage")]
    databases = dict(zip(("lobby", "measurement", "storage"), (url for url, _ in created), strict=True))
    data_dir = tmp_path_factory.mktemp("replicas")
    base = free_port_block(7, *PORTS)
    ports = {"gateway": (base, base + 1), "lobby": (base + 2, base + 3), "measurement": (base + 4, base + 5), "storage": base + 6}
    urls = {name: ",".join(f"http://127.0.0.1:{port}" for port in ports[name]) for name in ("gateway", "lobby", "measurement")}
    storage_url = f"http://127.0.0.1:{ports['storage']}"
    prefix = f"replicas-{uuid.uuid4().hex[:8]}:"
    broker_url = queue_url.rsplit("/", 1)[0] + "/0"  # database 0, the one pub/sub is global to anyway; the keys carry the prefix
    gateways = [
        ServiceProcess("gateway", port=port, env={
            "BROKER_URL": broker_url, "GATEWAY_BROKER_PREFIX": prefix, "DEVICE_TOKEN_SECRET": "one-secret-for-the-cluster",
            "LOBBY_URL": urls["lobby"], "MEASUREMENT_URL": urls["measurement"], "SIMULATION_URL": storage_url,
            "RATE_LIMIT_RPS": "200", "RATE_LIMIT_BURST": "400", "HTTP_TIMEOUT_SECONDS": "30",
        })
        for port in ports["gateway"]
    ]
    lobbies = [
        ServiceProcess("lobby", port=port, env={
            "DATABASE_URL": databases["lobby"], "GATEWAY_URL": urls["gateway"], "MEASUREMENT_URL": urls["measurement"],
            "STORAGE_URL": storage_url, "SAMPLE_RATE_HZ": str(FS_HZ), "SWEEP_DURATION_S": str(SWEEP_S),
            "LOBBY_ANALYSIS_LEASE_S": str(LEASE_S), "TIMER_INTERVAL_S": "0.2", "LOBBY_REPLICA_ID": name,
            "HTTP_TIMEOUT_S": "8", "STORAGE_OUTBOX_LEASE_S": "10",  # a killed lobby's claimed records wait 10 s, not 60
        })
        for name, port in zip(LOBBY_NAMES, ports["lobby"], strict=True)
    ]
    measurements = [
        measurement_replica(
            name, database_url=databases["measurement"], blob_dir=data_dir / "blobs", data_dir=data_dir, queue_url=queue_url,
            env={"LOBBY_URL": urls["lobby"], "STORAGE_URL": storage_url, "MEASUREMENT_JOB_LEASE_S": str(LEASE_S)}, port=port,
        )
        for name, port in zip(MEASUREMENT_NAMES, ports["measurement"], strict=True)
    ]
    storage = ServiceProcess("storage", port=ports["storage"], env={"DATABASE_URL": databases["storage"]})
    workers: list[Worker] = []

    def start_worker() -> Worker:
        worker = Worker(queue_url)
        workers.append(worker)
        return worker

    started = Cluster(gateways, lobbies, measurements, workers, storage, databases, queue_url, broker_url, prefix, start_worker)
    try:
        start_worker(), start_worker()
        _start_all([storage, *measurements, *lobbies, *gateways])
        yield started
    finally:
        for service in [*gateways, *lobbies, *measurements, storage]:
            service.stop()
        for worker in workers:
            worker.stop()
        for _, name in created:
            asyncio.run(infra.drop_postgres_database(name))
        with redis.Redis.from_url(broker_url) as client:  # the gateways' history (stream_entries)
            client.delete(*client.keys(f"{prefix}*") or [f"{prefix}broadcast:stream"])


class RecordingClient(SonalyzeClient):
    """A phone's client that also keeps every pushed event as it arrived (duplicates too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[dict[str, Any]] = []

    async def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") == "event":
            self.received.append(message)
        await super()._dispatch(message)


class Phone(VirtualDevice):
    """The demo's virtual phone (it sends a request again when the lobby replica it went to was killed),
    recording a synthetic room instead of asking the simulation service."""

    async def _record(self, instruction: dict[str, Any]) -> bytes:
        sweep = await self._sweep(instruction["job_id"])
        return encode(sweep_recording(sweep, room_ir(FS_HZ, RT_S, 0.8), FS_HZ, offset_s=0.1, noise_dbfs=-80.0), FS_HZ)


@dataclass
class Session:
    lobby_id: str = ""
    session_id: str = ""
    job_id: str = ""
    clients: dict[str, RecordingClient] = field(default_factory=dict)
    shared: _Shared = field(default_factory=_Shared)
    messages: list[str] = field(default_factory=list)
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each phone's ``lobby.events`` answer (through its gateway and either lobby) after the session."""

    def pushed(self, event: str, **data: Any) -> bool:
        """Some phone received ``event`` (with ``data`` among its fields)."""
        return any(
            message.get("event") == event and data.items() <= message["data"].items()
            for client in self.clients.values()
            for message in client.received
        )


async def run_session(
    cluster: Cluster, during: Callable[[Session], Awaitable[None]] | None = None, *, reconnect_after_s: float = 0.1
) -> Session:
    """One whole session (two speakers, two microphones); ``during`` runs beside it (the kill); a phone
    whose connection dropped reconnects after ``reconnect_after_s`` (half to all of it, doubling after each
    failure)."""
    session = Session()
    shared = session.shared
    shared.ending = asyncio.get_running_loop().create_future()
    names = SPEAKERS + MICROPHONES
    session.clients = {
        name: RecordingClient(cluster.gateway_urls(index % 2), backoff_initial_s=reconnect_after_s) for index, name in enumerate(names)
    }
    await asyncio.gather(*(client.connect() for client in session.clients.values()))
    shared.names = {client.device_id: name for name, client in session.clients.items()}
    config = DemoConfig(gateway_url=cluster.gateway_urls(0), sample_rate_hz=FS_HZ, session_timeout_s=SESSION_TIMEOUT_S)
    rng = np.random.default_rng(1)
    phones = [Phone(name, client, config, shared, rng, session.messages.append) for name, client in session.clients.items()]
    loops = [asyncio.create_task(phone.run()) for phone in phones]
    beside = asyncio.create_task(during(session)) if during is not None else None
    host = phones[0]
    try:
        lobby = await host.request("lobby.create", {"name": "replicas"})
        session.lobby_id = lobby["lobby_id"]
        for phone in phones[1:]:
            await phone.request("lobby.join", {"code": lobby["code"]})
        for phone in phones:
            role = "speaker" if phone.name in SPEAKERS else "microphone"
            await host.request("role.assign", {"lobby_id": session.lobby_id, "device_id": phone.device_id, "role": role})
        await host.request("lobby.start", {"lobby_id": session.lobby_id})
        created = await host.request("measurement.create_session", {"lobby_id": session.lobby_id})
        session.session_id, session.job_id = created["session_id"], created["job_id"]
        shared.session_id = session.session_id
        for speaker_index in range(len(SPEAKERS)):
            await host.request("measurement.start_speaker", {"session_id": session.session_id, "speaker_index": speaker_index})
            await _until(lambda: speaker_index in shared.results or shared.ending.done(), loops, beside, cluster)
        ending: PushedEvent = await asyncio.wait_for(asyncio.shield(shared.ending), SESSION_TIMEOUT_S)
        assert ending.event == "measurement.session_completed", (ending, session.messages, cluster.logs())
        # The lobby's last pushes (session_ended) follow the ending: wait for them before the phones hang up.
        try:
            await poll(lambda: not undelivered(cluster, session), "every push delivered", DELIVERY_TIMEOUT_S)
        except AssertionError as exc:
            raise AssertionError(f"pushes addressed to phones never reached them (phone: offsets): {undelivered(cluster, session)}") from exc
        session.logs = {phone.name: await phone.request("lobby.events", {"lobby_id": session.lobby_id, "limit": 1000}) for phone in phones}
        if beside is not None:
            await asyncio.wait_for(beside, SESSION_TIMEOUT_S)
        return session
    finally:
        for task in [*loops, *([beside] if beside is not None else [])]:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await asyncio.gather(*(client.close() for client in session.clients.values()), return_exceptions=True)


async def _until(condition: Callable[[], bool], loops: list[asyncio.Task], beside: asyncio.Task | None, cluster: Cluster) -> None:
    """Wait for ``condition``; a phone that crashed, or the kill that failed, ends the wait with its error."""
    deadline = time.monotonic() + SESSION_TIMEOUT_S
    while not condition():
        for task in [*loops, *([beside] if beside is not None else [])]:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()
        assert time.monotonic() < deadline, f"the session did not advance in {SESSION_TIMEOUT_S} s\n{cluster.logs()}"
        await asyncio.sleep(0.02)


async def poll(probe: Callable[[], Any], what: str, timeout_s: float = SESSION_TIMEOUT_S) -> Any:
    """``probe()`` (awaited when it is a coroutine) until it answers something truthy, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = probe()
        if inspect.isawaitable(answer):
            answer = await answer
        if answer:
            return answer
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        await asyncio.sleep(0.01)


# ---- what every session must leave behind ----------------------------------------------------------------


async def check_storage(cluster: Cluster, session: Session) -> None:
    """Each record of the session in storage once: nothing waits in an outbox, nothing is missing or extra."""
    for service in ("lobby", "measurement"):
        await poll(lambda service=service: _empty(cluster.databases[service]), f"the {service} outbox delivered everything")
    uploads = {f"speaker-{s}_mic-{m}.wav" for s in range(len(SPEAKERS)) for m in range(len(MICROPHONES))}
    outputs = await all_records(cluster.storage.url, "analysis_outputs", measurement_id=session.job_id)
    assert sorted(record["id"] for record in outputs) == sorted(output_id(session.job_id, name) for name in uploads)
    assert {record["parameters"]["upload"] for record in outputs} == uploads
    measurements = [record for record in await all_records(cluster.storage.url, "measurements") if record["lobby_id"] == session.lobby_id]
    assert [(record["id"], record["status"]) for record in measurements] == [(session.job_id, "completed")]
    assert [record["id"] for record in await all_records(cluster.storage.url, "lobbies") if record["id"] == session.lobby_id] == [session.lobby_id]
    participants = await all_records(cluster.storage.url, "participants", lobby_id=session.lobby_id)
    device_ids = {client.device_id for client in session.clients.values()}
    assert sorted(record["device_id"] for record in participants) == sorted(device_ids)
    devices = {record["id"] for record in await all_records(cluster.storage.url, "devices")}
    assert device_ids <= devices


async def _empty(database_url: str) -> bool:
    return await outbox_count(database_url) == 0


def stream_entries(cluster: Cluster) -> list[tuple[int, list[str], dict[str, Any]]]:
    """The gateways' push history: (offset, target device ids, envelope) of every publication."""
    entries = []
    with redis.Redis.from_url(cluster.broker_url) as client:
        for _, fields in client.xrange(f"{cluster.prefix}broadcast:stream"):
            head, targets, payload = fields[b"m"].split(b"\n", 2)
            entries.append((int(head.split(b" ")[2]), orjson.loads(targets).get("d") or [], orjson.loads(payload)))
    return entries


async def lobby_log(cluster: Cluster, lobby_id: str) -> list[dict[str, Any]]:
    """The lobby's log as its database holds it: seq, type and device of every event."""
    engine = make_engine(cluster.databases["lobby"])
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(lobby_events.c.seq, lobby_events.c.type, lobby_events.c.device_id)
                .where(lobby_events.c.lobby_id == lobby_id)
                .order_by(lobby_events.c.seq)
            )
            return [dict(row._mapping) for row in rows]
    finally:
        await engine.dispose()


def undelivered(cluster: Cluster, session: Session) -> dict[str, list[int]]:
    """The stream's offsets addressed to each phone that it has not received (yet)."""
    entries = stream_entries(cluster)
    missing = {}
    for name, client in session.clients.items():
        received = {message["pos"]["offset"] for message in client.received if message.get("pos")}
        gaps = [offset for offset, targets, _ in entries if client.device_id in targets and offset not in received]
        if gaps:
            missing[name] = gaps
    return missing


async def check_pushes(cluster: Cluster, session: Session) -> None:
    """Every device got each push addressed to it once: by the stream's offsets and by the lobby's seq; and
    ``lobby.events`` answered each the lobby's whole log."""
    entries = stream_entries(cluster)
    events = await lobby_log(cluster, session.lobby_id)
    for name, client in session.clients.items():
        offsets = [message["pos"]["offset"] for message in client.received if message.get("pos")]
        assert all(message.get("pos") for message in client.received if message["event"] != "resync_required"), name
        assert len(offsets) == len(set(offsets)), (name, "a push came twice", offsets)
        addressed = sorted(offset for offset, targets, _ in entries if client.device_id in targets)
        missed = sorted(set(addressed) - set(offsets))
        assert sorted(offsets) == addressed, (
            name, "pushes missed", [entry for entry in entries if entry[0] in missed], offsets, client.reconnects
        )
        seqs = [message["data"]["seq"] for message in client.received if message["event"] == "lobby.updated"]
        joined = next((event["seq"] for event in events if event["device_id"] == client.device_id), None)
        assert joined is not None, (name, client.device_id, events)
        expected = [event["seq"] for event in events if event["seq"] > joined or (event["seq"] == joined and event["type"] != "created")]
        assert seqs == expected, (name, "lobby.updated by seq", seqs, expected)
    assert not any(message["event"] == "resync_required" for client in session.clients.values() for message in client.received)
    logged = [(event["seq"], event["type"], event["device_id"]) for event in events]
    for name, answer in session.logs.items():  # what a phone reads through the gateway is the whole log too
        assert [(event["seq"], event["type"], event["device_id"]) for event in answer.get("events", [])] == logged, (name, answer)


async def check_session(cluster: Cluster, session: Session) -> None:
    results = session.shared.results
    assert sorted(results) == [0, 1]
    for entry in results.values():
        analysis = entry["analysis"]["results"]
        assert len(analysis) == len(MICROPHONES) and all("error" not in report for report in analysis.values()), analysis
        assert all(report["t30_s"]["broadband"] == pytest.approx(RT_S, rel=0.1) for report in analysis.values())
    await check_storage(cluster, session)
    await check_pushes(cluster, session)


# ---- the sessions --------------------------------------------------------------------------------------


async def test_a_session_through_two_of_every_replica(cluster) -> None:
    session = await run_session(cluster)
    await check_session(cluster, session)


async def poll_runner(database_url: str, query: Callable[[], Any], what: str) -> str:
    """The runner ``query()`` finds (None until there is one), polled on one open connection (a step that
    lasts a few tens of milliseconds is seen)."""
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:

            async def probe() -> str | None:
                statement = query()
                if statement is None:
                    return None
                runner = (await connection.execute(statement)).scalar()
                await connection.rollback()  # a fresh snapshot next time
                return runner

            return await poll(probe, what)
    finally:
        await engine.dispose()


def _cpu_s(worker: Worker) -> float:
    """User and system CPU time of every process of ``worker`` (its process group) so far."""
    total_ticks = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and worker.owns(int(entry)):
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            total_ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total_ticks / os.sysconf("SC_CLK_TCK")


def _replayed(gateway: ServiceProcess) -> float:
    """``gateway_replayed_pushes_total`` of ``gateway``: kept pushes it wrote to resuming connections."""
    metrics = service_http.get(gateway.url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("gateway_replayed_pushes_total"))


async def test_a_gateway_killed_while_the_speaker_is_analysed(cluster) -> None:
    """Half the phones lose their gateway as the first speaker's analysis starts: they reconnect to the
    other one (after a second, as phones on a poor network do) and get the results pushed meanwhile from
    the shared history."""
    victim, survivor = cluster.gateways
    replayed_before = _replayed(survivor)

    async def kill(session: Session) -> None:
        await poll(lambda: session.pushed("measurement.session_updated", step="analyzing"), "the first analysis")
        victim.kill()

    session = await run_session(cluster, kill, reconnect_after_s=1.0)
    victim.start(STARTUP_TIMEOUT_S)  # its pod restarted (after the session: nothing waited for it)
    assert sum(client.reconnects for client in session.clients.values()) == len(session.clients) // 2
    assert _replayed(survivor) > replayed_before  # pushes were published while they were away
    await check_session(cluster, session)


async def kill_the_runner(
    cluster: Cluster,
    replicas: list[ServiceProcess],
    names: tuple[str, ...],
    database_url: str,
    runner_query: Callable[[Session], Any],
    taking_over: Callable[[Session], str],
) -> None:
    """A session during which the replica running its analysis is killed: the one of ``replicas`` (named as
    ``names``) that ``runner_query(session)`` finds in ``database_url`` (None until there is one); the other
    one must say ``taking_over(session)`` in its log."""
    killed: list[ServiceProcess] = []

    async def kill(session: Session) -> None:
        runner = await poll_runner(database_url, lambda: runner_query(session), "an analysis running")
        killed.append(replicas[names.index(runner)])
        killed[0].kill()

    session = await run_session(cluster, kill)
    killed[0].start(STARTUP_TIMEOUT_S)
    survivor = next(replica for replica in replicas if replica is not killed[0])
    assert taking_over(session) in survivor.log_text()
    await check_session(cluster, session)


async def test_the_lobby_awaiting_the_analysis_killed(cluster) -> None:
    """The other lobby takes the session's analysis over once the dead one's lease lapsed."""
    columns = lobby_sessions.c
    await kill_the_runner(
        cluster, cluster.lobbies, LOBBY_NAMES, cluster.databases["lobby"],
        lambda session: select(columns.runner).where(columns.id == session.session_id, columns.step == "analyzing") if session.session_id else None,
        lambda session: "taking over the analysis of session " + session.session_id,
    )


async def test_the_measurement_replica_running_the_analysis_killed(cluster) -> None:
    """The other replica claims the job once the dead one's lease lapsed and runs the analysis again."""
    columns = jobs_table.c
    await kill_the_runner(
        cluster, cluster.measurements, MEASUREMENT_NAMES, cluster.databases["measurement"],
        lambda session: select(columns.runner).where(columns.job_id == session.job_id, columns.status == "analyzing") if session.job_id else None,
        lambda session: "taking over the analysis",
    )


async def test_the_worker_analysing_a_recording_killed(cluster) -> None:
    """Its task runs again on the other worker once its heartbeat is older than the timeout."""
    killed: list[Worker] = []

    async def kill(session: Session) -> None:
        await poll(lambda: session.pushed("measurement.stop_recording"), "the first uploads")
        idle = {id(worker): _cpu_s(worker) for worker in cluster.workers}

        def busy() -> Worker | None:  # an analysis takes a worker's CPU; an idle one polls Redis now and then
            return next((w for w in cluster.workers if _cpu_s(w) - idle[id(w)] > BUSY_CPU_S), None)

        killed.append(await poll(busy, "a worker analysing"))
        killed[0].kill()
        cluster.workers.remove(killed[0])

    session = await run_session(cluster, kill)
    cluster.start_worker()
    await check_session(cluster, session)
