"""The simulation's metrics, side by side with pyroomacoustics computing the RIRs they come from (issue 14).

bench/simulation_bench.py's room (8 × 6 × 3 m, α = 0.15, scattering 0.2, image sources to order 10 + ray
tracing, air absorption, one source, 4 microphones, fixed seed): pyroomacoustics' ``compute_rir()`` time,
then `analyze_impulse_response` of the 4 RIRs as `sonalyze.simulation.engine.analyze` calls it (curves on,
ξ reported, not refused) — with BLAS as the process has it (OpenBLAS: one thread per core, as the engine in
process and the tests run) and limited to one thread (as the service's pool workers run). CPU time of
this process (``time.process_time``), medians. ``--src`` analyses with another tree's ``sonalyze`` (a
git worktree at an older commit), for before/after in one session.

    .venv/bin/python bench/acoustics_simulation_metrics.py [--fs 48000] [--repeats 5] [--src DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import pyroomacoustics as pra
from threadpoolctl import threadpool_limits

SURFACES = ("west", "east", "south", "north", "floor", "ceiling")
SEED = 7


def rirs(fs_hz: int) -> tuple[list[np.ndarray], float]:
    """The 4 RIRs and pyroomacoustics' CPU time for them (room built and computed)."""
    t0 = time.process_time()
    pra.random.seed(numpy=SEED, libroom=SEED)
    bands = [125, 250, 500, 1000, 2000, 4000, 8000]
    material = pra.Material({"coeffs": [0.15] * 7, "center_freqs": bands}, {"coeffs": [0.2] * 7, "center_freqs": bands})
    room = pra.ShoeBox([8, 6, 3], fs=fs_hz, max_order=10, materials={s: material for s in SURFACES}, air_absorption=True,
                       ray_tracing=True, temperature=20.0, humidity=50.0, use_rand_ism=False)
    room.set_ray_tracing(time_thres=6.0)
    room.add_source([2.0, 3.0, 1.5])
    room.add_microphone_array(np.array([[5.0, 2.0, 1.2], [6.0, 4.0, 1.2], [4.0, 4.5, 1.6], [6.5, 1.5, 1.0]]).T)
    room.compute_rir()
    return [np.asarray(room.rir[m][0], dtype=float) for m in range(4)], time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fs", type=int, default=48000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--src", help="a tree's src folder to import sonalyze from")
    args = parser.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
    from sonalyze.acoustics.report import analyze_impulse_response

    def metrics(responses: list[np.ndarray]) -> float:
        t0 = time.process_time()
        for rir in responses:
            analyze_impulse_response(rir, args.fs, include_curves=True, max_nonlinearity_permille=None)
        return time.process_time() - t0

    pra_s, default_s, single_s = [], [], []
    for _ in range(args.repeats):
        responses, seconds = rirs(args.fs)
        pra_s.append(seconds)
        default_s.append(metrics(responses))
        with threadpool_limits(limits=1, user_api="blas"):
            single_s.append(metrics(responses))
    print(f"sonalyze from {sys.modules['sonalyze'].__file__}; {args.fs} Hz, RIRs {[round(r.size / args.fs, 2) for r in responses]} s")
    print(f"pyroomacoustics, 4 RIRs:            {statistics.median(pra_s):.3f} s CPU (runs {', '.join(f'{s:.3f}' for s in pra_s)})")
    print(f"metrics of the 4, BLAS default:    {statistics.median(default_s):.3f} s CPU (runs {', '.join(f'{s:.3f}' for s in default_s)})")
    print(f"metrics of the 4, BLAS one thread: {statistics.median(single_s):.3f} s CPU (runs {', '.join(f'{s:.3f}' for s in single_s)})")


if __name__ == "__main__":
    main()
