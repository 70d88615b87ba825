"""What one simulation may cost, checked before any work starts (pure).

pyroomacoustics' cost grows with the room (ray count and histogram length), the image-source order
(a shoebox has O(order³) images; a general polygon room is searched wall by wall, exponentially in the
order: an L-shaped room takes 0.13 s at order 8 and 1.8 s at order 10 on one core), the number of
source–microphone pairs and the RIR length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sonalyze.common.errors import Unprocessable
from sonalyze.rooms import PolygonRoom, ShoeboxRoom
from sonalyze.simulation.schemas import SimulateRequest
from sonalyze.simulation.theory import room_theory, speed_of_sound_m_s

#: Ray tracing stops when a ray's energy is this far down (pyroomacoustics ``energy_thres`` = 1e-7).
RAY_ENERGY_FLOOR_DB = 70.0


class LimitExceeded(Unprocessable):
    """422 ``limit_exceeded``: the request is valid but larger than this service accepts."""

    code = "limit_exceeded"


@dataclass(frozen=True, slots=True)
class Limits:
    max_order: int
    max_polygon_order: int
    max_volume_m3: float
    max_pairs: int
    max_rir_s: float


def _extent_m(room: ShoeboxRoom | PolygonRoom) -> float:
    """Diagonal of the room's bounding box."""
    if isinstance(room, ShoeboxRoom):
        return math.hypot(*room.dimensions_m)
    xs, ys = zip(*room.corners_m, strict=True)
    return math.hypot(max(xs) - min(xs), max(ys) - min(ys), room.height_m)


def image_source_rir_s(request: SimulateRequest) -> float:
    """Upper bound of the image-source RIR's length, s: images of order N lie within N + 1 diagonals."""
    return (request.max_order + 1) * _extent_m(request.room) / speed_of_sound_m_s(request.temperature_c)


def ray_tracing_rir_s(request: SimulateRequest) -> float:
    """Expected length of the ray-traced RIR, s: until the energy is 70 dB down, about 70/60 of the
    longest Sabine reverberation time (Sabine ≥ Eyring)."""
    theory = room_theory(
        request.room,
        air_absorption=request.air_absorption,
        temperature_c=request.temperature_c,
        humidity_percent=request.humidity_percent,
    )
    sabine = theory.sabine_s[np.isfinite(theory.sabine_s)]
    return RAY_ENERGY_FLOOR_DB / 60.0 * float(sabine.max()) if sabine.size else math.inf


def check_limits(request: SimulateRequest, limits: Limits) -> None:
    """Raise :class:`LimitExceeded` naming every field over a limit."""
    errors: list[dict[str, str]] = []
    order_limit = limits.max_polygon_order if isinstance(request.room, PolygonRoom) else limits.max_order
    if request.max_order > order_limit:
        errors.append(
            {"field": "max_order", "message": f"{request.max_order} is above the limit {order_limit} for a {request.room.type} room"}
        )
    volume_m3 = request.room.volume_m3
    if volume_m3 > limits.max_volume_m3:
        errors.append({"field": "room", "message": f"volume {volume_m3:.1f} m³ is above the limit {limits.max_volume_m3:g} m³"})
    if request.pair_count > limits.max_pairs:
        errors.append(
            {
                "field": "microphones",
                "message": f"{len(request.sources)} sources × {len(request.microphones)} microphones = "
                f"{request.pair_count} pairs, above the limit {limits.max_pairs}",
            }
        )
    if not errors:  # the length estimates are meaningful only for a room of acceptable size
        lengths_s = {"max_order": image_source_rir_s(request)}
        if request.ray_tracing:
            lengths_s["room"] = ray_tracing_rir_s(request)
        for field, rir_s in lengths_s.items():
            if rir_s > limits.max_rir_s:
                errors.append(
                    {"field": field, "message": f"the RIR would last about {rir_s:.1f} s, above the limit {limits.max_rir_s:g} s"}
                )
    if errors:
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise LimitExceeded(f"the simulation exceeds configured limits ({summary})", details={"errors": errors})
