"""How simulated decays compare with Sabine and Eyring: the numbers behind docs/simulation.md.

    .venv/bin/python bench/simulation_physics.py

An 8 × 6 × 3 m shoebox, every surface alike, 16 kHz, one source at (2, 3, 1.5) and a microphone at
(5, 2, 1.2), fixed seed. Prints T30 / Eyring and T30 / Sabine at 500 Hz, 1 kHz and 2 kHz for pure
image sources of growing order (no air absorption) and for the hybrid model (order 10 + ray tracing)
over absorption and scattering.
"""

from __future__ import annotations

import numpy as np

from sonalyze.simulation.engine import simulate
from sonalyze.simulation.schemas import SimulateRequest

SURFACES = ("floor", "ceiling", "east", "west", "north", "south")
MID = [2, 3, 4]  # 500, 1000, 2000 Hz


def ratios(absorption: float, scattering: float, max_order: int, ray_tracing: bool) -> tuple[np.ndarray, np.ndarray, float]:
    body = {
        "room": {"type": "shoebox", "dimensions_m": [8, 6, 3], "materials": {s: {"absorption": absorption, "scattering": scattering} for s in SURFACES}},
        "sources": [[2.0, 3.0, 1.5]],
        "microphones": [[5.0, 2.0, 1.2]],
        "sample_rate_hz": 16000,
        "max_order": max_order,
        "ray_tracing": ray_tracing,
        "air_absorption": ray_tracing,
        "seed": 5,
    }
    output = simulate(SimulateRequest.model_validate(body), max_rir_s=6.0)
    [pair] = output.pairs
    t30 = np.array([np.nan if v is None else v for v in pair.metrics["t30_s"]["bands"]])[MID]
    return t30 / np.array(output.theory["eyring_s"])[MID], t30 / np.array(output.theory["sabine_s"])[MID], pair.rir.size / 16000


def row(label: str, eyring: np.ndarray, sabine: np.ndarray, length_s: float) -> str:
    fmt = lambda values: " ".join("  n/a" if np.isnan(v) else f"{v:5.2f}" for v in values)  # noqa: E731
    return f"| {label} | {fmt(eyring)} | {fmt(sabine)} | {length_s:.2f} |"


def main() -> None:
    print("| model | T30/Eyring 500 1k 2k | T30/Sabine 500 1k 2k | RIR s |")
    print("|---|---|---|---|")
    for order in (40, 60, 80):
        print(row(f"image sources only, order {order}, α = 0.1", *ratios(0.1, 0.0, order, False)))
    for absorption in (0.05, 0.1, 0.2, 0.3):
        for scattering in (0.1, 0.5, 0.9):
            print(row(f"order 10 + ray tracing, α = {absorption}, s = {scattering}", *ratios(absorption, scattering, 10, True)))


if __name__ == "__main__":
    main()
