"""Speech Transmission Index, indirect method from an impulse response (IEC 60268-16:2020, Ed. 5).

MTF per octave band k (Schroeder 1981): m_k(F) = |Σ h_k²(t)·e^(−j2πFt)| / Σ h_k²(t), 14 modulation
frequencies 0.63–12.5 Hz. Optional corrections: a signal-to-noise ratio per band,
m·1/(1 + 10^(−SNR/10)); with the band levels known, auditory masking by the band below and the
absolute reception threshold, m·I_s/(I_k + I_am + I_rt) (Ed. 4/5 §A.2.2–A.2.3). Then m > 1.3 is an
invalid measurement, m is clipped to ≤ 1, SNR_eff = 10·lg(m/(1−m)) clipped to ±15 dB,
TI = (SNR_eff + 15)/30, MTI_k = mean TI, STI = Σ α_k·MTI_k − Σ β_k·√(MTI_k·MTI_(k+1)) (male weights).

The IR's own measurement noise is not the listener's background noise: with Lundeby truncations the
band energy envelopes are noise-compensated first (noise power subtracted, cut at the crossing, the
exponential tail added back analytically — as for the EDC, Guski & Vorländer 2014). The background
noise and the speech level enter only through ``snr_db`` / ``band_levels_db`` (`method`).
IEC 60268-16 asks for an IR of at least 1.6 s (the period of 0.63 Hz): `length_refusal`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from sonalyze.acoustics import codes
from sonalyze.acoustics.bands import OCTAVE_BANDS_HZ, band_available, octave_band_irs, unavailable_reason
from sonalyze.acoustics.decay import Truncation, block_sums, lundeby_truncation
from sonalyze.acoustics.onset import as_signal, find_onset

MODULATION_FREQUENCIES_HZ = np.array([0.63, 0.8, 1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0, 10.0, 12.5])
ALPHA_MALE = np.array([0.085, 0.127, 0.230, 0.233, 0.309, 0.224, 0.173])
BETA_MALE = np.array([0.085, 0.078, 0.065, 0.011, 0.047, 0.095])
#: Absolute reception threshold per octave band, dB SPL (IEC 60268-16 Ed. 4/5 Table A.2).
THRESHOLD_DB_SPL = np.array([46.0, 27.0, 12.0, 6.5, 7.5, 8.0, 12.0])
#: Energy envelope bin for the MTF sums, s: 1 ms bins change m(12.5 Hz) by < 1e-4.
ENVELOPE_BIN_S = 0.001
MAX_VALID_MTF = 1.3
MIN_IR_LENGTH_S = 1.6
#: A shorter IR counts as complete (zero-padding it changes every m(F) by ≤ 2·share ≈ 0.02, below the
#: STI JND of 0.03) when in every band the extrapolated tail is at most this share of the energy.
MAX_TAIL_SHARE = 0.01
#: `STIResult.method`: the IR alone; with the speech-to-background-noise ratio per band; with
#: level-dependent masking and the reception threshold (absolute levels, via a calibration).
METHOD_IR = "ir"
METHOD_IR_NOISE = "ir+noise"
METHOD_IR_MASKING = "ir+masking"
METHOD_IR_NOISE_MASKING = "ir+noise+masking"
#: Rating letters from the top (IEC 60268-16 Annex F): A+ ≥ 0.76, then 0.04 steps down to J ≥ 0.36.
_RATINGS = ("A+", "A", "B", "C", "D", "E", "F", "G", "H", "I", "J")


@dataclass(frozen=True)
class STIResult:
    """``sti`` (0…1), ``mti`` per band (7), ``mtf`` (7×14, after corrections and clipping), ``rating``,
    ``method`` (`METHOD_IR` …)."""

    sti: float
    mti: np.ndarray
    mtf: np.ndarray
    rating: str
    method: str = METHOD_IR


def modulation_transfer_function(
    band_irs: np.ndarray, fs_hz: float, truncations: list[Truncation] | None = None
) -> np.ndarray:
    """Uncorrected MTF (bands × 14) of octave-band IRs ``(7, n)`` that start at the onset.

    With one Lundeby ``truncations`` entry per band, each band's energy is noise-compensated: noise power
    subtracted up to the crossing, zero after it, and the tail P·q^k (q = e^(−13.8/(T_late·fs))) added
    with its exact transform P·e^(−jωt_c)/(1 − q·e^(−jω/fs)) (`energy_mtf`).
    """
    energy = np.asarray(band_irs, dtype=np.float64) ** 2
    if truncations is None:
        return energy_mtf(list(energy), fs_hz)
    for tr in truncations:
        if not tr.decay_found:
            raise ValueError("an octave band of the impulse response has no decay above the noise floor")
    return energy_mtf([e[: tr.index] - tr.noise_power for e, tr in zip(energy, truncations)], fs_hz, truncations)


def envelope_bin_samples(fs_hz: float) -> int:
    """Samples per bin of the energy envelope the MTF sums (`ENVELOPE_BIN_S`)."""
    return max(1, int(round(ENVELOPE_BIN_S * fs_hz)))


def energy_mtf(energies: list[np.ndarray], fs_hz: float, truncations: list[Truncation] | None = None) -> np.ndarray:
    """`modulation_transfer_function` of the bands' energies h² from the onset — noise subtracted and cut at
    each truncation's crossing when ``truncations`` are given, whose tails are then added."""
    length = envelope_bin_samples(fs_hz)
    return envelope_mtf([block_sums(e, length, pad=True) for e in energies], fs_hz, truncations)


