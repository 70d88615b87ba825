"""The simulation itself: a pure function from a request to RIRs and metrics, run in a worker process.

pyroomacoustics (Scheibler et al., ICASSP 2018) builds the room (``ShoeBox``, or ``Room.from_corners``
then ``extrude``), computes image sources to ``max_order`` and, with ``ray_tracing``, the late part by
stochastic ray tracing (its hybrid model); `sonalyze.acoustics` analyses each RIR exactly as it
analyses a measured one.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyroomacoustics as pra

from sonalyze.acoustics.report import analyze_impulse_response
from sonalyze.rooms import MATERIAL_BANDS_HZ, MaterialCoefficients, PolygonRoom, ShoeboxRoom, resolve_material
from sonalyze.simulation.schemas import SimulateRequest
from sonalyze.simulation.theory import air_energy_attenuation_per_m, room_theory

AIR_BANDS_HZ = (*MATERIAL_BANDS_HZ, 16000)


@dataclass(frozen=True, slots=True)
class PairResult:
    source: int
    microphone: int
    rir: np.ndarray
    """float32, at the request's sample rate."""
    metrics: dict[str, Any] | None
    """The measurement result schema, or None when the RIR cannot be analysed (see ``metrics_reason``)."""
    metrics_reason: str | None = None


def analyze(rir: np.ndarray, fs_hz: int) -> tuple[dict[str, Any] | None, str | None]:
    """`analyze_impulse_response`, or None and the reason (e.g. a low order leaves an RIR under 0.1 s)."""
    try:
        # a ray-traced decay bends where image sources hand over to rays: the model's shape, reported
        # (ξ, curvature) but not refused as a measurement's would be (ISO 3382-2 Annex B)
        return analyze_impulse_response(rir, fs_hz, include_curves=True, max_nonlinearity_permille=None), None
    except ValueError as exc:
        return None, str(exc)


@dataclass(frozen=True, slots=True)
class SimulationOutput:
    pairs: list[PairResult]
    theory: dict[str, Any]
    seed: int
    pyroomacoustics_s: float
    """Time to build the room and compute the RIRs."""
    analysis_s: float
    """Time for the metrics of every pair."""


def pra_material(material: str | MaterialCoefficients) -> pra.Material:
    """The seven-band pyroomacoustics material (resolved here, so theory and simulation use the same numbers)."""
    bands = resolve_material(material)
    centre_freqs = list(MATERIAL_BANDS_HZ)
    return pra.Material(
        {"coeffs": list(bands.absorption), "center_freqs": centre_freqs},
        {"coeffs": list(bands.scattering), "center_freqs": centre_freqs},
    )


def counter_clockwise(room: PolygonRoom) -> tuple[np.ndarray, list[str | MaterialCoefficients]]:
    """Corners (2 × N) counter-clockwise, with each wall keeping its material.

    ``Room.from_corners`` reverses clockwise corners but not the wall materials; reversing them here
    maps wall ``i`` (corner i → i+1) of the reversed list to the original wall ``N − 2 − i`` (mod N).
    """
    corners = np.array(room.corners_m, dtype=float)
    walls = room.wall_materials()
    if room.is_counter_clockwise:
        return corners.T, walls
    n = len(walls)
    return corners[::-1].T, [walls[(n - 2 - i) % n] for i in range(n)]


def build_room(request: SimulateRequest, *, max_rir_s: float) -> pra.Room:
    """The pyroomacoustics room with every source and microphone, not yet simulated.

    Air absorption follows ISO 9613-1 at the request's temperature and humidity (the values the
    Sabine/Eyring predictions use), in place of pyroomacoustics' coarse table (two temperatures, three
    humidity ranges; about half the ISO value at 8 kHz and 50 % RH). The 16 kHz point serves the top
    band pyroomacoustics adds at sampling rates of 32 kHz and more.
    """
    common = {
        "fs": request.sample_rate_hz,
        "max_order": request.max_order,
        "air_absorption": request.air_absorption,
        "ray_tracing": request.ray_tracing,
        "temperature": request.temperature_c,
        "humidity": request.humidity_percent,
        "use_rand_ism": False,
    }
    room_model = request.room
    if isinstance(room_model, ShoeboxRoom):
        materials = {s.name: pra_material(s.material) for s in room_model.surfaces()}
        room = pra.ShoeBox(list(room_model.dimensions_m), materials=materials, **common)
    else:
        corners, walls = counter_clockwise(room_model)
        room = pra.Room.from_corners(corners, materials=[pra_material(m) for m in walls], **common)
        room.extrude(
            room_model.height_m,
            materials={"floor": pra_material(room_model.materials.floor), "ceiling": pra_material(room_model.materials.ceiling)},
        )
    if request.air_absorption:
        air_m_per_m = air_energy_attenuation_per_m(np.array(AIR_BANDS_HZ, dtype=float), request.temperature_c, request.humidity_percent)
        room.set_air_absorption(coefficients=list(air_m_per_m), center_freqs=list(AIR_BANDS_HZ))
    if request.ray_tracing:
        room.set_ray_tracing(time_thres=max_rir_s)
    for source in request.sources:
        room.add_source(list(source))
    room.add_microphone_array(np.array(request.microphones, dtype=float).T)
    return room


def simulate(
    request: SimulateRequest, *, max_rir_s: float, progress: Callable[[float, str], None] | None = None
) -> SimulationOutput:
    """Simulate every source–microphone pair and analyse its RIR (no I/O; seeds the global RNGs).

    ``progress(fraction, message)``: 0 before the image sources and ray tracing, 0.5 after them, then
    one step per analysed pair up to 1.
    """
    progress = progress or (lambda _fraction, _message: None)
    seed = request.seed if request.seed is not None else secrets.randbelow(2**63)
    pra.random.seed(numpy=seed, libroom=seed)
    theory = room_theory(
        request.room,
        air_absorption=request.air_absorption,
        temperature_c=request.temperature_c,
        humidity_percent=request.humidity_percent,
    )
    started = time.perf_counter()
    room = build_room(request, max_rir_s=max_rir_s)
    progress(0.0, "computing the room impulse responses")
    room.compute_rir()
    simulated = time.perf_counter()
    fs_hz = request.sample_rate_hz
    pairs = []
    count = len(request.sources) * len(request.microphones)
    for i in range(len(request.sources)):
        for j in range(len(request.microphones)):
            progress(0.5 + 0.5 * len(pairs) / count, f"analysing source {i}, microphone {j}")
            rir = np.asarray(room.rir[j][i], dtype=np.float32)
            pairs.append(PairResult(i, j, rir, *analyze(rir, fs_hz)))
    progress(1.0, "simulated")
    analysed = time.perf_counter()
    return SimulationOutput(
        pairs=pairs,
        theory=theory.to_json(),
        seed=seed,
        pyroomacoustics_s=simulated - started,
        analysis_s=analysed - simulated,
    )
