"""The lobby's rows as the storage service's records (pure): ``devices``, ``lobbies``, ``participants``,
``measurements``.

Ids are client-supplied and deterministic, so a record sent again replaces itself instead of adding a
row: a lobby keeps its id, a measurement session is stored under its measurement job id (the
measurement service attaches its ``analysis_outputs`` to it), a participant is ``{lobby_id}:{device_id}``.
Storage ids are 1–64 of ``A-Z a-z 0-9 _ . : -``; a device id (up to 128 of any character) or a
participant key that does not fit becomes ``h-`` and 40 hex digits of its SHA-256 (see :func:`storage_id`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sonalyze.lobby.rows import LobbyRow
from sonalyze.lobby.session_machine import SessionState
from sonalyze.storage.ids import storage_id

Record = dict[str, Any]

MEASUREMENT_KIND = "sweep_session"
"""``kind`` of the measurement record of a lobby session (sweeps, every speaker with every microphone)."""


def utc_iso(time_s: float) -> str:
    return datetime.fromtimestamp(time_s, UTC).isoformat()


def device_record(device_id: str) -> Record:
    """A device as the lobby knows it: its id (the original in ``attributes`` when it had to be hashed)."""
    record_id = storage_id(device_id)
    return {"id": record_id, "attributes": {} if record_id == device_id else {"device_id": device_id}}


def lobby_record(lobby: LobbyRow) -> Record:
    return {
        "id": lobby.id,
        "code": lobby.code,
        "host_device_id": storage_id(lobby.host_device_id) if lobby.host_device_id else None,
        "status": lobby.status.value,
        "room": lobby.room,
        "settings": {"name": lobby.name},
    }


def participant_record(
    lobby_id: str, device_id: str, *, role: str | None, joined_s: float, left_s: float | None = None, name: str | None = None
) -> Record:
    """A seat in a lobby; ``left_s`` set once the device left (a rejoin replaces it with a new seat);
    ``name``: the device's name in the lobby (storage's ``display_name``)."""
    return {
        "id": storage_id(f"{lobby_id}:{device_id}"),
        "lobby_id": lobby_id,
        "device_id": storage_id(device_id),
        "role": role,
        "display_name": name,
        "joined_at": utc_iso(joined_s),
        "left_at": utc_iso(left_s) if left_s is not None else None,
    }


def measurement_record(state: SessionState, *, room: dict[str, Any] | None, created_s: float, updated_s: float) -> Record:
    """A measurement session: ``status`` is its step; ``finished_at`` is set once the step is final."""
    parameters: dict[str, Any] = {
        "session_id": state.session_id,
        "speakers": [storage_id(d) for d in state.speakers],
        "microphones": [storage_id(d) for d in state.microphones],
    }
    if state.failure is not None:
        parameters["failure"] = state.failure
    return {
        "id": state.job_id,
        "lobby_id": state.lobby_id,
        "kind": MEASUREMENT_KIND,
        "status": state.step.value,
        "room": room,
        "parameters": parameters,
        "started_at": utc_iso(created_s),
        "finished_at": utc_iso(updated_s) if state.finished else None,
    }
