"""Octave bands 125 Hz – 8 kHz and a zero-phase octave filter bank (IEC 61260-1:2014, class 1).

Base-10 exact mid-band frequencies fm = 1000·G^x, G = 10^(3/10), band edges fm·G^(∓1/2).
Each band is filtered in the frequency domain with a real, non-negative (zero-phase) amplitude
response: the power response of a `FILTER_ORDER`-th order analogue Butterworth band-pass,
A(f) = 1/(1 + (c·Ω)^(2N)) with Ω = (f² − f_lo·f_hi)/(f·(f_hi − f_lo)), scaled (c) so that A is −3 dB
at the nominal band edges. That is what a forward-backward (filtfilt) Butterworth gives, without
the bilinear warping and at a cost that does not grow with the order. Zero phase: no group delay
and no ringing added after the decay (ISO 3382-1 §5.3.4 recommends time-reversed or zero-phase
filtering for short low-frequency decays). The response meets the IEC 61260-1:2014 Table 1 class-1
acceptance limits at every breakpoint (`CLASS_1_LIMITS_DB`, checked in tests on a dense grid).

Octave filters with −3 dB at the shared edges cannot separate a band from a much louder neighbour
(a phone loudspeaker rolls off 24 dB/octave below 250 Hz): `leakage_fraction` measures, from the
IR's own spectrum, which part of a band's filtered energy comes from outside its nominal edges.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import fft as sp_fft

#: Nominal octave mid-band frequencies, Hz (IEC 61260-1).
OCTAVE_BANDS_HZ: tuple[int, ...] = (125, 250, 500, 1000, 2000, 4000, 8000)
#: Octave ratio G (base 10).
OCTAVE_RATIO = 10.0 ** (3.0 / 10.0)
#: Butterworth order of the band-pass power response (the amplitude applied is its square: 2N-pole skirts).
FILTER_ORDER = 6
#: Scale of Ω so that the amplitude is 1/√2 (−3 dB) at the nominal edges.
_EDGE_SCALE = (np.sqrt(2.0) - 1.0) ** (1.0 / (2 * FILTER_ORDER))
#: IEC 61260-1:2014 Table 1, class 1: (exponent e of Ω = G^e, min, max relative attenuation in dB);
#: ±0.5 is the band edge, approached from inside ("-") and outside ("+"); beyond ±4 the minimum stays 70 dB.
CLASS_1_LIMITS_DB: tuple[tuple[float, float, float], ...] = (
    (0.0, -0.4, 0.4),
    (0.125, -0.4, 0.5),
    (0.25, -0.4, 0.7),
    (0.375, -0.4, 1.4),
    (0.5, -0.4, 5.3),  # edge, inside
    (0.5, 1.2, np.inf),  # edge, outside
    (1.0, 16.6, np.inf),
    (2.0, 40.5, np.inf),
    (3.0, 60.0, np.inf),
    (4.0, 70.0, np.inf),
)
#: Zeros put in front of the IR before zero-phase filtering; the band energy that lands in this lead
#: (the filter's symmetric spread of the direct sound) is added back at the onset.
FILTER_LEAD_S = 0.05
#: Zeros after the IR, so the circular convolution does not wrap the end onto the start.
FILTER_TAIL_S = 0.1


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


#: A band's decay is analysed in blocks of samples (`decay.BandEnergy`) at a block rate of at least this many
#: times its upper edge: h² holds nothing above 2·f_hi (the filter is −123 dB at twice the upper edge), so its
#: ripple stays below the block grid's Nyquist frequency.
BLOCK_RATE_PER_UPPER_EDGE = 4.0


def block_factor(band_hz: float, fs_hz: float, divides: int) -> int:
    """Samples per block for the decay analysis of band ``band_hz`` at ``fs_hz``: the largest divisor of
    ``divides`` (the STI envelope's bin, so its bins are whole blocks) keeping the block rate at least
    `BLOCK_RATE_PER_UPPER_EDGE` × the band's upper edge (48 kHz: 48 at 125 Hz … 2 at 4 kHz, 1 at 8 kHz)."""
    largest = fs_hz / (BLOCK_RATE_PER_UPPER_EDGE * octave_band_edges_hz(band_hz)[1])
    return max(m for m in range(1, divides + 1) if divides % m == 0 and (m == 1 or m <= largest))


def octave_response(freqs_hz: np.ndarray, band_hz: float) -> np.ndarray:
    """Zero-phase amplitude response (real, 0…1) of the octave filter for ``band_hz`` at ``freqs_hz``."""
    lo_hz, hi_hz = octave_band_edges_hz(band_hz)
    f = np.asarray(freqs_hz, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        omega = _EDGE_SCALE * (f * f - lo_hz * hi_hz) / (f * (hi_hz - lo_hz))
        out = 1.0 / (1.0 + omega ** (2 * FILTER_ORDER))
    return np.where(f > 0, out, 0.0)


@functools.lru_cache(maxsize=32)
def _bank_response(fs_hz: float, n_fft: int, bands_hz: tuple[int, ...]) -> np.ndarray:
    """Amplitude responses (bands × rfft bins) of the available bands, read-only."""
    freqs_hz = np.fft.rfftfreq(n_fft, 1.0 / fs_hz)
    out = np.stack([octave_response(freqs_hz, b) for b in bands_hz])
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=32)
def _bank_power_response(fs_hz: float, n_fft: int, bands_hz: tuple[int, ...]) -> np.ndarray:
    """`_bank_response` squared (the power response), read-only."""
    out = _bank_response(fs_hz, n_fft, bands_hz) ** 2
    out.flags.writeable = False
    return out


def _power(spectrum: np.ndarray) -> np.ndarray:
    return spectrum.real**2 + spectrum.imag**2


def _available(bands_hz: tuple[int, ...], fs_hz: float) -> tuple[int, ...]:
    return tuple(b for b in bands_hz if band_available(b, fs_hz))


def _filter_fft(x: np.ndarray, fs_hz: float, bands_hz: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """Band signals (bands × len(x) + padding) of the zero-padded ``x``, its spectrum and the FFT length."""
    n_fft = sp_fft.next_fast_len(x.shape[-1] + int(FILTER_TAIL_S * fs_hz), real=True)
    spectrum = sp_fft.rfft(x, n_fft)
    response = _bank_response(float(fs_hz), n_fft, bands_hz)
    return sp_fft.irfft(response * spectrum, n_fft, axis=-1), spectrum, n_fft


def octave_filter(x: np.ndarray, fs_hz: float, band_hz: float) -> np.ndarray:
    """Zero-phase octave-band filtering of a 1-D ``x`` (frequency domain, no wrap-around)."""
    if not band_available(band_hz, fs_hz):
        raise ValueError(unavailable_reason(band_hz, fs_hz))
    x = np.asarray(x, dtype=np.float64)
    return _filter_fft(x, fs_hz, (int(band_hz),))[0][0, : x.size]


def octave_filter_bank(
    x: np.ndarray, fs_hz: float, bands_hz: tuple[int, ...] = OCTAVE_BANDS_HZ
) -> dict[int, np.ndarray]:
    """Zero-phase octave-band signals of a 1-D ``x`` for every available band (unavailable bands omitted)."""
    x = np.asarray(x, dtype=np.float64)
    bands = _available(tuple(bands_hz), fs_hz)
    filtered = _filter_fft(x, fs_hz, bands)[0]
    return {b: filtered[i, : x.size] for i, b in enumerate(bands)}


def octave_band_irs(ir: np.ndarray, fs_hz: float, onset: int) -> dict[int, np.ndarray]:
    """Octave-band IRs starting at ``onset`` (a broadband index), for every available band.

    Zero-phase filtering smears the direct sound symmetrically in time; the band energy that lands
    before the onset is added to the first sample, so early-energy ratios (C50, C80, D50) of the low
    bands are not biased low by cutting it off.
    """
    return band_irs_and_leakage(ir, fs_hz, onset)[0]


def band_irs_and_leakage(
    ir: np.ndarray, fs_hz: float, onset: int
) -> tuple[dict[int, np.ndarray], dict[int, float], dict[int, float]]:
    """`octave_band_irs` and, per band, `leakage_fraction` and `band_tilt_db` of the same IR (one FFT)."""
    lead_n = int(FILTER_LEAD_S * fs_hz)
    lead = max(0, lead_n - onset)
    x = np.asarray(ir, dtype=np.float64)
    padded = np.concatenate((np.zeros(lead), x)) if lead else x
    start = onset + lead
    bands = _available(OCTAVE_BANDS_HZ, fs_hz)
    filtered, spectrum, n_fft = _filter_fft(padded, fs_hz, bands)
    out = {}
    for i, band_hz in enumerate(bands):
        h = filtered[i, start : padded.size]  # a row of the FFT's own output: no copy needed
        pre_energy = float(np.sum(filtered[i, start - lead_n : start] ** 2))
        h[0] = np.copysign(np.sqrt(h[0] ** 2 + pre_energy), h[0])
        out[band_hz] = h
    power = _power(spectrum)
    return out, _leakage(power, fs_hz, n_fft, bands), _tilt_db(power, fs_hz, n_fft, bands)


def band_tilt_db(x: np.ndarray, fs_hz: float, bands_hz: tuple[int, ...] = OCTAVE_BANDS_HZ) -> dict[int, float]:
    """Per band, 10·lg of the signal's mean power density (per Hz) in the upper half-octave [fm, f_hi)
    over the lower one [f_lo, fm).

    0 dB for a white spectrum, −1.5 dB for a pink one (and a room's, whose T changes far less across
    half an octave); a source rolling off at 24 dB/octave inside the band makes it +6 dB or more.
    """
    x = np.asarray(x, dtype=np.float64)
    n_fft = sp_fft.next_fast_len(x.size, real=True)
    return _tilt_db(_power(sp_fft.rfft(x, n_fft)), fs_hz, n_fft, _available(tuple(bands_hz), fs_hz))


def _tilt_db(power: np.ndarray, fs_hz: float, n_fft: int, bands: tuple[int, ...]) -> dict[int, float]:
    """``power``: |X|² of the signal's rfft of length ``n_fft``."""
    freqs_hz = np.fft.rfftfreq(n_fft, 1.0 / fs_hz)
    out = {}
    for band_hz in bands:
        lo_hz, hi_hz = octave_band_edges_hz(band_hz)
        i_lo, i_mid, i_hi = np.searchsorted(freqs_hz, [lo_hz, exact_centre_hz(band_hz), hi_hz])
        lower = float(power[i_lo:i_mid].sum()) / max(1, i_mid - i_lo)
        upper = float(power[i_mid:i_hi].sum()) / max(1, i_hi - i_mid)
        out[band_hz] = float(10.0 * np.log10(upper / lower)) if lower > 0 and upper > 0 else float("inf")
    return out


def leakage_fraction(x: np.ndarray, fs_hz: float, bands_hz: tuple[int, ...] = OCTAVE_BANDS_HZ) -> dict[int, float]:
    """Share of each band's filtered energy that comes from outside its nominal edges (0…1).

    Parseval on the signal's own spectrum X: Σ_out A²|X|² / Σ_all A²|X|². About 0.05 for a flat
    or pink spectrum; near 1 when the band itself holds almost nothing (e.g. below a phone
    loudspeaker's roll-off), where the band's numbers describe its neighbours (ISO 3382-1 §5.3:
    the source must give enough level in every band).
    """
    x = np.asarray(x, dtype=np.float64)
    n_fft = sp_fft.next_fast_len(x.size, real=True)
    return _leakage(_power(sp_fft.rfft(x, n_fft)), fs_hz, n_fft, _available(tuple(bands_hz), fs_hz))


def _leakage(power: np.ndarray, fs_hz: float, n_fft: int, bands: tuple[int, ...]) -> dict[int, float]:
    """``power``: |X|² of the signal's rfft of length ``n_fft``."""
    freqs_hz = np.fft.rfftfreq(n_fft, 1.0 / fs_hz)
    weighted = _bank_power_response(float(fs_hz), n_fft, bands) * power
    out = {}
    for i, band_hz in enumerate(bands):
        # the bins in [lo, hi): one slice of the ascending frequencies
        i_lo, i_hi = np.searchsorted(freqs_hz, octave_band_edges_hz(band_hz))
        total = float(weighted[i].sum())
        inside = float(weighted[i, i_lo:i_hi].sum())
        out[band_hz] = 1.0 - inside / total if total > 0 else 1.0
    return out
