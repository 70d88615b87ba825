"""Monte Carlo of the one-sweep clock estimate (`recording.stretch_clock_ppm`) on generated phone-chain recordings.

Each case: a room (band-wise synthetic decays of 0.3 s — weak direct sound, half of them the test set's seed-3
room —, 0.8 s or 2.2 s, or the pyroomacoustics shoebox), a 2, 3 or 4 s sweep, a clock offset within ±1500 ppm and
20–60 dB of noise, through the phone loudspeaker model (tests/acoustics/phone_chain.py). Prints one JSON line per
case — the estimate (null when not unique), how far the best trial is from the truth, and ``state``: ``ok`` (within
`clock_tolerance_ppm`), ``none`` (not unique: left uncorrected with its reason) or ``WRONG`` (confidently wrong) —
then the counts. Run from the repository root:

    PYTHONPATH=. .venv/bin/python bench/acoustics_clock_mc.py --seed 13 --cases 60
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np

from sonalyze.acoustics import recording
from sonalyze.acoustics.deconvolution import PRE_ROLL_S, deconvolve_recording, ir_window, strongest_peak
from sonalyze.acoustics.sweep import SweepParams
from tests.acoustics.phone_chain import Chain, pyroomacoustics_room, record, synthetic_room

FS_HZ = 48000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--cases", type=int, default=60)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    states: collections.Counter[str] = collections.Counter()
    for i in range(args.cases):
        kind = str(rng.choice(["0.3", "0.3", "0.3", "0.8", "2.2", "shoebox"]))
        duration_s = float(rng.choice([2.0, 3.0, 4.0]))
        ppm, snr_db, seed = float(rng.uniform(-1500, 1500)), float(rng.uniform(20, 60)), int(rng.integers(1e6))
        if kind == "shoebox":
            room, after_s = pyroomacoustics_room(FS_HZ), 1.5
        else:
            room, after_s = synthetic_room([float(kind)] * 7, FS_HZ, seed=3 if i % 2 else seed % 97), 1.0 + float(kind)
        params = SweepParams(duration_s=duration_s, silence_before_s=0.3, silence_after_s=after_s)
        x = record(params, room, Chain(clock_ppm=ppm, snr_db=snr_db, seed=seed))
        h_all = deconvolve_recording(x, params)
        start, _ = ir_window(h_all, x.size, params, strongest_peak(h_all, x.size, params, check_start=False))
        estimate = recording.stretch_clock_ppm(h_all, start + int(round(PRE_ROLL_S * FS_HZ)), params)
        tolerance = recording.clock_tolerance_ppm("stretched_inverse", params)
        state = "none" if estimate.ppm is None else ("WRONG" if abs(estimate.ppm - ppm) > tolerance else "ok")
        states[state] += 1
        print(json.dumps({
            "room": kind, "sweep_s": duration_s, "ppm": round(ppm, 1), "snr_db": round(snr_db, 1), "seed": seed,
            "estimate_ppm": None if estimate.ppm is None else round(estimate.ppm, 1),
            "best_error_ppm": round(abs(estimate.best_ppm - ppm), 1), "second_ratio": round(estimate.second_ratio, 3),
            "state": state,
        }), flush=True)
    print(json.dumps(dict(states)))


if __name__ == "__main__":
    main()
