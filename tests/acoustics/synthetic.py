"""Synthetic impulse responses with known decays, for the acoustics tests.

Gaussian decaying noise has energy fluctuations of ±10 % or more in the T estimates of the low octave
bands (a single realisation; ISO 3382-2 Annex A), too much to test a 5 % tolerance. The decays here use
pseudo-random noise instead: a random-phase multisine with lines every 1/``period_s`` Hz, pink (equal power
per octave), split at the octave crossovers into bands, each multiplied by e^(−6.91·t/T_band). Every band's energy
envelope is then exactly exponential (up to a ripple with the period), so T, C_te, D50 and the MTF have
closed forms.
"""

from __future__ import annotations

import numpy as np

from sonalyze.acoustics.bands import OCTAVE_BANDS_HZ, octave_band_edges_hz

LN1000 = 3.0 * np.log(10.0)  # amplitude decays by 60 dB over T: e^(−ln(1000)·t/T)


def _crossovers_hz(fs_hz: float) -> list[float]:
    edges = [octave_band_edges_hz(b) for b in OCTAVE_BANDS_HZ]
    inner = [float(np.sqrt(edges[i][1] * edges[i + 1][0])) for i in range(len(edges) - 1)]
    return [0.0, *inner, fs_hz / 2]


def decaying_multisine(
    rt_s: float | list[float],
    fs_hz: float = 48000,
    duration_s: float = 3.0,
    *,
    seed: int = 0,
    period_s: float = 0.02,
    noise_floor_db: float | None = None,
    pre_delay_s: float = 0.0,
) -> np.ndarray:
    """Decay with reverberation time ``rt_s`` (one value, or one per octave band 125 Hz–8 kHz).

    ``noise_floor_db``: stationary Gaussian noise at this power re the decay's initial power (e.g. −60);
    ``pre_delay_s``: silence (plus that noise) before the decay starts.
    """
    rts = np.broadcast_to(np.asarray(rt_s, dtype=float), (len(OCTAVE_BANDS_HZ),))
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * fs_hz))
    t_s = np.arange(n) / fs_hz
    line_hz = np.arange(1, int(fs_hz / 2 * period_s)) / period_s
    bounds = _crossovers_hz(fs_hz)
    ir = np.zeros(n)
    for i, rt in enumerate(rts):
        freqs = line_hz[(line_hz >= bounds[i]) & (line_hz < bounds[i + 1])]
        if freqs.size == 0:
            continue
        phases = rng.uniform(0.0, 2.0 * np.pi, freqs.size)
        # sum of cosines built over one period and tiled: exact and cheap
        n_period = int(round(period_s * fs_hz))
        tp = np.arange(n_period) / fs_hz
        one = (np.cos(2.0 * np.pi * np.outer(tp, freqs) + phases) / np.sqrt(freqs)).sum(axis=1)
        band = np.resize(one, n)
        ir += band * np.exp(-LN1000 * t_s / rt)
    ir /= np.sqrt(np.mean(ir[: int(period_s * fs_hz)] ** 2))  # initial power 1
    n_pre = int(round(pre_delay_s * fs_hz))
    ir = np.concatenate((np.zeros(n_pre), ir))
    if noise_floor_db is not None:
        ir += rng.standard_normal(ir.size) * np.sqrt(10.0 ** (noise_floor_db / 10.0))
    return ir


def gaussian_decay(rt_s: float, fs_hz: float = 48000, duration_s: float = 3.0, *, seed: int = 0) -> np.ndarray:
    """Exponentially decaying white Gaussian noise (one realisation)."""
    rng = np.random.default_rng(seed)
    t_s = np.arange(int(round(duration_s * fs_hz))) / fs_hz
    return rng.standard_normal(t_s.size) * np.exp(-LN1000 * t_s / rt_s)


def clarity_closed_form_db(rt_s: float, te_s: float) -> float:
    """C_te of a pure exponential energy decay: 10·lg(e^(a·te) − 1), a = 6·ln(10)/T."""
    return float(10.0 * np.log10(np.expm1(2.0 * LN1000 / rt_s * te_s)))


def definition_closed_form(rt_s: float, te_s: float = 0.05) -> float:
    """D_te of a pure exponential energy decay: 1 − e^(−a·te)."""
    return float(-np.expm1(-2.0 * LN1000 / rt_s * te_s))


def sti_mtf_closed_form(rt_s: float, modulation_hz: np.ndarray, snr_db: float = np.inf) -> np.ndarray:
    """Analytic MTF of an exponential decay with noise (Houtgast & Steeneken; IEC 60268-16 Annex)."""
    return (1.0 + (2.0 * np.pi * modulation_hz * rt_s / (2.0 * LN1000)) ** 2) ** -0.5 / (1.0 + 10.0 ** (-snr_db / 10.0))
