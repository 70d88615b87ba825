"""Frequency response of an impulse response with fractional-octave smoothing.

Power smoothing over a band of 1/``fraction`` octave centred on each output frequency
(|H|² averaged over [f·2^(−1/2b), f·2^(1/2b)], as REW and Hatziantoniou & Mourjopoulos 2000 describe),
evaluated on a log-spaced grid from `F_MIN_HZ` to min(20 kHz, fs/2).
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sp_fft

from sonalyze.acoustics.onset import as_signal

F_MIN_HZ = 20.0
F_MAX_HZ = 20000.0
DEFAULT_POINTS = 256


def frequency_response_db(
    ir: np.ndarray, fs_hz: float, fraction: int = 3, *, n_points: int = DEFAULT_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """(frequency_hz, level_db): 1/``fraction``-octave power-smoothed |H(f)| in dB re unit gain."""
    x = as_signal(ir)
    if fraction < 1:
        raise ValueError(f"fraction must be ≥ 1 (1 = octave, 3 = third octave), got {fraction}")
    n_fft = sp_fft.next_fast_len(max(x.size, int(fs_hz)), real=True)  # ≤ 1 Hz resolution
    power = np.abs(sp_fft.rfft(x, n_fft)) ** 2
    df_hz = fs_hz / n_fft
    f_max_hz = min(F_MAX_HZ, fs_hz / 2 / 2 ** (0.5 / fraction))
    freqs_hz = np.geomspace(F_MIN_HZ, f_max_hz, n_points)
    csum = np.concatenate(([0.0], np.cumsum(power)))
    lo = np.floor(freqs_hz * 2 ** (-0.5 / fraction) / df_hz).astype(int)
    hi = np.maximum(np.ceil(freqs_hz * 2 ** (0.5 / fraction) / df_hz).astype(int), lo + 1)
    hi = np.minimum(hi, power.size)
    mean_power = (csum[hi] - csum[lo]) / (hi - lo)
    with np.errstate(divide="ignore"):
        return freqs_hz, 10.0 * np.log10(mean_power)
