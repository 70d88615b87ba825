"""Benchmark: sweep deconvolution + every metric in seven bands, against pyrato on the same IR.

A 10 s recording at 48 kHz of the default sweep (5 s, 20 Hz–20 kHz) through a 1.2 s room response
(direct sound + octave-band decays, T = 1.4 … 0.6 s) with noise and a random start. Pinned to one core
(OMP/MKL/OpenBLAS threads = 1, CPU affinity {0}). Prints a Markdown table.

    .venv/bin/python bench/acoustics_bench.py [--repeat 7]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from scipy import signal  # noqa: E402

from sonalyze.acoustics import analyze_impulse_response, analyze_sweep_recording, decay, energy, sti  # noqa: E402
from sonalyze.acoustics.bands import OCTAVE_BANDS_HZ, octave_band_irs, octave_filter  # noqa: E402
from sonalyze.acoustics.deconvolution import deconvolve_sweep  # noqa: E402
from sonalyze.acoustics.onset import find_onset  # noqa: E402
from sonalyze.acoustics.sweep import SweepParams, exponential_sweep, inverse_spectrum  # noqa: E402

FS_HZ = 48000
ROOM_RT_S = (1.4, 1.3, 1.2, 1.0, 0.9, 0.8, 0.6)


def room_response(rng: np.random.Generator) -> np.ndarray:
    t_s = np.arange(int(1.2 * FS_HZ)) / FS_HZ
    noise = rng.standard_normal(t_s.size)
    ir = sum(octave_filter(noise, FS_HZ, b) * np.exp(-6.91 * t_s / rt) for b, rt in zip(OCTAVE_BANDS_HZ, ROOM_RT_S))
    ir[int(0.003 * FS_HZ)] += 1.0  # direct sound after 3 ms
    return 0.3 * ir


def recording(params: SweepParams, rng: np.random.Generator) -> np.ndarray:
    played = signal.fftconvolve(exponential_sweep(params), room_response(rng))
    rec = np.zeros(10 * FS_HZ)
    offset = int(rng.uniform(0.2, 1.0) * FS_HZ)
    n = min(played.size, rec.size - offset)
    rec[offset : offset + n] = played[:n]
    return rec + 10 ** (-25 / 20) * pink_noise(rec.size, rng)  # room noise at −25 dBFS (SNR ≈ 10 dB)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise falling 3 dB per octave (room background noise is pink or redder)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[1:] /= np.sqrt(np.arange(1, spec.size))
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return x / np.sqrt(np.mean(x**2))


#: Wall clock by default; ``--clock process`` counts this process's CPU time only, which a machine
#: loaded by other jobs disturbs far less (the figure to compare two versions side by side).
CLOCK = {"wall": time.perf_counter, "process": time.process_time}
_clock = CLOCK["wall"]


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = _clock()
        out = fn()
        times.append(_clock() - t0)
    return statistics.median(times), out


def our_breakdown(ir: np.ndarray, repeat: int) -> dict[str, float]:
    onset = find_onset(ir)
    t_filter, bands = timed(lambda: octave_band_irs(ir, FS_HZ, onset), repeat)
    signals = [*bands.values(), ir[onset:]]

    def decays():
        out = []
        for h in signals:
            tr = decay.lundeby_truncation(h, FS_HZ)
            edc = decay.schroeder_curve_db(h, FS_HZ, tr)
            out.append((tr, [decay.reverberation_time(edc, FS_HZ, r, dynamic_range_db=tr.dynamic_range_db)
                             for r in (decay.EDT_RANGE_DB, decay.T20_RANGE_DB, decay.T30_RANGE_DB)]))
        return out

    t_decay, truncations = timed(decays, repeat)

    def energies():
        return [(energy.clarity_db(h, FS_HZ, 50, truncation=tr), energy.clarity_db(h, FS_HZ, 80, truncation=tr),
                 energy.definition(h, FS_HZ, truncation=tr), energy.centre_time_s(h, FS_HZ, truncation=tr),
                 energy.direct_to_reverberant_db(h, FS_HZ, truncation=tr))
                for h, (tr, _) in zip(signals, truncations)]

    t_energy, _ = timed(energies, repeat)
    t_sti, _ = timed(lambda: sti.sti_from_mtf(sti.modulation_transfer_function(np.stack(list(bands.values())), FS_HZ)), repeat)
    return {"octave filtering (7 bands)": t_filter, "Lundeby + EDC + EDT/T20/T30 (8 curves)": t_decay,
            "C50/C80/D50/Ts/DRR (8)": t_energy, "STI (MTF 7×14)": t_sti}


def pyrato_time(ir: np.ndarray, repeat: int) -> tuple[float, float]:
    import pyfar as pf
    import pyrato as ra

    onset = find_onset(ir)
    rir = pf.Signal(ir[onset:], FS_HZ)

    def metrics():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bands = pf.dsp.filter.fractional_octave_bands(rir, 1, frequency_range=(125, 8000))
            edc = ra.edc.energy_decay_curve_lundeby(bands, smoothing_parameter=np.array(OCTAVE_BANDS_HZ, float),
                                                    time_shift=False, channel_independent=True)
            out = [ra.parameters.reverberation_time_linear_regression(edc, t) for t in ("EDT", "T20", "T30")]
            out += [ra.parameters.clarity(edc, 50), ra.parameters.clarity(edc, 80), ra.parameters.definition(edc, 50)]
            return out, ra.parameters.speech_transmission_index_indirect(rir)

    t, (_, sti_value) = timed(metrics, repeat)
    return t, float(np.ravel(sti_value)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--clock", choices=sorted(CLOCK), default="wall")
    args = parser.parse_args()
    global _clock
    _clock = CLOCK[args.clock]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    rng = np.random.default_rng(2026)
    params = SweepParams()
    rec = recording(params, rng)

    t0 = time.perf_counter()
    ir = deconvolve_sweep(rec, params)
    report = analyze_impulse_response(ir, FS_HZ)
    cold = time.perf_counter() - t0  # includes the sweep spectrum and filter design (cached after)

    t_dec_cold, _ = timed(lambda: (inverse_spectrum.cache_clear(), deconvolve_sweep(rec, params)), args.repeat)
    t_dec, ir = timed(lambda: deconvolve_sweep(rec, params), args.repeat)
    t_total, report = timed(lambda: analyze_sweep_recording(rec, params), args.repeat)
    t_total_cold, _ = timed(lambda: (inverse_spectrum.cache_clear(), analyze_sweep_recording(rec, params)), args.repeat)
    t_analysis, _ = timed(lambda: analyze_impulse_response(ir, FS_HZ), args.repeat)
    t_analysis_nocurves, _ = timed(lambda: analyze_impulse_response(ir, FS_HZ, include_curves=False), args.repeat)
    breakdown = our_breakdown(ir, args.repeat)
    t_pyrato, sti_pyrato = pyrato_time(ir, max(1, args.repeat // 2))

    print(f"IR: {ir.size / FS_HZ:.2f} s at {FS_HZ} Hz; median of {args.repeat} runs, one core, {args.clock} clock\n")
    print("| step | sonalyze.acoustics |")
    print("|---|---|")
    print(f"| first call ever (deconvolve + analyze, cold caches) | {cold * 1e3:.0f} ms |")
    print(f"| deconvolution, sweep spectrum recomputed | {t_dec_cold * 1e3:.0f} ms |")
    print(f"| deconvolution (10 s recording, warm) | {t_dec * 1e3:.0f} ms |")
    for name, t in breakdown.items():
        print(f"| · {name} | {t * 1e3:.1f} ms |")
    print(f"| analyze_impulse_response, no curves | {t_analysis_nocurves * 1e3:.0f} ms |")
    print(f"| analyze_impulse_response, with curves + frequency response | {t_analysis * 1e3:.0f} ms |")
    print(f"| **deconvolution + every metric (target ≤ 300 ms)** | **{t_total * 1e3:.0f} ms** |")
    print(f"| **same, sweep spectrum recomputed (new sweep parameters)** | **{t_total_cold * 1e3:.0f} ms** |")
    print()
    print("| same metrics (Lundeby EDC, EDT/T20/T30, C50/C80/D50, STI) on the same IR | time |")
    print("|---|---|")
    print(f"| sonalyze.acoustics (analyze_impulse_response, no curves) | {t_analysis_nocurves * 1e3:.0f} ms |")
    print(f"| pyrato 1.1.0 + pyfar 0.8.1 (pyfar octave filter bank) | {t_pyrato * 1e3:.0f} ms |")
    print()
    print(f"T30 per band: {report['t30_s']['bands']} (nominal room: {list(ROOM_RT_S)}; its octave decays overlap)")
    print(f"STI: ours {report['sti']['value']}, pyrato {sti_pyrato:.3f}")


if __name__ == "__main__":
    main()
