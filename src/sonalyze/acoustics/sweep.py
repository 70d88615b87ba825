"""Exponential sine sweep and its regularised inverse (Farina 2000; ISO 18233:2006 Annex B).

x(t) = A·sin[2π f₁ L (e^(t/L) − 1)], L = T / ln(f₂/f₁), instantaneous frequency f₁·(f₂/f₁)^(t/T).
The inverse is the regularised spectral division G = X* / (|X|² + ε(f)) (Kirkeby & Nelson 1999), ε small
inside [f₁, f₂] and large outside, which
gives a flat (unit) in-band gain where Farina's time-reversed, +6 dB/octave-weighted sweep only
approximates it; the N-th harmonic still lands T·ln(N)/ln(f₂/f₁) *before* the linear response.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft

#: Regularisation ε relative to max |X(f)|²: 60 dB below the sweep's peak power density. An exponential
#: sweep over 3 decades spans 30 dB, so the in-band gain error stays below 1e-3 (0.004 dB).
REGULARISATION_RELATIVE = 1e-6
#: Regularisation outside [f₁, f₂] re max |X|²: the sweep carries no energy there, so whatever the
#: recording holds there (rumble, the DC of even-order distortion) is suppressed instead of amplified.
OUT_OF_BAND_REGULARISATION = 0.01
#: Most repetitions of the sweep in one played signal.
MAX_SWEEP_COUNT = 5
#: Width of the transition from in-band to out-of-band regularisation, octaves (outside the sweep band).
TRANSITION_OCTAVES = 1.0


@dataclass(frozen=True)
class SweepParams:
    """Everything needed to generate and to deconvolve an exponential sweep.

    The played signal is ``silence_before_s`` of zeros, then ``sweep_count`` times the faded sweep of
    ``duration_s`` followed by ``silence_after_s`` of zeros (room for the decay; repetitions are averaged
    synchronously, Farina's "synchronous average"). ``level_dbfs`` is the sweep's peak amplitude in dB re
    full scale; ``fade_s`` is the half-Hann fade-in and fade-out length.
    """

    fs_hz: int = 48000
    f_start_hz: float = 20.0
    f_end_hz: float = 20000.0
    duration_s: float = 5.0
    silence_before_s: float = 0.5
    silence_after_s: float = 2.0
    level_dbfs: float = -6.0
    fade_s: float = 0.05
    sweep_count: int = 1

    def validate(self) -> SweepParams:
        """Raise ValueError with a clear message when the parameters cannot describe a sweep."""
        if int(self.fs_hz) != self.fs_hz or self.fs_hz < 8000:
            raise ValueError(f"fs_hz must be an integer ≥ 8000 Hz, got {self.fs_hz}")
        if not 0.0 < self.f_start_hz < self.f_end_hz:
            raise ValueError(
                f"need 0 < f_start_hz < f_end_hz, got f_start_hz={self.f_start_hz}, f_end_hz={self.f_end_hz}"
            )
        if self.f_end_hz > self.fs_hz / 2:
            raise ValueError(
                f"f_end_hz={self.f_end_hz} Hz exceeds the Nyquist frequency fs_hz/2={self.fs_hz / 2} Hz"
            )
        if not 0.1 <= self.duration_s <= 60.0:
            raise ValueError(f"duration_s must be within 0.1–60 s, got {self.duration_s}")
        if self.silence_before_s < 0 or self.silence_after_s < 0:
            raise ValueError("silence_before_s and silence_after_s must be ≥ 0 s")
        if self.level_dbfs > 0:
            raise ValueError(f"level_dbfs must be ≤ 0 dBFS, got {self.level_dbfs}")
        if not 0.0 <= self.fade_s <= self.duration_s / 4:
            raise ValueError(f"fade_s must be within 0–duration_s/4 = {self.duration_s / 4} s, got {self.fade_s}")
        if int(self.sweep_count) != self.sweep_count or not 1 <= self.sweep_count <= MAX_SWEEP_COUNT:
            raise ValueError(f"sweep_count must be an integer within 1–{MAX_SWEEP_COUNT}, got {self.sweep_count}")
        return self

    @property
    def sweep_start_s(self) -> float:
        """Time of the sweep's first sample in the played signal, s."""
        return self.silence_before_samples / self.fs_hz

    @property
    def silence_before_samples(self) -> int:
        return int(round(self.silence_before_s * self.fs_hz))

    @property
    def sweep_length_samples(self) -> int:
        return int(round(self.duration_s * self.fs_hz))

    @property
    def period_samples(self) -> int:
        """Distance from one repetition's start to the next: the sweep plus ``silence_after_s``."""
        return self.sweep_length_samples + int(round(self.silence_after_s * self.fs_hz))

    @property
    def total_samples(self) -> int:
        return self.silence_before_samples + int(self.sweep_count) * self.period_samples

    @property
    def total_duration_s(self) -> float:
        """Length of the full signal to play (silences included), s."""
        return self.total_samples / self.fs_hz

    def harmonic_advance_s(self, order: int) -> float:
        """How far before the linear IR the response of harmonic ``order`` lands, s (Farina 2000)."""
        return self.duration_s * np.log(order) / np.log(self.f_end_hz / self.f_start_hz)


@functools.lru_cache(maxsize=8)
def sweep_samples(params: SweepParams) -> np.ndarray:
    """The faded sweep alone (no silences), float64, read-only (cached)."""
    params.validate()
    n = params.sweep_length_samples
    t_s = np.arange(n) / params.fs_hz
    rate = params.duration_s / np.log(params.f_end_hz / params.f_start_hz)
    phase = 2.0 * np.pi * params.f_start_hz * rate * np.expm1(t_s / rate)
    x = 10.0 ** (params.level_dbfs / 20.0) * np.sin(phase)
    n_fade = int(round(params.fade_s * params.fs_hz))
    if n_fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n_fade) + 0.5) / n_fade)
        x[:n_fade] *= ramp
        x[-n_fade:] *= ramp[::-1]
    x.flags.writeable = False
    return x


