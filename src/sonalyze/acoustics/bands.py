"""Octave bands 125 Hz – 8 kHz and a zero-phase octave filter bank (IEC 61260-1:2014, class 1).

Base-10 exact mid-band frequencies fm = 1000·G^x, G = 10^(3/10), band edges fm·G^(∓1/2).
Each filter is a 3rd-order Butterworth band-pass run forward and backward (`scipy.signal.sosfiltfilt`):
zero phase, so no group delay and no ringing added after the decay (ISO 3382-1 recommends
time-reversed or zero-phase filtering for short low-frequency decays). Forward-backward squares the
magnitude, so the design band is widened until the squared response is −3 dB at the nominal edges;
the resulting response meets the class-1 mask (0 dB at fm, ≥ 16.6 dB down one octave away, ≥ 40.5 dB
two octaves away — checked in tests).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import signal

#: Nominal octave mid-band frequencies, Hz (IEC 61260-1).
OCTAVE_BANDS_HZ: tuple[int, ...] = (125, 250, 500, 1000, 2000, 4000, 8000)
#: Octave ratio G (base 10).
OCTAVE_RATIO = 10.0 ** (3.0 / 10.0)
BUTTERWORTH_ORDER = 3
#: Design-band stretch so that |H|² (forward-backward) is −3 dB at the nominal edges.
_EDGE_STRETCH = (10.0 ** (0.15) - 1.0) ** (-1.0 / (2 * BUTTERWORTH_ORDER))


def exact_centre_hz(band_hz: float) -> float:
    """Base-10 exact mid-band frequency for a nominal octave centre (e.g. 125 → 125.89 Hz)."""
    x = round(np.log(band_hz / 1000.0) / np.log(2.0))
    return 1000.0 * OCTAVE_RATIO**x


def octave_band_edges_hz(band_hz: float) -> tuple[float, float]:
    """Lower and upper edge of the octave band with nominal centre ``band_hz``, Hz (IEC 61260-1)."""
    fm = exact_centre_hz(band_hz)
    return fm * OCTAVE_RATIO**-0.5, fm * OCTAVE_RATIO**0.5


def band_available(band_hz: float, fs_hz: float) -> bool:
    """True when the whole band lies below the Nyquist frequency (8 kHz needs fs ≥ 22.5 kHz)."""
    return octave_band_edges_hz(band_hz)[1] < fs_hz / 2


def unavailable_reason(band_hz: float, fs_hz: float) -> str:
    upper_hz = octave_band_edges_hz(band_hz)[1]
    return (
        f"band unavailable: its upper edge {upper_hz:.0f} Hz is above the Nyquist frequency "
        f"{fs_hz / 2:.0f} Hz (needs fs ≥ {2 * upper_hz / 1000:.1f} kHz)"
    )


@functools.lru_cache(maxsize=64)
def octave_sos(band_hz: float, fs_hz: float) -> np.ndarray:
    """Second-order sections of the (one-pass) octave band-pass for ``band_hz`` at ``fs_hz``."""
    if not band_available(band_hz, fs_hz):
        raise ValueError(unavailable_reason(band_hz, fs_hz))
    fm = exact_centre_hz(band_hz)
    half_bw = 0.5 * (OCTAVE_RATIO**0.5 - OCTAVE_RATIO**-0.5) * _EDGE_STRETCH
    low_hz = fm * (np.sqrt(half_bw**2 + 1.0) - half_bw)
    high_hz = fm * (np.sqrt(half_bw**2 + 1.0) + half_bw)
    if high_hz >= 0.98 * fs_hz / 2:  # band touches Nyquist: the high-pass half alone
        return signal.butter(BUTTERWORTH_ORDER, low_hz, btype="highpass", fs=fs_hz, output="sos")
    return signal.butter(BUTTERWORTH_ORDER, [low_hz, high_hz], btype="bandpass", fs=fs_hz, output="sos")


def octave_filter(x: np.ndarray, fs_hz: float, band_hz: float) -> np.ndarray:
    """Zero-phase (forward-backward) octave-band filtering of ``x`` along its last axis."""
    return signal.sosfiltfilt(octave_sos(float(band_hz), float(fs_hz)), x, axis=-1)


def octave_filter_bank(
    x: np.ndarray, fs_hz: float, bands_hz: tuple[int, ...] = OCTAVE_BANDS_HZ
) -> dict[int, np.ndarray]:
    """Zero-phase octave-band signals of ``x`` for every available band (unavailable bands omitted)."""
    return {b: octave_filter(x, fs_hz, b) for b in bands_hz if band_available(b, fs_hz)}


#: Zeros put in front of the IR before zero-phase filtering; the band energy that lands in this lead
#: (the filter's symmetric spread of the direct sound) is added back at the onset.
FILTER_LEAD_S = 0.05


def octave_band_irs(ir: np.ndarray, fs_hz: float, onset: int) -> dict[int, np.ndarray]:
    """Octave-band IRs starting at ``onset`` (a broadband index), for every available band.

    Zero-phase filtering smears the direct sound symmetrically in time; the band energy that lands
    before the onset is added to the first sample, so early-energy ratios (C50, C80, D50) of the low
    bands are not biased low by cutting it off.
    """
    lead = max(0, int(FILTER_LEAD_S * fs_hz) - onset)
    padded = np.concatenate((np.zeros(lead), ir)) if lead else np.asarray(ir, dtype=np.float64)
    start = onset + lead
    out = {}
    for band_hz, filtered in octave_filter_bank(padded, fs_hz).items():
        h = filtered[start:].copy()
        pre_energy = float(np.sum(filtered[max(0, start - int(FILTER_LEAD_S * fs_hz)) : start] ** 2))
        h[0] = np.copysign(np.sqrt(h[0] ** 2 + pre_energy), h[0])
        out[band_hz] = h
    return out