def envelope_mtf(envelopes: list[np.ndarray], fs_hz: float, truncations: list[Truncation] | None = None) -> np.ndarray:
    """`energy_mtf` of the energies already summed over bins of `envelope_bin_samples` (the analysis has them from
    its blocks: `energy.EnergyDecay.binned`)."""
    n_bands = len(envelopes)
    tails = np.zeros((n_bands, MODULATION_FREQUENCIES_HZ.size), dtype=np.complex128)
    tail_totals = np.zeros((n_bands, 1))
    omega = 2.0 * np.pi * MODULATION_FREQUENCIES_HZ / fs_hz
    for k, tr in enumerate(truncations or []):
        if tr.tail_energy > 0 and tr.late_rt_s:
            q = np.exp(-6.0 * np.log(10.0) / (tr.late_rt_s * fs_hz))
            p_cross = tr.tail_energy * (1.0 - q)
            tails[k] = p_cross * np.exp(-1j * omega * tr.index) / (1.0 - q * np.exp(-1j * omega))
            tail_totals[k] = tr.tail_energy
    bin_len = envelope_bin_samples(fs_hz)
    n_bins = max(e.size for e in envelopes)
    envelope = np.zeros((n_bands, n_bins))
    for k, e in enumerate(envelopes):
        envelope[k, : e.size] = e
    kernel = _modulation_kernel(n_bins, bin_len, float(fs_hz))
    total = envelope.sum(axis=-1, keepdims=True) + tail_totals
    if np.any(total <= 0):
        raise ValueError("an octave band of the impulse response has no energy")
    return np.abs(envelope @ kernel + tails) / total


@functools.lru_cache(maxsize=16)
def _modulation_kernel(n_bins: int, bin_len: int, fs_hz: float) -> np.ndarray:
    """e^(−j2πf_m·t) of every envelope bin (rows) and modulation frequency (columns), read-only: the same for
    every band and every RIR of a length (a quarter of the MTF's time when computed each time)."""
    # energy-weighted time of each bin keeps the phase exact for a bin's centre of gravity
    t_s = (np.arange(n_bins) * bin_len + (bin_len - 1) / 2.0) / fs_hz
    kernel = np.exp(-2j * np.pi * np.outer(t_s, MODULATION_FREQUENCIES_HZ))
    kernel.flags.writeable = False
    return kernel


def refusal(duration_s: float, tail_shares: list[float]) -> tuple[str, str] | None:
    """``(code, reason)`` when the noise-compensated band IRs cannot give the STI, else None.

    ``tail_shares``: per band, the Lundeby tail over the band's noise-compensated energy. A tail share
    above `MAX_TAIL_SHARE` could move an m(F) by more than 0.02 (STI JND 0.03): refused, as
    `codes.IR_TOO_SHORT` when the IR is also shorter than IEC 60268-16's 1.6 s (a shorter IR whose
    decay is complete is analysed as if zero-padded, which changes no sum), else as
    `codes.INSUFFICIENT_DYNAMIC_RANGE`.
    """
    worst = max(tail_shares)
    if worst <= MAX_TAIL_SHARE:
        return None
    band_hz = OCTAVE_BANDS_HZ[int(np.argmax(tail_shares))]
    if duration_s < MIN_IR_LENGTH_S:
        return codes.IR_TOO_SHORT, (
            f"impulse response {duration_s:.2f} s after the onset, shorter than the {MIN_IR_LENGTH_S} s of "
            f"IEC 60268-16, and its decay is not complete within it ({100 * worst:.0f} % of the {band_hz} Hz "
            f"band's energy extrapolated below the noise)"
        )
    return codes.INSUFFICIENT_DYNAMIC_RANGE, (
        f"decay observed too briefly above the noise for STI: {100 * worst:.0f} % of the {band_hz} Hz band's "
        f"energy lies below the noise floor (extrapolated), more than {100 * MAX_TAIL_SHARE:g} %"
    )


