"""The lobby's rows as the store reads them (plain values): what the session coordinator works on and
the storage records are made from, without importing the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sonalyze.lobby.lifecycle import LobbyStatus
from sonalyze.lobby.session_machine import SessionState


@dataclass(frozen=True, slots=True)
class LobbyRow:
    id: str
    code: str
    name: str | None
    status: LobbyStatus
    host_device_id: str | None
    room: dict[str, Any] | None
    last_seq: int
    session_id: str | None
    created_s: float
    updated_s: float


@dataclass(frozen=True, slots=True)
class ParticipantRow:
    device_id: str
    role: str | None
    joined_seq: int
    name: str | None = None


@dataclass(frozen=True, slots=True)
class SessionRow:
    state: SessionState
    version: int
    lobby_id: str
