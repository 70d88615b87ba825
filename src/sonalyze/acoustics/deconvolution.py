"""Deconvolution of a sweep recording into the linear impulse response (Farina 2000; ISO 18233 Annex B).

The whole recording is divided by the sweep's spectrum (regularised, see `sweep.inverse_spectrum`), so
the sweep may start anywhere in it. The linear IR is the strongest peak; the responses of the N-th
harmonics land T·ln(N)/ln(f₂/f₁) earlier and are dropped by keeping only the causal part, which starts
`PRE_ROLL_S` before the onset (ISO 3382-1 A.2.1, searched just before the peak).
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sp_fft

from sonalyze.acoustics.onset import as_signal, onset_level
from sonalyze.acoustics.sweep import SweepParams, inverse_spectrum

#: Samples kept before the detected onset in the returned IR, s.
PRE_ROLL_S = 0.005
#: Shortest IR (after the pre-roll) worth returning, s.
MIN_IR_LENGTH_S = 0.1
#: A deconvolved sweep peaks far above the median of the result where the whole inverse overlaps the
#: recording (≈ 34 dB for a 5 s sweep recorded at 0 dB SNR); deconvolved pure noise reaches ≈ 16 dB.
MIN_PEAK_TO_MEDIAN_DB = 25.0
#: Longest look-back from the peak for the onset, s (bounded by half the 2nd harmonic's advance).
MAX_ONSET_LOOKBACK_S = 0.05
#: A sweep cut by the recording's start or end deconvolves up to ≈ 1 dB above a whole one (its cut edge
#: adds energy at its lag); whole sweeps this close to the strongest peak are analysed instead.
CUT_SWEEP_MARGIN_DB = 3.0


def mono(recording: np.ndarray) -> np.ndarray:
    """A 1-D float64 view of a recording: 1-D as is; ``(n, channels)`` → the first channel."""
    arr = np.asarray(recording)
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise ValueError("recording has no channels")
        arr = arr[:, 0]
    return as_signal(arr, "recording")


def deconvolve_recording(x: np.ndarray, params: SweepParams) -> np.ndarray:
    """The whole recording ``x`` (1-D) divided by the sweep spectrum: lags ``[0, x.size)`` hold the
    responses (the linear IR of a sweep starting at sample s lands at lag s), lags past ``x.size`` hold
    what wrapped around (a sweep that began before the recording). Raises ValueError when ``x`` is
    shorter than one sweep."""
    n_sweep = params.validate().sweep_length_samples
    if x.size < n_sweep:
        raise ValueError(
            f"recording too short: {x.size / params.fs_hz:.2f} s, the sweep alone lasts {params.duration_s:.2f} s"
        )
    n_fft = sp_fft.next_fast_len(x.size + n_sweep - 1, real=True)
    return sp_fft.irfft(sp_fft.rfft(x, n_fft) * inverse_spectrum(params, n_fft), n_fft)


def strongest_peak(h: np.ndarray, n_recording: int, params: SweepParams, *, check_start: bool = True) -> int:
    """Lag of the strongest deconvolved impulse whose sweep the recording holds (see `whole_sweep_peak`);
    ValueError when none stands out of the noise or (with ``check_start``, see `starts_after_sweep`) the
    recording started after that sweep began."""
    energy = h[:n_recording] ** 2
    peak = int(np.argmax(energy))
    n_sweep = params.sweep_length_samples
    full_overlap = energy[: n_recording - n_sweep] if n_recording - n_sweep > MIN_IR_LENGTH_S * params.fs_hz else energy
    if median_exceeds(full_overlap, 10.0 ** (MIN_PEAK_TO_MEDIAN_DB / 10.0), float(energy[peak])):
        raise ValueError("no sweep found in the recording (no impulse stands out of the deconvolved noise)")
    peak = whole_sweep_peak(h, n_recording, params, peak)
    if check_start and starts_after_sweep(h, n_recording, peak, params):
        raise ValueError(STARTS_AFTER_SWEEP)
    return peak


STARTS_AFTER_SWEEP = "the recording starts after the sweep began: start recording before playing"


def median_exceeds(values: np.ndarray, factor: float, level: float | np.ndarray) -> bool | np.ndarray:
    """``np.median(values, axis=0) * factor > level`` (per column of a 2-D ``values``), exactly, by counting
    instead of selecting: one pass, and the median itself only for columns whose even count's two middle
    values straddle the level."""
    n = values.shape[0]
    above = np.count_nonzero(values * factor > level, axis=0)
    out = above > n // 2
    if n % 2 == 0:
        tie = above == n // 2
        if np.any(tie):
            if values.ndim == 1:
                return bool(float(np.median(values)) * factor > level)
            out[tie] = np.median(values[:, tie], axis=0) * factor > np.broadcast_to(level, out.shape)[tie]
    return bool(out) if values.ndim == 1 else out


def starts_after_sweep(h: np.ndarray, n_recording: int, peak: int, params: SweepParams) -> bool:
    """More energy wrapped around (negative lags) less than one sweep before ``peak`` than at ``peak``:
    ``peak``'s sweep began before the recording (a cut sweep deconvolves before its own start). A sweep
    that began before the recording and ended before ``peak``'s began is another sweep, not this one."""
    first = max(n_recording, h.size + peak - params.sweep_length_samples + 1)
    return bool(first < h.size and np.max(h[first:] ** 2) > h[peak] ** 2)