def exponential_sweep(params: SweepParams) -> np.ndarray:
    """The full signal to play: silence, then ``sweep_count`` × (faded sweep, silence) (float64, peak
    ``level_dbfs``)."""
    out = np.zeros(params.validate().total_samples)
    for index in range(int(params.sweep_count)):
        start = params.silence_before_samples + index * params.period_samples
        out[start : start + params.sweep_length_samples] = sweep_samples(params)
    return out


@functools.lru_cache(maxsize=8)
def sweep_spectrum(params: SweepParams, n_fft: int) -> np.ndarray:
    """rfft of the faded sweep on an ``n_fft``-point grid, read-only (cached: the deconvolution's inverse and
    the recording checks' sweep ⊛ response use the same few sizes)."""
    spectrum = sp_fft.rfft(sweep_samples(params), n_fft)
    spectrum.flags.writeable = False
    return spectrum


@functools.lru_cache(maxsize=8)
def inverse_spectrum(params: SweepParams, n_fft: int) -> np.ndarray:
    """Regularised inverse G = X*/(|X|² + ε) of the sweep on an ``n_fft``-point rfft grid (cached).

    Multiplying a recording's spectrum by G deconvolves it: the linear IR appears at the sweep's start
    in the recording, harmonic responses before it.
    """
    x_spec = sweep_spectrum(params, n_fft)
    power = x_spec.real**2 + x_spec.imag**2
    f_hz = sp_fft.rfftfreq(n_fft, 1.0 / params.fs_hz)
    with np.errstate(divide="ignore"):
        octaves = np.log2(np.maximum(f_hz, 1e-3))
    # 0 inside [f₁, f₂] → 1 outside, raised cosine over TRANSITION_OCTAVES just outside each edge
    below = np.clip((np.log2(params.f_start_hz) - octaves) / TRANSITION_OCTAVES, 0.0, 1.0)
    above = np.clip((octaves - np.log2(params.f_end_hz)) / TRANSITION_OCTAVES, 0.0, 1.0)
    outside = 0.5 - 0.5 * np.cos(np.pi * np.maximum(below, above))
    eps = power.max() * (REGULARISATION_RELATIVE + OUT_OF_BAND_REGULARISATION * outside)
    g = np.conj(x_spec) / (power + eps)
    g.flags.writeable = False
    return g


def inverse_filter(params: SweepParams) -> np.ndarray:
    """Time-domain regularised inverse filter of the sweep (float64).

    ``np.convolve(sweep_alone, inverse_filter(params))`` is a unit-gain band-limited pulse at index
    ``sweep_length_samples − 1`` (as with Farina's time-reversed inverse). Same spectrum as
    `deconvolve_sweep` uses, so the two agree exactly.
    """
    n_sweep = params.validate().sweep_length_samples
    n_fft = sp_fft.next_fast_len(2 * n_sweep, real=True)
    g = sp_fft.irfft(inverse_spectrum(params, n_fft), n_fft)
    return np.roll(g, n_sweep - 1)
