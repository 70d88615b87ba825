"""Simulation jobs and results kept as files: JSON written atomically, RIRs as 32-bit float WAV.

    {data_dir}/simulations/{id}/job.json        the job: request, status, times, error
    {data_dir}/simulations/{id}/result.json     the result (``simulation_results``), once succeeded
    {data_dir}/simulations/{id}/rir/{s}_{m}.wav one RIR per source–microphone pair

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target (``os.replace`` is atomic on POSIX), so a reader or a crash never sees half a file; the folders
are synced after the renames, so what ``create`` and ``finish`` wrote is on disk when they return. The
methods are blocking: the service calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import enum
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from sonalyze.common.durable import fsync_dir
from sonalyze.common.errors import Conflict, NotFound
from sonalyze.common.json import dumps, loads

_ID = re.compile(r"^[0-9a-f]{32}$")


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
}


def check_transition(current: JobStatus, target: JobStatus) -> None:
    if target not in TRANSITIONS[current]:
        raise Conflict(f"a {current.value} simulation cannot become {target.value}", code="invalid_transition")


def wav_bytes(rir: np.ndarray, fs_hz: int) -> bytes:
    """A mono 32-bit float WAV of ``rir`` (amplitudes as simulated, not normalised)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(rir, dtype=np.float32), fs_hz, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SimulationStore:
    """Jobs, results and RIR files under one folder (blocking I/O)."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "simulations"
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, simulation_id: str) -> Path:
        if not _ID.match(simulation_id):
            raise NotFound(f"no simulation {simulation_id!r}")
        return self.root / simulation_id

    def create(self, job: dict[str, Any]) -> None:
        """Record a new job (``id``, ``status`` running, ``request``, ``created_at``)."""
        _write_atomic(self._dir(job["id"]) / "job.json", dumps(job))
        fsync_dir(self.root)

    def discard(self, simulation_id: str) -> None:
        """Forget a job that never ran (its request was refused)."""
        shutil.rmtree(self._dir(simulation_id), ignore_errors=True)

    def job(self, simulation_id: str) -> dict[str, Any]:
        path = self._dir(simulation_id) / "job.json"
        try:
            return loads(path.read_bytes())
        except FileNotFoundError:
            raise NotFound(f"no simulation {simulation_id!r}") from None

    def result(self, simulation_id: str) -> dict[str, Any] | None:
        try:
            return loads((self._dir(simulation_id) / "result.json").read_bytes())
        except FileNotFoundError:
            return None

    def rir_path(self, simulation_id: str, source: int, microphone: int) -> Path:
        path = self._dir(simulation_id) / "rir" / f"{source}_{microphone}.wav"
        if not path.is_file():
            raise NotFound(f"simulation {simulation_id!r} has no RIR for source {source} and microphone {microphone}")
        return path

    def finish(
        self,
        simulation_id: str,
        *,
        status: JobStatus,
        finished_at: str,
        result: dict[str, Any] | None = None,
        rirs: Iterable[tuple[int, int, bytes]] = (),
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The one place a finished simulation is recorded: RIRs, then the result, then the job status."""
        job = self.job(simulation_id)
        check_transition(JobStatus(job["status"]), status)
        folder = self._dir(simulation_id)
        rirs = list(rirs)
        for source, microphone, data in rirs:
            _write_atomic(folder / "rir" / f"{source}_{microphone}.wav", data)
        if rirs:
            fsync_dir(folder / "rir")
        if result is not None:
            _write_atomic(folder / "result.json", dumps(result))
        job = {**job, "status": status.value, "finished_at": finished_at, "error": error}
        _write_atomic(folder / "job.json", dumps(job))
        fsync_dir(folder)  # on disk, with the folder itself (synced at create), before anyone is told
        return job

    def running_ids(self) -> list[str]:
        """Jobs still marked running (at start-up: left by a previous process)."""
        return [path.parent.name for path in self.root.glob("*/job.json") if loads(path.read_bytes()).get("status") == JobStatus.RUNNING]
