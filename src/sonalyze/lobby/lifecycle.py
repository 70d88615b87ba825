"""Lobby status and participant roles, with the table of allowed status transitions.

    open ──start──▶ measuring ──session ended──▶ open
      │                 │
      └────close────────┴──▶ closed   (host left alone, idle expiry)

``closed`` is final: its join code is free again for a new lobby.
"""

from __future__ import annotations

from enum import StrEnum

from sonalyze.lobby.errors import Conflict


class LobbyStatus(StrEnum):
    OPEN = "open"
    MEASURING = "measuring"
    CLOSED = "closed"


class Role(StrEnum):
    SPEAKER = "speaker"
    MICROPHONE = "microphone"


LOBBY_TRANSITIONS: dict[LobbyStatus, frozenset[LobbyStatus]] = {
    LobbyStatus.OPEN: frozenset({LobbyStatus.MEASURING, LobbyStatus.CLOSED}),
    LobbyStatus.MEASURING: frozenset({LobbyStatus.OPEN, LobbyStatus.CLOSED}),
    LobbyStatus.CLOSED: frozenset(),
}


def check_transition(current: LobbyStatus, target: LobbyStatus) -> LobbyStatus:
    """Return ``target`` if the table allows ``current → target``; otherwise a ``conflict``."""
    if target not in LOBBY_TRANSITIONS[current]:
        raise Conflict(
            f"a lobby that is {current.value} cannot become {target.value}",
            details={"status": current.value, "target": target.value},
        )
    return target
