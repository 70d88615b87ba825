"""A whole Sonalyze measurement with virtual devices, through the gateway like real phones.

Five devices connect (``sonalyze.client``); ``speaker-a`` creates a lobby, the others join by code, the
host shares the room snapshot, assigns two speakers and three microphones, starts, and runs the session.
Every device reacts to the lobby's instructions as a phone would, and like a phone it survives the gateway
restarting mid-session: the client reconnects and resumes by itself (``sonalyze.client``), a request
whose connection dropped, or that the gateway could not get answered (a service's replica restarting), is
sent again, and after every reconnect the device reads
``measurement.session_status`` and carries out the step still waiting for it (an instruction pushed while
it was away may be in no history: the lobby drops pushes the gateway cannot take). A microphone "records" by asking the
simulation service (``/v1/simulation/simulate``) for the room impulse response from the current speaker
to itself, convolving the job's sweep with it, adding noise and a random start offset, and uploading
the WAV through ``/v1/jobs/...``. The analysis pushed back is compared with the simulation's own metrics
of the same impulse response.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile

from sonalyze.client import GatewayError, PushedEvent, SonalyzeClient
from sonalyze.demo.recording import virtual_recording, wav_bytes
from sonalyze.demo.rooms import MICROPHONES, ROOMS, SPEAKERS, room_snapshot

ENDINGS = ("measurement.session_completed", "measurement.session_failed", "measurement.session_cancelled")
ENDING_OF_STEP = {"completed": ENDINGS[0], "failed": ENDINGS[1], "cancelled": ENDINGS[2]}
ATTEMPTS = 12
"""Attempts of a request or an HTTP call that did not get through, spaced by the client's reconnect back-off
(``SonalyzeClient.backoff_delays_s``; by default 0.1 s doubling to 5 s, jittered: 18-36 s in all)."""
NOT_THROUGH = ("connection_lost", "upstream_unavailable", "upstream_timeout")
"""A request's errors that say it may or may not have been carried out: the connection dropped before the
answer, or the gateway could not reach the service's replica or got no answer from it (a replica restarting)."""
MOVED_ON = ("wrong_step", "session_mismatch")
"""Refusals of a request sent again: the first attempt was carried out and the session moved on."""


@dataclass(frozen=True)
class DemoConfig:
    gateway_url: str = "http://127.0.0.1:8000"
    room: str = "shoebox"
    snr_db: float = 60.0
    seed: int = 1
    sample_rate_hz: int = 48000
    session_timeout_s: float = 300.0


@dataclass
class PairResult:
    speaker: str
    microphone: str
    measured: dict[str, Any]
    simulated: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.speaker}_to_{self.microphone}"


@dataclass
class DemoResult:
    lobby_id: str
    session_id: str
    job_id: str
    pairs: list[PairResult] = field(default_factory=list)


class DemoFailed(RuntimeError):
    """The session did not complete; the message says where and why."""


class _Shared:
    """What the virtual devices learn together: the sweep, the simulated metrics of each RIR they used."""

    def __init__(self) -> None:
        self.sweeps: dict[str, np.ndarray] = {}
        self.sweep_locks: dict[str, asyncio.Lock] = {}
        self.speaker_of_turn: dict[int, str] = {}
        self.simulated: dict[tuple[int, str], dict[str, Any]] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.names: dict[str, str] = {}
        """Device id (issued by the gateway) to the virtual device's name (``speaker-a``, ``mic-1``)."""
        self.ending: asyncio.Future | None = None
        self.session_id: str | None = None
        """Set once the session exists: what a device reads the status of after a reconnect."""


