"""The rooms the demo measures: a shoebox and an L-shaped polygon, with five device positions each."""

from __future__ import annotations

from typing import Any

SPEAKERS = ("speaker-a", "speaker-b")
MICROPHONES = ("mic-1", "mic-2", "mic-3")

_SHOEBOX = {
    "type": "shoebox",
    "dimensions_m": [7.0, 5.0, 3.0],
    "materials": {
        "floor": {"absorption": [0.02, 0.03, 0.05, 0.10, 0.20, 0.30, 0.35], "scattering": 0.5},
        "ceiling": {"absorption": [0.10, 0.15, 0.20, 0.25, 0.30, 0.30, 0.30], "scattering": 0.5},
        "east": {"absorption": 0.10, "scattering": 0.5},
        "west": {"absorption": 0.10, "scattering": 0.5},
        "north": {"absorption": [0.15, 0.12, 0.10, 0.08, 0.08, 0.08, 0.08], "scattering": 0.5},
        "south": {"absorption": [0.15, 0.12, 0.10, 0.08, 0.08, 0.08, 0.08], "scattering": 0.5},
    },
}
_SHOEBOX_POSITIONS = {
    "speaker-a": [1.5, 1.2, 1.4],
    "speaker-b": [5.6, 3.9, 1.2],
    "mic-1": [4.2, 2.1, 1.1],
    "mic-2": [2.3, 3.8, 1.3],
    "mic-3": [5.9, 1.1, 1.5],
}

_POLYGON = {
    "type": "polygon",
    "corners_m": [[0, 0], [8, 0], [8, 4], [4, 4], [4, 7], [0, 7]],
    "height_m": 3.0,
    "materials": {
        "walls": {"absorption": 0.10, "scattering": 0.5},
        "floor": {"absorption": [0.02, 0.03, 0.05, 0.10, 0.20, 0.30, 0.35], "scattering": 0.5},
        "ceiling": {"absorption": [0.10, 0.15, 0.20, 0.25, 0.30, 0.30, 0.30], "scattering": 0.5},
    },
}
_POLYGON_POSITIONS = {
    "speaker-a": [1.2, 1.0, 1.4],
    "speaker-b": [2.0, 6.0, 1.2],
    "mic-1": [6.5, 2.2, 1.1],
    "mic-2": [2.5, 3.5, 1.3],
    "mic-3": [1.0, 5.0, 1.5],
}

ROOMS: dict[str, tuple[dict[str, Any], dict[str, list[float]]]] = {
    "shoebox": (_SHOEBOX, _SHOEBOX_POSITIONS),
    "polygon": (_POLYGON, _POLYGON_POSITIONS),
}


def room_snapshot(kind: str) -> dict[str, Any]:
    """The ``lobby.room_snapshot`` payload (``sonalyze.rooms.RoomSnapshot``) for one of ``ROOMS``."""
    room, positions = ROOMS[kind]
    return {"room": room, "devices": {device: {"position_m": position} for device, position in positions.items()}}
