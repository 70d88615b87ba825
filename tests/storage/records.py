"""Valid records of every resource for the storage tests, parents created on the way."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

BANDS_HZ = [125, 250, 500, 1000, 2000, 4000, 8000]

CHANGES: dict[str, dict[str, Any]] = {
    "devices": {"name": "renamed phone"},
    "lobbies": {"status": "measuring"},
    "participants": {"role": "speaker"},
    "measurements": {"status": "analyzed"},
    "analysis_outputs": {"parameters": {"fs_hz": 44100}},
    "simulation_jobs": {"status": "done"},
    "simulation_results": {"receiver_id": "mic-2"},
}
"""One field change per resource, for PATCH and PUT tests."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def new_code() -> str:
    return uuid.uuid4().hex[:8].upper()


def metrics() -> dict[str, Any]:
    return {
        "bands_hz": BANDS_HZ,
        "t20_s": [0.61, 0.58, 0.55, 0.52, 0.5, 0.46, 0.4],
        "c80_db": [1.2, 2.1, 2.9, 3.3, 3.8, 4.1, 4.6],
        "sti": 0.62,
    }


async def fields(api: httpx.AsyncClient, resource: str) -> dict[str, Any]:
    """Valid writable fields of ``resource``; required parents are created first."""
    if resource == "devices":
        return {"name": "Pixel 8", "platform": "android", "attributes": {"mic": "bottom"}}
    if resource == "lobbies":
        return {"code": new_code(), "room": {"type": "shoebox", "dimensions_m": [5.0, 4.0, 3.0]}}
    if resource == "participants":
        lobby, device = await create(api, "lobbies"), await create(api, "devices")
        return {"lobby_id": lobby["id"], "device_id": device["id"], "role": "microphone", "joined_at": "2026-01-02T03:04:05.123456+00:00"}
    if resource == "measurements":
        lobby = await create(api, "lobbies")
        return {"lobby_id": lobby["id"], "kind": "sweep", "parameters": {"sweep_s": 5.0}}
    if resource == "analysis_outputs":
        measurement = await create(api, "measurements")
        return {"measurement_id": measurement["id"], "microphone_id": "mic-1", "metrics": metrics(), "curves": {"edc_db": [0.0, -3.5, -7.25]}}
    if resource == "simulation_jobs":
        return {"room": {"type": "shoebox", "dimensions_m": [6.0, 5.0, 3.0]}, "parameters": {"fs_hz": 16000}}
    if resource == "simulation_results":
        job = await create(api, "simulation_jobs")
        return {"simulation_job_id": job["id"], "source_id": "src-1", "receiver_id": "mic-1", "metrics": metrics()}
    raise ValueError(resource)


async def create(api: httpx.AsyncClient, resource: str, **overrides: Any) -> dict[str, Any]:
    body = {"id": new_id(resource[:4]), **(await fields(api, resource)), **overrides}
    response = await api.post(f"/v1/{resource}", json=body)
    assert response.status_code == 201, response.text
    return response.json()