class VirtualDevice:
    """One phone: answers the lobby's instructions for its role."""

    def __init__(
        self, name: str, client: SonalyzeClient, config: DemoConfig, shared: _Shared, rng: np.random.Generator,
        progress: Callable[[str], None],
    ) -> None:
        self.name = name
        self.client = client
        self.config = config
        self.shared = shared
        self.rng = rng
        self.progress = progress
        self.room, self.positions = ROOMS[config.room]
        self.done: set[tuple[str, int | None]] = set()
        """Instructions carried out, by (event, speaker index): one read from the session status after a
        reconnect and the same one pushed are carried out once."""
        self.turn = asyncio.Lock()
        """One instruction at a time (pushed ones and those read after a reconnect)."""
        client.on_reconnect = self.catch_up

    @property
    def device_id(self) -> str:
        return self.client.device_id

    async def run(self) -> None:
        async for pushed in self.client.events():
            async with self.turn:
                await self._on(pushed)
            if pushed.event in ENDINGS:
                return

    async def catch_up(self) -> None:
        """After a reconnect: carry out what the session status says still waits for this device."""
        session_id = self.shared.session_id
        if session_id is None:
            return
        status = await self.request("measurement.session_status", {"session_id": session_id})
        self.progress(f"{self.name} reconnected; the session is {status['step']}")
        async with self.turn:
            for pushed in instructions_from_status(status, self.device_id):
                await self._on(pushed)

    async def request(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """``client.request``, sent again after the client's back-off while it does not get through
        (:data:`NOT_THROUGH`); an attempt after one that may have been carried out and refused as
        :data:`MOVED_ON` answers ``{}`` (the first did arrive). Any other refusal is raised."""
        sent = False
        for delay_s in self._delays_s():
            try:
                return await self.client.request(event, data)
            except GatewayError as exc:
                if sent and exc.code in MOVED_ON:
                    return {}
                if exc.code not in NOT_THROUGH:
                    raise
            sent = True
            await asyncio.sleep(delay_s)
        raise DemoFailed(f"{self.name}: {event} did not get through in {ATTEMPTS} attempts")

    async def http(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """``client.http``, tried again after the client's back-off while the gateway is unreachable or
        restarting (502/503)."""
        for delay_s in self._delays_s():
            try:
                response = await self.client.http(method, path, **kwargs)
            except httpx.TransportError:
                await asyncio.sleep(delay_s)
                continue
            if response.status_code not in (502, 503):
                return response
            await asyncio.sleep(delay_s)
        raise DemoFailed(f"{self.name}: {method} {path} failed while the gateway was unreachable")

    def _delays_s(self) -> Iterator[float]:
        """One wait after each of :data:`ATTEMPTS` attempts."""
        return itertools.islice(self.client.backoff_delays_s(), ATTEMPTS)

    async def _on(self, pushed: PushedEvent) -> None:
        data = pushed.data
        me = self.device_id
        guard = {"session_id": data.get("session_id"), "speaker_index": data.get("speaker_index")}
        if pushed.event in INSTRUCTIONS:
            if (pushed.event, data.get("speaker_index")) in self.done:
                return
            self.done.add((pushed.event, data.get("speaker_index")))
        if pushed.event == "measurement.prepare_speaker":
            self.shared.speaker_of_turn[data["speaker_index"]] = data["speaker_device_id"]
            is_speaker = data["speaker_device_id"] == me
            if is_speaker or me in data["microphones"]:
                await self.request("measurement.ready", guard)
            if is_speaker:
                await self._sweep(data["job_id"])
                await self.request("measurement.speaker_audio_ready", guard)
        elif pushed.event == "measurement.start_recording":
            await self._sweep(data["job_id"])
            await self.request("measurement.recording_started", guard)
        elif pushed.event == "measurement.play":
            self.progress(f"{self.name} plays the sweep")
            await self.request("measurement.playback_complete", guard)
        elif pushed.event == "measurement.stop_recording":
            await self._record_and_upload(data)
            await self.request("measurement.recording_uploaded", {**guard, "upload_name": data["upload_name"]})
        elif pushed.event == "measurement.results":
            self.shared.results.setdefault(data["speaker_index"], data)
        elif pushed.event == "measurement.session_updated" and self.name == SPEAKERS[0]:
            self.progress(f"session step: {data['step']} (speaker {data['speaker_index'] + 1 if data['speaker_index'] is not None else '-'}/{len(data['speakers'])})")
        if pushed.event in ENDINGS and self.shared.ending is not None and not self.shared.ending.done():
            self.shared.ending.set_result(pushed)

    async def _sweep(self, job_id: str) -> np.ndarray:
        lock = self.shared.sweep_locks.setdefault(job_id, asyncio.Lock())
        async with lock:
            if job_id not in self.shared.sweeps:
                info = await self.request("measurement.get_audio_info", {"job_id": job_id})
                response = await self.http("GET", info["audio_url"])
                response.raise_for_status()
                sweep, _ = soundfile.read(io.BytesIO(response.content), dtype="float64")
                self.shared.sweeps[job_id] = sweep
        return self.shared.sweeps[job_id]

    async def _record_and_upload(self, instruction: dict[str, Any]) -> None:
        wav = await self._record(instruction)
        self.progress(f"{self.name} uploads {instruction['upload_name']}")
        response = await self.http("POST", instruction["upload_path"], content=wav, headers={"content-type": "audio/wav"})
        if response.status_code == 409 and "upload_exists" in response.text:
            return  # sent before the connection dropped: the job has it
        if response.status_code != 201:
            raise DemoFailed(f"upload of {instruction['upload_name']} refused: {response.status_code} {response.text[:300]}")

    async def _record(self, instruction: dict[str, Any]) -> bytes:
        """The WAV this microphone records for ``measurement.stop_recording`` ``instruction``: the job's sweep
        through the simulated room's impulse response from the speaker of the turn to this device."""
        speaker = self.shared.speaker_of_turn[instruction["speaker_index"]]
        speaker_name = self.shared.names[speaker]
        self.progress(f"{self.name} asks the simulation for the room's answer from {speaker_name}")
        answer = await self.http(
            "POST",
            "/v1/simulation/simulate",
            json={
                "room": self.room,
                "sources": [self.positions[speaker_name]],
                "microphones": [self.positions[self.name]],
                "sample_rate_hz": self.config.sample_rate_hz,
                "include_rir": True,
                "seed": self.config.seed,
            },
        )
        if not answer.is_success:
            raise DemoFailed(f"the simulation refused: {answer.status_code} {answer.text[:300]}")
        simulation = answer.json()
        pair = simulation["pairs"][0]
        rir, rir_fs_hz = soundfile.read(io.BytesIO(base64.b64decode(pair["rir"]["wav_base64"])), dtype="float64")
        if rir_fs_hz != self.config.sample_rate_hz:
            raise DemoFailed(f"the simulation answered at {rir_fs_hz} Hz, the job records at {self.config.sample_rate_hz} Hz")
        self.shared.simulated[(instruction["speaker_index"], self.device_id)] = pair["metrics"]
        recording = virtual_recording(
            await self._sweep(instruction["job_id"]),
            rir,
            snr_db=self.config.snr_db,
            start_offset_s=float(self.rng.uniform(0.05, 0.5)),
            fs_hz=self.config.sample_rate_hz,
            rng=self.rng,
        )
        return wav_bytes(recording, self.config.sample_rate_hz)


async def run_demo(config: DemoConfig, progress: Callable[[str], None] = print) -> DemoResult:
    """Run the whole session; returns measured and simulated metrics for every speaker–microphone pair."""
    rng = np.random.default_rng(config.seed)
    clients = {name: SonalyzeClient(config.gateway_url) for name in SPEAKERS + MICROPHONES}
    shared = _Shared()
    shared.ending = asyncio.get_running_loop().create_future()
    await asyncio.gather(*(client.connect() for client in clients.values()))  # each gets its device and token
    shared.names = {client.device_id: name for name, client in clients.items()}
    progress(f"{len(clients)} virtual devices connected to {config.gateway_url}")
    host = clients[SPEAKERS[0]]
    devices = [VirtualDevice(name, client, config, shared, rng, progress) for name, client in clients.items()]
    loops = [asyncio.create_task(device.run()) for device in devices]
    try:
        lobby = await host.request("lobby.create", {"name": f"Sonalyze demo ({config.room})"})
        lobby_id = lobby["lobby_id"]
        progress(f"lobby {lobby['code']} created by {SPEAKERS[0]}")
        for device, client in clients.items():
            if client is not host:
                await client.request("lobby.join", {"code": lobby["code"].lower()})
        progress("every device joined by code")
        snapshot = room_snapshot(config.room)  # positions by name; the lobby knows the devices by id
        snapshot["devices"] = {clients[name].device_id: place for name, place in snapshot["devices"].items()}
        await host.request("lobby.room_snapshot", {"lobby_id": lobby_id, "room": snapshot})
        for name, client in clients.items():
            role = "speaker" if name in SPEAKERS else "microphone"
            await host.request("role.assign", {"lobby_id": lobby_id, "device_id": client.device_id, "role": role})
        progress(f"room shared ({config.room}); roles: speakers {', '.join(SPEAKERS)}; microphones {', '.join(MICROPHONES)}")
        await host.request("lobby.start", {"lobby_id": lobby_id})
        session = await host.request("measurement.create_session", {"lobby_id": lobby_id})
        session_id, job_id = session["session_id"], session["job_id"]
        shared.session_id = session_id
        host_device = devices[0]
        for speaker_index in range(len(SPEAKERS)):
            await host_device.request("measurement.start_speaker", {"session_id": session_id, "speaker_index": speaker_index})
            await _wait_for(lambda: speaker_index in shared.results or shared.ending.done(), config.session_timeout_s, loops)
            if speaker_index not in shared.results:
                break
            progress(f"results for speaker {speaker_index + 1}/{len(SPEAKERS)} pushed to every device")
        ending: PushedEvent = await asyncio.wait_for(asyncio.shield(shared.ending), config.session_timeout_s)
        if ending.event != "measurement.session_completed":
            raise DemoFailed(f"session ended with {ending.event}: {ending.data}")
        result = DemoResult(lobby_id, session_id, job_id)
        for speaker_index, entry in sorted(shared.results.items()):
            analysis = entry["analysis"]["results"]
            for microphone_index, microphone in enumerate(entry["microphones"]):
                name = f"speaker-{speaker_index}_mic-{microphone_index}.wav"
                measured = analysis[name]
                speaker = shared.speaker_of_turn[speaker_index]
                simulated = shared.simulated[(speaker_index, microphone)]
                result.pairs.append(PairResult(shared.names[speaker], shared.names[microphone], measured, simulated))
        return result
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await asyncio.gather(*(client.close() for client in clients.values()), return_exceptions=True)


INSTRUCTIONS = ("measurement.prepare_speaker", "measurement.start_recording", "measurement.play", "measurement.stop_recording")


def instructions_from_status(status: dict[str, Any], device_id: str) -> list[PushedEvent]:
    """The pushes a device may have missed, rebuilt from ``measurement.session_status`` (the lobby's
    ``session_view``): the instruction of the step still waiting for it, the results, the ending."""
    index = status["speaker_index"]
    common = {"session_id": status["session_id"], "job_id": status["job_id"], "speaker_index": index, "deadline_s": status["deadline_s"]}
    found = [PushedEvent("measurement.results", {"session_id": status["session_id"], "lobby_id": status["lobby_id"], **entry}) for entry in status["results"]]
    step, waiting = status["step"], device_id in status["waiting_for"]
    if step == "preparing" and waiting:
        found.append(PushedEvent("measurement.prepare_speaker", {**common, "speaker_device_id": status["speaker_device_id"], "microphones": status["microphones"]}))
    elif step == "recording_starting" and waiting:
        found.append(PushedEvent("measurement.start_recording", {**common, "speaker_device_id": status["speaker_device_id"]}))
    elif step == "playing" and waiting:
        found.append(PushedEvent("measurement.play", common))
    elif step == "uploading" and waiting:
        name = f"speaker-{index}_mic-{status['microphones'].index(device_id)}.wav"  # the lobby's naming (SessionState.upload_name)
        found.append(PushedEvent("measurement.stop_recording", {**common, "upload_name": name, "upload_path": f"/v1/jobs/{status['job_id']}/uploads/{name}"}))
    elif step in ENDING_OF_STEP:
        found.append(PushedEvent(ENDING_OF_STEP[step], {"session_id": status["session_id"], "lobby_id": status["lobby_id"], "failure": status["failure"], "results": status["results"]}))
    return found


async def _wait_for(condition: Callable[[], bool], timeout_s: float, loops: list[asyncio.Task]) -> None:
    """Wait until ``condition``; a device loop that crashed ends the wait with its error."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        for task in loops:
            if task.done() and task.exception() is not None:
                raise DemoFailed(f"a virtual device failed: {task.exception()!r}") from task.exception()
        if asyncio.get_running_loop().time() > deadline:
            raise DemoFailed("the session did not advance in time")
        await asyncio.sleep(0.02)


def save_outputs(result: DemoResult, out_dir: Path) -> list[Path]:
    from sonalyze.demo.report import save_plots

    return save_plots([{"label": pair.label, "measured": pair.measured, "simulated": pair.simulated} for pair in result.pairs], out_dir)