def whole_sweep_peak(h: np.ndarray, n_recording: int, params: SweepParams, peak: int) -> int:
    """The earliest sweep the recording holds whole, with at least `MIN_IR_LENGTH_S` of decay after it,
    whose peak is within `CUT_SWEEP_MARGIN_DB` of the strongest energy (``peak``, or wrapped lags): with
    several sweeps in the recording (a repeated or looped signal) the one with the most decay, never one
    cut by either end. ``peak`` itself when there is none. Distinct sweeps lie at least one sweep length
    apart (harmonic products and reflections lie closer)."""
    n_sweep = params.sweep_length_samples
    last = n_recording - n_sweep - int(MIN_IR_LENGTH_S * params.fs_hz)  # latest lag of a whole sweep and decay
    if last < 0:
        return peak
    energy = h[: last + 1] ** 2
    floor = max(h[peak] ** 2, np.max(h[n_recording:] ** 2, initial=0.0)) * 10.0 ** (-CUT_SWEEP_MARGIN_DB / 10.0)
    chosen, end = peak, last + 1
    while end > 0:
        candidate = int(np.argmax(energy[:end]))
        if energy[candidate] < floor:
            break
        if not starts_after_sweep(h, n_recording, candidate, params):
            chosen = candidate
        end = candidate - n_sweep + 1
    return chosen


def ir_window(
    h: np.ndarray, n_recording: int, params: SweepParams, peak: int, ir_length_s: float | None = None
) -> tuple[int, int]:
    """``(start, length)`` of the IR around the deconvolved ``peak``: from `PRE_ROLL_S` before its ISO
    3382-1 onset (searched at most `MAX_ONSET_LOOKBACK_S` and half the 2nd harmonic's advance before the
    peak), ``ir_length_s`` long (default ``params.silence_after_s``), clipped to what the recording
    holds after that repetition's sweep. ValueError when less than `MIN_IR_LENGTH_S` remains."""
    if ir_length_s is not None and not ir_length_s > 0:
        raise ValueError(f"ir_length_s must be > 0 s, got {ir_length_s}")
    fs_hz = params.fs_hz
    energy = h[: peak + 1] ** 2
    lookback = int(min(MAX_ONSET_LOOKBACK_S, 0.5 * params.harmonic_advance_s(2)) * fs_hz)
    window = energy[max(0, peak - lookback) : peak + 1]
    onset = peak - window.size + 1 + int(np.argmax(window >= onset_level(window, window.size - 1)))
    start = max(0, onset - int(round(PRE_ROLL_S * fs_hz)))
    available = n_recording - params.sweep_length_samples - start
    wanted = int(round((params.silence_after_s if ir_length_s is None else ir_length_s) * fs_hz))
    n_ir = min(wanted, available)
    if n_ir < MIN_IR_LENGTH_S * fs_hz:
        raise ValueError(
            f"recording ends {max(available, 0) / fs_hz:.3f} s after the sweep; need at least "
            f"{MIN_IR_LENGTH_S} s of decay after it (is the sweep cut or missing?)"
        )
    return start, n_ir


def deconvolve_sweep(
    recording: np.ndarray, params: SweepParams, ir_length_s: float | None = None
) -> np.ndarray:
    """Impulse response (float64, gain re the played sweep) from a recording of ``params``' sweep.

    ``recording``: 1-D, or ``(n, channels)`` of which the first channel is used; it must contain the
    whole sweep, starting at any moment after the recording starts. The result starts ``PRE_ROLL_S``
    before the onset of the linear IR (the strongest one when the sweep is repeated), is
    ``ir_length_s`` long (default ``params.silence_after_s``), clipped to what the recording holds after
    the sweep. Harmonic-distortion products, which precede the linear IR, are cut off. Raises ValueError
    if the recording is silent, too short, or cut. Repeated sweeps: `sonalyze.acoustics.recording`.
    """
    if ir_length_s is not None and not ir_length_s > 0:
        raise ValueError(f"ir_length_s must be > 0 s, got {ir_length_s}")
    x = mono(recording)
    h = deconvolve_recording(x, params)
    start, n_ir = ir_window(h, x.size, params, strongest_peak(h, x.size, params), ir_length_s)
    return h[start : start + n_ir].copy()