def _masking_db(level_db: np.ndarray) -> np.ndarray:
    """Masking slope amdB for a band of total level L dB SPL (IEC 60268-16 Ed. 4/5 Table A.1)."""
    return np.select(
        [level_db < 63, level_db < 67, level_db < 100],
        [0.5 * level_db - 65.0, 1.8 * level_db - 146.9, 0.5 * level_db - 59.8],
        -10.0,
    )


def rating(sti: float) -> str:
    """STI qualification band letter (IEC 60268-16 Annex F): U below 0.36, J…A, A+ from 0.76."""
    for i, letter in enumerate(_RATINGS):
        if sti >= 0.76 - 0.04 * i - 1e-12:
            return letter
    return "U"


def sti_method(snr_db: np.ndarray | None, band_levels_db: np.ndarray | None) -> str:
    """The `METHOD_IR` … label for the corrections given."""
    if snr_db is None:
        return METHOD_IR if band_levels_db is None else METHOD_IR_MASKING
    return METHOD_IR_NOISE if band_levels_db is None else METHOD_IR_NOISE_MASKING


def sti_from_mtf(
    mtf: np.ndarray,
    *,
    band_levels_db: np.ndarray | None = None,
    snr_db: np.ndarray | None = None,
) -> STIResult:
    """STI from an uncorrected MTF (7×14), with optional SNR and masking/threshold corrections.

    ``band_levels_db``: speech signal level per octave band, dB SPL (enables masking and threshold);
    ``snr_db``: signal-to-noise ratio per band, dB (noise assumed 0 when absent).
    Raises ValueError when any corrected m exceeds 1.3 (invalid measurement).
    """
    m = np.array(mtf, dtype=np.float64)
    method = sti_method(snr_db, band_levels_db)
    if m.shape != (7, MODULATION_FREQUENCIES_HZ.size):
        raise ValueError(f"mtf must have shape (7, 14), got {m.shape}")
    noise_ratio = np.zeros(7) if snr_db is None else 10.0 ** (-np.broadcast_to(np.asarray(snr_db, float), (7,)) / 10.0)
    if band_levels_db is None:
        m *= (1.0 / (1.0 + noise_ratio))[:, None]
    else:
        i_signal = 10.0 ** (np.broadcast_to(np.asarray(band_levels_db, float), (7,)) / 10.0)
        i_total = i_signal * (1.0 + noise_ratio)
        i_masking = np.zeros(7)
        i_masking[1:] = i_total[:-1] * 10.0 ** (_masking_db(10.0 * np.log10(i_total[:-1])) / 10.0)
        i_threshold = 10.0 ** (THRESHOLD_DB_SPL / 10.0)
        m *= (i_signal / (i_total + i_masking + i_threshold))[:, None]
    if np.any(m > MAX_VALID_MTF):
        raise ValueError(f"modulation transfer value {m.max():.2f} > {MAX_VALID_MTF}: invalid measurement")
    m = np.minimum(m, 1.0)
    with np.errstate(divide="ignore"):
        snr_eff_db = np.clip(10.0 * np.log10(m / (1.0 - m)), -15.0, 15.0)
    mti = ((snr_eff_db + 15.0) / 30.0).mean(axis=1)
    sti = float(np.clip(ALPHA_MALE @ mti - BETA_MALE @ np.sqrt(mti[:-1] * mti[1:]), 0.0, 1.0))
    return STIResult(sti, mti, m, rating(sti), method)


def speech_transmission_index(
    ir: np.ndarray,
    fs_hz: float,
    *,
    band_levels_db: np.ndarray | None = None,
    snr_db: np.ndarray | None = None,
) -> STIResult:
    """STI of a broadband IR (IEC 60268-16 indirect method); any pre-delay before the onset is skipped.

    Octave-band IRs from the ISO 3382-1 onset (`bands.octave_band_irs`, zero phase), noise-compensated
    with each band's Lundeby truncation, then `sti_from_mtf`. Raises ValueError when fs is too low for
    the 8 kHz band or a band shows no decay above its noise (no gates: `refusal` is the report's).
    """
    x = as_signal(ir)
    for band in OCTAVE_BANDS_HZ:
        if not band_available(band, fs_hz):
            raise ValueError(f"STI needs all 7 octave bands; {band} Hz: {unavailable_reason(band, fs_hz)}")
    band_irs = np.stack(list(octave_band_irs(x, fs_hz, find_onset(x)).values()))
    truncations = [lundeby_truncation(h, fs_hz) for h in band_irs]
    return sti_from_mtf(
        modulation_transfer_function(band_irs, fs_hz, truncations), band_levels_db=band_levels_db, snr_db=snr_db
    )
