"""What a worker process does for one ``POST /simulate``: simulate, then shape what is kept (pure, no I/O).

Building the result and encoding the WAV files here keeps that work off the service's event loop;
the service only adds its own time (``timing.service_s``), writes the files and answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sonalyze.simulation.engine import simulate
from sonalyze.simulation.schemas import SimulateRequest
from sonalyze.simulation.store import wav_bytes


def rir_path(simulation_id: str, source: int, microphone: int) -> str:
    return f"/simulations/{simulation_id}/rir/{source}/{microphone}.wav"


@dataclass(frozen=True, slots=True)
class SimulationResult:
    result: dict[str, Any]
    """The kept result (``result.json``); ``timing`` still lacks ``service_s``."""
    wavs: list[tuple[int, int, bytes]]
    """(source, microphone, 32-bit float WAV) per pair."""


def run_simulation(
    request: SimulateRequest,
    *,
    simulation_id: str,
    max_rir_s: float,
    progress: Callable[[float, str], None] | None = None,
) -> SimulationResult:
    """`engine.simulate`, its result as the service keeps and answers it, and each RIR as WAV bytes."""
    output = simulate(request, max_rir_s=max_rir_s, progress=progress)
    fs_hz = request.sample_rate_hz
    result = {
        "sample_rate_hz": fs_hz,
        "seed": output.seed,
        "pairs": [
            {
                "source": p.source,
                "microphone": p.microphone,
                "metrics": p.metrics,
                "metrics_reason": p.metrics_reason,
                "rir": {
                    "path": rir_path(simulation_id, p.source, p.microphone),
                    "samples": int(p.rir.size),
                    "duration_s": p.rir.size / fs_hz,
                },
            }
            for p in output.pairs
        ],
        "theory": output.theory,
        "elapsed_s": output.pyroomacoustics_s + output.analysis_s,
        "timing": {"pyroomacoustics_s": output.pyroomacoustics_s, "analysis_s": output.analysis_s},
    }
    wavs = [(p.source, p.microphone, wav_bytes(p.rir, fs_hz)) for p in output.pairs]
    return SimulationResult(result, wavs)
