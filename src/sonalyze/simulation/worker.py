"""What a worker process does for one simulation: simulate, publish each RIR to the blob store, and
shape the result that is kept (a small dict: the RIRs themselves never travel through the task queue).

Building the result and encoding and writing the WAV files here keeps that work off the service's event
loop; the service only adds its own time (``timing.service_s``), records the result and answers. A task
run twice (another replica took the simulation over) writes the same keys with the same bytes: the
request's seed is fixed when the simulation is created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sonalyze.common.blobs import BlobAddress, put_bytes
from sonalyze.simulation.engine import simulate
from sonalyze.simulation.schemas import SimulateRequest
from sonalyze.simulation.store import rir_key, wav_bytes


def rir_path(simulation_id: str, source: int, microphone: int) -> str:
    return f"/simulations/{simulation_id}/rir/{source}/{microphone}.wav"


def run_simulation(
    request: SimulateRequest,
    *,
    simulation_id: str,
    max_rir_s: float,
    blobs: BlobAddress,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """`engine.simulate`, each RIR as a WAV blob (``rir_key``), and the result as the service keeps it
    (``timing`` still lacks ``service_s``)."""
    output = simulate(request, max_rir_s=max_rir_s, progress=progress)
    fs_hz = request.sample_rate_hz
    store = blobs.open()
    for pair in output.pairs:
        put_bytes(store, rir_key(simulation_id, pair.source, pair.microphone), wav_bytes(pair.rir, fs_hz))
    return {
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
