"""Checks of a sweep recording before its impulse response is trusted; repeated sweeps.

* **Clock** (an exponential sweep maps time to frequency, f₁·(f₂/f₁)^(t/T), Farina 2000): a recording whose
  clock runs at ρ times the sweep's puts frequency f at c + (ρ − 1)·t₀(f) after the reference,
  t₀(f) = T·ln(f/f₁)/ln(f₂/f₁). Three measures (`check_recording`): the sweep's track over the short-time
  spectrum (`track_clock_ppm`, ± `CLOCK_TRACK_ERROR_PPM`: refuses gross mismatches, ``sample_rate_mismatch``
  — a 44.1 kHz recording labelled 48 kHz is −8.1 %); with repeated sweeps their spacing
  (`repetition_clock_ppm`, within a ppm; a spacing the sweep's own clock contradicts is a dropout, and
  the repetition before it is rejected: `_spacing_run`); with one sweep the time-stretch that maximises
  the deconvolved peak (`stretch_clock_ppm`, only when unique, else unknown). Offsets up to
  `MAX_CORRECTED_PPM` are corrected by resampling; beyond, the recording is refused.
* **Impulsive noise** (Farina 2007, "Advancements in impulse response measurements by sine sweeps",
  AES 122nd Convention: an impulse during a sweep spreads over the deconvolved response as a
  time-reversed sweep): the recording minus the sweep convolved with the estimated response, in
  10 ms frames; a frame `IMPULSE_EXCESS_DB` above the running median of that residual (over 1 s) is an
  impulse (door slam, cough, knock) → ``impulsive_noise``.
* **Repeated sweeps** (Farina's "synchronous average", Aurora): the repetitions' responses lie one period
  (sweep + silence after) apart; each is aligned on the first to a fraction of a sample, a repetition with
  an impulse (above) or that disagrees with the median of three or more is rejected, the rest averaged
  (+10·lg M dB of SNR).
* **Truncation** (ISO 3382-1 §5.3.3: the decay must be recorded until it meets the background noise):
  per octave band, a response still falling by more than `STILL_DECAYING_DB` over its last 30 % did not
  reach its noise floor; the energy it misses is extrapolated (exponential tail, as Lundeby et al. 1995
  compensate theirs) and each parameter whose value that missing energy can move by more than about a
  JND is refused with ``truncated_recording``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage, signal, stats

from sonalyze.acoustics.bands import OCTAVE_BANDS_HZ, band_available, octave_band_edges_hz
from sonalyze.acoustics.deconvolution import (
    PRE_ROLL_S,
    STARTS_AFTER_SWEEP,
    deconvolve_recording,
    ir_window,
    median_exceeds,
    starts_after_sweep,
    strongest_peak,
)
from sonalyze.acoustics.sweep import SweepParams, sweep_spectrum

#: Clock offsets up to this are corrected by resampling, beyond it the recording is refused, ppm.
MAX_CORRECTED_PPM = 2000.0
#: Smaller estimated offsets are left alone (below the estimate's own uncertainty), ppm.
MIN_CORRECTED_PPM = 10.0
#: Single-sweep clock (`stretch_clock_ppm`): lowest frequency used (above a phone loudspeaker's resonance,
#: 900 Hz in the phone-chain model, whose group delay biased the estimate by up to 30 ppm from 700 Hz);
#: trial offsets within ±span; margin of the analysed segment beyond the largest shift, s.
STRETCH_LOWEST_HZ = 1500.0
STRETCH_SPAN_PPM = 1.25 * MAX_CORRECTED_PPM
#: Local maxima of the coarse trials refined (the strongest competitors of the best), on an envelope
#: oversampled this many times (the peak sample's jumps from one sample to the next biased the estimate by
#: up to 20 ppm at the segment's own sampling).
STRETCH_CANDIDATES = 6
STRETCH_FINE_OVERSAMPLING = 4
STRETCH_MARGIN_S = 0.01
#: Shortest sweep the estimate is made for: below 2 s its wrong "unique" maxima grew common in the
#: phone-chain rooms (2 of 21 at 1 s); measured from 2 to 5 s (docs/acoustics.md).
STRETCH_MIN_DURATION_S = 2.0
#: The estimate is unique when every other maximum more than this many main lobes away peaks below this share
#: of the best (phone-chain set, 54 recordings, ±1500 ppm: right within 70 ppm at ≤ 0.80, wrong by
#: 120–710 ppm at ≥ 0.94).
STRETCH_LOBES = 3
STRETCH_UNIQUE_RATIO = 0.85
#: A repetitions' spacing is contradicted by the sweep when the sweep re-timed at its offset peaks below this
#: share of the best (phone-chain rooms: true offsets ≥ 0.49 even where a chance peak won; spacings moved by
#: 2–10 ms dropouts 0.16–0.30; a 1 ms dropout, 0.57, passes: it moves the clock by 220 ppm at a 4.5 s period).
STRETCH_CONTRADICTED_RATIO = 0.4
#: Coarse clock track (`track_clock_ppm`): STFT frames and hop, samples at 48 kHz (scaled with the rate);
#: bins from this frequency up to `CLOCK_TRACK_HIGHEST_NYQUIST` of the Nyquist frequency.
CLOCK_TRACK_FRAME_S = 0.02
CLOCK_TRACK_LOWEST_HZ = 2500.0
CLOCK_TRACK_HIGHEST_NYQUIST = 0.8
#: A bin's onset: its power first within this of its maximum, and this far above its median (the noise), dB.
CLOCK_TRACK_BELOW_MAX_DB = 20.0
CLOCK_TRACK_ABOVE_MEDIAN_DB = 10.0
#: Largest error of the coarse track measured on the phone-chain set (rooms 0.2–6 s, SNR 20–60 dB, a
#: pyroomacoustics shoebox; docs/acoustics.md), ppm; beyond `CLOCK_GROSS_PPM` (more than twice that) the
#: recording is refused from the track alone (a 44.1 kHz recording labelled 48 kHz is −81 250 ppm).
CLOCK_TRACK_ERROR_PPM = 13000.0
CLOCK_GROSS_PPM = 30000.0
#: Clock ratios the track may report (12 ↔ 48 kHz mislabelled is 0.25/4); outside, it followed no sweep.
CLOCK_TRACK_PLAUSIBLE = (0.25, 4.0)
#: Largest error of the repetitions' spacing on the phone-chain set (measured ≤ 0.9 ppm: fractional lags
#: of the cross-correlation peak over a 4–10 s period; docs/acoustics.md), ppm. The stretched inverse's
#: scales with its main lobe (`clock_tolerance_ppm`). A recording is refused only when its offset is beyond
#: `MAX_CORRECTED_PPM` by more than its method's tolerance.
REPETITION_TOLERANCE_PPM = 3.0
#: Stretched inverse: measured errors up to 1.5 main lobes (70 ppm for 3 s sweeps, 0.4 lobe for 0.5 s).
STRETCH_TOLERANCE_LOBES = 2.0
CLOCK_UNKNOWN = (
    "not measured: the re-timed deconvolution's peak is not unique (a direct sound weak against the "
    "reverberation) and the "
    "recording holds one sweep; within ±3 % (the sweep's track) and not corrected — record 2–3 sweeps "
    "(sweep_count) to measure and correct it"
)
#: Residual frames and the running-median span they are compared with, s.
RESIDUAL_FRAME_S = 0.01
RESIDUAL_MEDIAN_S = 1.0
#: A residual frame this far above the running median of the residual is an impulse, dB.
IMPULSE_EXCESS_DB = 15.0
#: Repetitions (of 3 or more) whose difference from the median response exceeds this many times the
#: median difference, and −30 dB of the response, are rejected.
DISAGREEMENT_RATIO = 4.0
DISAGREEMENT_FLOOR_DB = -30.0
#: Analysed part of the responses compared between repetitions, s.
AGREEMENT_S = 0.5
#: Over the last `TAIL_FRACTION` of the response, a fall of more than this means the decay is still going.
TAIL_FRACTION = 0.3
STILL_DECAYING_DB = 3.0
BLOCK_S = 0.01
#: Largest missing-energy share (dB re the total) each parameter tolerates: the evaluation range's end
#: −15 dB for the decay times (as ISO 3382-1's dynamic-range rule), ≈ 1 % for the energy ratios
#: (≤ 0.05 in D50, a fraction of a dB in C), less for Ts, whose integrand grows with time.
MISSING_ENERGY_LIMIT_DB = {
    "edt_s": -25.0,
    "t20_s": -40.0,
    "t30_s": -50.0,
    "c50_db": -20.0,
    "c80_db": -20.0,
    "d50": -20.0,
    "drr_db": -20.0,
    "centre_time_s": -25.0,
    "sti": -20.0,
}
#: A zero-filled gap (a phone's buffer underrun, `zero_gaps`): a run of at least this many exact zeros, with both
#: 5 ms neighbours within `GAP_BELOW_LOUDEST_DB` of the recording's loudest 10 ms, and so long that the
#: neighbours' sound would round to zero that long with a chance below `GAP_CHANCE` (quantised audio).
GAP_MIN_SAMPLES = 3
GAP_NEIGHBOUR_S = 0.005
GAP_BELOW_LOUDEST_DB = 30.0
GAP_CHANCE = 1e-12
TRUNCATED = "truncated_recording"
DROPOUT = "dropout"
BROADBAND = "broadband"
STANDARD_RATES_HZ = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)


class RecordingRefused(ValueError):
    """A whole recording that must not be analysed: ``code`` (``sample_rate_mismatch``,
    ``impulsive_noise``), a message for people, and the ``recording`` section found so far."""

    def __init__(self, code: str, message: str, recording: dict[str, Any]):
        super().__init__(message)
        self.code = code
        self.message = message
        self.recording = recording


@dataclass
class RecordingCheck:
    """The averaged impulse response and what the checks found (see `check_recording`)."""

    ir: np.ndarray
    clock_offset_ppm: float | None
    requested: int
    used: list[int]
    rejected: list[int]
    peak_to_noise_db: dict[str, float | None]
    #: metric name → {band key: reason} of the values the recording cannot support
    refused: dict[str, dict[str, str]] = field(default_factory=dict)
    refusals: list[dict[str, str]] = field(default_factory=list)
    clock_method: str | None = None
    clock_reason: str | None = None

    def section(self, *, flags: list[str] | None = None, capture: dict[str, Any] | None = None) -> dict[str, Any]:
        """The report's ``recording`` object (contract C3)."""
        keys = [str(b) for b in OCTAVE_BANDS_HZ]
        return {
            "clock_offset_ppm": _round(self.clock_offset_ppm, 1),
            "clock_offset_method": self.clock_method,
            "clock_offset_reason": self.clock_reason,
            "sweeps": {"requested": self.requested, "used": len(self.used), "rejected": list(self.rejected)},
            "peak_to_noise_db": {
                "bands": [_round(self.peak_to_noise_db.get(k), 2) for k in keys],
                "broadband": _round(self.peak_to_noise_db.get(BROADBAND), 2),
            },
            "flags": list(flags or []),
            "capture": capture,
            "refusals": list(self.refusals),
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def empty_section(requested: int, clock_offset_ppm: float | None = None) -> dict[str, Any]:
    """A ``recording`` section for a recording refused before its response was known."""
    return RecordingCheck(np.zeros(0), clock_offset_ppm, requested, [], [], {}).section()


# -- clock ---------------------------------------------------------------------------------------


def _stretch_power(spectrum: np.ndarray, phase: np.ndarray, n_fft: int, ppm: np.ndarray) -> np.ndarray:
    """Peak power of the deconvolved segment (``spectrum``: its FFT's used bins) re-timed for each trial
    offset of the uniform grid ``ppm``: the bins turned by e^(j·ppm·``phase``), the rest zero, shifted down
    to baseband (|·| unchanged) and read over ``n_fft`` envelope samples (the segment's own sampling, or
    fewer)."""
    step = (np.exp(1j * (ppm[1] - ppm[0]) * phase) if ppm.size > 1 else np.ones_like(phase)).astype(np.complex64)
    rows = np.empty((ppm.size, spectrum.size), dtype=np.complex64)  # single precision: peaks compared to 1 %
    rows[0] = spectrum * np.exp(1j * ppm[0] * phase)
    for i in range(1, ppm.size):  # a uniform grid: one complex multiply per trial, not an exp
        rows[i] = rows[i - 1] * step
    return np.max(np.abs(sp_fft.ifft(rows, n_fft, axis=1, norm="forward", workers=1)), axis=1) ** 2


@dataclass(frozen=True)
class StretchClock:
    """`stretch_clock_ppm`'s result: the offset (None when not unique) and how far the best trial stands out."""

    ppm: float | None
    best_ppm: float
    second_ratio: float
    """Peak power of the strongest other trial (more than `STRETCH_LOBES` main lobes away) re the best's."""
    power_ratio: Callable[[float], float] = field(default=lambda ppm: 1.0, repr=False, compare=False)
    """Peak power of the trials within half a main lobe of an offset, re the best's (1 when not measured)."""


def _stretch_lobe_ppm(params: SweepParams) -> float:
    """Main-lobe width of `stretch_clock_ppm`'s trials: the offset whose delay spread over the bins used is
    one period of their bandwidth, ppm (≈ 48 ppm for a 3 s sweep over 20 Hz–20 kHz, ∝ 1/T)."""
    top_hz = min(params.f_end_hz, 0.45 * params.fs_hz)
    rate_s = params.duration_s / math.log(params.f_end_hz / params.f_start_hz)
    return 1e6 / (rate_s * math.log(top_hz / STRETCH_LOWEST_HZ) * (top_hz - STRETCH_LOWEST_HZ))


def clock_tolerance_ppm(method: str, params: SweepParams) -> float:
    """Largest error of a clock method (``repetition_spacing`` or ``stretched_inverse``) for ``params``' sweep, ppm."""
    if method == "repetition_spacing":
        return REPETITION_TOLERANCE_PPM
    return STRETCH_TOLERANCE_LOBES * _stretch_lobe_ppm(params)


def stretch_clock_ppm(h_all: np.ndarray, onset: int, params: SweepParams) -> StretchClock:
    """How fast the recording's clock runs against the sweep's, ppm (+: more samples per sweep second),
    from the recording deconvolved with the labelled sweep (``h_all``, the first sweep's response starting at
    ``onset``: its ISO 3382-1 onset, the direct sound).

    A recording at ρ = 1 + δ times the sweep's rate delays frequency f by δ·t₀(f), t₀(f) = L·ln(f/f₁),
    L = T/ln(f₂/f₁) (Farina 2000): the deconvolution's phase is off by −2π·δ·L·f·(ln(f/f₁) − 1). Each trial δ
    turns it back (a time-stretched inverse, in the frequency domain) and the peak of the re-timed response's
    envelope is read; the true δ re-aligns the direct sound and maximises it (the deconvolved-peak sharpness
    of REW-style timing references). Bins from `STRETCH_LOWEST_HZ` (above a phone loudspeaker's resonance,
    whose own group delay biases the peak) to 0.45·fs. Trials every half main lobe over ±`STRETCH_SPAN_PPM`
    on a 2× oversampled baseband envelope, then the `STRETCH_CANDIDATES` strongest local maxima every 1/10
    lobe on a `STRETCH_FINE_OVERSAMPLING`× oversampled one, parabolic. The estimate is used only when every other maximum more
    than `STRETCH_LOBES` main lobes away peaks below `STRETCH_UNIQUE_RATIO` of it (in rooms whose direct
    sound is weak against the reverberation, the tail's own peaks compete: not unique, None).
    The segment re-timed is centred on the onset, not on the strongest peak: in such rooms that peak is a
    reflection up to 19 ms later (phone-chain 0.3 s room), which put the direct sound at or past the
    segment's end and let the tail win (4 wrong estimates in 120 generated recordings, none since).
    """
    fs_hz = params.fs_hz
    if params.duration_s < STRETCH_MIN_DURATION_S:
        return StretchClock(None, 0.0, 1.0)
    half = int((STRETCH_SPAN_PPM * 1e-6 * params.duration_s + STRETCH_MARGIN_S) * fs_hz)
    segment = np.take(h_all, np.arange(onset - half, onset + half), mode="wrap")
    n_fft = sp_fft.next_fast_len(segment.size)
    f_hz = sp_fft.fftfreq(n_fft, 1.0 / fs_hz)
    top_hz = min(params.f_end_hz, 0.45 * fs_hz)
    bins = np.flatnonzero((f_hz >= STRETCH_LOWEST_HZ) & (f_hz < top_hz))
    if bins.size < 16:
        return StretchClock(None, 0.0, 1.0)
    spectrum = sp_fft.fft(segment, n_fft, workers=1)[bins]
    rate_s = params.duration_s / math.log(params.f_end_hz / params.f_start_hz)
    phase = 2e-6 * math.pi * rate_s * f_hz[bins] * (np.log(f_hz[bins] / params.f_start_hz) - 1.0)
    lobe_ppm = _stretch_lobe_ppm(params)
    coarse = np.arange(-STRETCH_SPAN_PPM, STRETCH_SPAN_PPM + lobe_ppm / 4, lobe_ppm / 2)
    power = _stretch_power(spectrum, phase, sp_fft.next_fast_len(2 * bins.size), coarse)
    maxima = signal.argrelmax(np.concatenate(([0.0], power, [0.0])))[0] - 1
    maxima = maxima[np.argsort(power[maxima])[::-1][:STRETCH_CANDIDATES]] if maxima.size else [int(np.argmax(power))]

    def fine_power_near(ppm: float) -> tuple[np.ndarray, np.ndarray]:
        fine = ppm + np.linspace(-lobe_ppm / 2, lobe_ppm / 2, 11)
        return fine, _stretch_power(spectrum, phase, STRETCH_FINE_OVERSAMPLING * n_fft, fine)

    refined = []
    for i in maxima:
        fine, fine_power = fine_power_near(float(coarse[i]))
        j = int(np.argmax(fine_power))
        offset = 0.0
        if 0 < j < fine.size - 1:
            a, b, c = np.log(fine_power[j - 1 : j + 2])
            denominator = a - 2 * b + c
            offset = 0.5 * (a - c) / denominator if denominator < 0 else 0.0
        refined.append((float(fine_power[j]), float(fine[j] + offset * (fine[1] - fine[0]))))
    best_power, best_ppm = max(refined)
    if not best_power > 0:
        return StretchClock(None, best_ppm, 1.0)
    far = STRETCH_LOBES * lobe_ppm
    others = [p for p, ppm in refined if abs(ppm - best_ppm) > far] + list(power[np.abs(coarse - best_ppm) > far])
    second = float(max(others, default=0.0)) / best_power
    return StretchClock(
        best_ppm if second < STRETCH_UNIQUE_RATIO else None, best_ppm, second,
        lambda ppm: float(fine_power_near(ppm)[1].max()) / best_power,
    )


def track_clock_ppm(x: np.ndarray, params: SweepParams) -> float | None:
    """Coarse clock offset (ppm, ± `CLOCK_TRACK_ERROR_PPM`) from when the sweep reaches each frequency.

    The exponential sweep reaches f at t₀(f) = L·ln(f/f₁), L = T/ln(f₂/f₁) (Farina 2000); read at the
    labelled rate, a recording whose clock runs ρ times the sweep's shows it at c + ρ·L·ln f′ (f′ = f/ρ:
    the constant joins c), so the slope of the onset time against ln f′ is ρ·L whatever the start. Per
    STFT bin the onset is the first frame within `CLOCK_TRACK_BELOW_MAX_DB` of the bin's maximum and
    `CLOCK_TRACK_ABOVE_MEDIAN_DB` above its median (interpolated in dB between frames): nothing reaches a
    bin before the sweep does — reverberation and the −30 dB harmonics of lower frequencies come later or
    stay below — so a room cannot pull the onset early, only its build-up late (a few ms, about the same
    in every bin). Bins from `CLOCK_TRACK_LOWEST_HZ` up, where the sweep crosses a bin within a fraction of
    a frame (below, the onset lags the bin centre by a frequency-dependent share of the crossing).
    Theil–Sen slope over ≤ 200 bins. None when the recording is shorter than a frame, no bin qualifies, or
    the clock ratio is outside `CLOCK_TRACK_PLAUSIBLE` (a door slam during the sweep reaches every bin at
    once: slope ≈ 0; measured ρ ≈ −0.1…0 on the phone-chain set).
    """
    fs_hz = params.fs_hz
    frame = 1 << max(6, math.ceil(math.log2(CLOCK_TRACK_FRAME_S * fs_hz)))
    hop = frame // 4
    if x.size < 4 * frame:
        return None
    rate_s = params.duration_s / math.log(params.f_end_hz / params.f_start_hz)
    f_hz = sp_fft.rfftfreq(frame, 1.0 / fs_hz)
    top_hz = min(CLOCK_TRACK_HIGHEST_NYQUIST * fs_hz / 2, params.f_end_hz / math.exp(params.fade_s / rate_s))
    bins = np.flatnonzero((f_hz >= CLOCK_TRACK_LOWEST_HZ) & (f_hz <= top_hz))
    if bins.size < 8:
        return None
    # single precision for the short-time spectra (half the memory traffic; onsets 10–20 dB up are far above
    # its rounding), double from the powers on
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float32), frame)[::hop]
    spectra = sp_fft.rfft(frames * np.hanning(frame).astype(np.float32), axis=1, workers=1)[:, bins[0] : bins[-1] + 1]
    power = (spectra.real**2 + spectra.imag**2).astype(np.float64) + 1e-300
    # max(the −20 dB point, 10 dB above the median): the median only where it can win (noisy bins)
    threshold = power.max(axis=0) * 10 ** (-CLOCK_TRACK_BELOW_MAX_DB / 10)
    noisy = median_exceeds(power, 10 ** (CLOCK_TRACK_ABOVE_MEDIAN_DB / 10), threshold)
    threshold[noisy] = np.median(power[:, noisy], axis=0) * 10 ** (CLOCK_TRACK_ABOVE_MEDIAN_DB / 10)
    first = np.argmax(power >= threshold, axis=0)
    columns = np.arange(bins.size)
    before = np.maximum(first - 1, 0)
    level_before, level_at = 10 * np.log10(power[before, columns]), 10 * np.log10(power[first, columns])
    rise = level_at - level_before
    fraction = np.where((first > 0) & (rise > 0), (10 * np.log10(threshold) - level_before) / np.where(rise > 0, rise, 1.0), 1.0)
    onset_samples = (before + fraction) * hop + frame / 2
    pick = np.arange(0, bins.size, max(1, bins.size // 200))
    ln_f = np.log(f_hz[bins][pick])
    fit = stats.theilslopes(onset_samples[pick], ln_f)
    rho = fit.slope / (rate_s * fs_hz)
    if not CLOCK_TRACK_PLAUSIBLE[0] <= rho <= CLOCK_TRACK_PLAUSIBLE[1]:
        return None  # the onsets do not follow a sweep (an impulse reached the bins first: all at once)
    return float((rho - 1.0) * 1e6)


def correct_clock(x: np.ndarray, ppm: float) -> np.ndarray:
    """Resample a recording whose clock runs ``ppm`` fast so that it runs at the sweep's rate
    (polyphase, ratio approximated within 0.1 ppm)."""
    ratio = Fraction(1.0 / (1.0 + ppm * 1e-6)).limit_denominator(4000)
    return signal.resample_poly(x, ratio.numerator, ratio.denominator)


def _mismatch_message(ppm: float, declared_fs_hz: float) -> str:
    true_hz = declared_fs_hz * (1.0 + ppm * 1e-6)
    message = (
        f"the recording's clock differs from the sweep's by {ppm / 1e4:+.2f} % ({ppm:+.0f} ppm), beyond the "
        f"±{MAX_CORRECTED_PPM:.0f} ppm that can be corrected"
    )
    guess = min(STANDARD_RATES_HZ, key=lambda rate: abs(rate / true_hz - 1.0))
    if abs(guess / true_hz - 1.0) < 0.015 and guess != declared_fs_hz:
        message += f": this looks like {guess} Hz audio labelled {declared_fs_hz:.0f} Hz"
    return message + "; record again and send the file at the rate it was recorded"


# -- zero-filled gaps -------------------------------------------------------------------------------


def zero_gaps(x: np.ndarray, fs_hz: float) -> list[tuple[int, int]]:
    """``(start, length)`` in samples of each gap of zeros a phone wrote where it lost audio (a buffer
    underrun): a run of exact zeros whose 5 ms before and after both hold a power within `GAP_BELOW_LOUDEST_DB` of
    the recording's loudest 10 ms (digital silence before or after the sound is not a gap), at least
    `GAP_MIN_SAMPLES` long and longer than such sound rounds to zero by chance. With q the smallest non-zero
    magnitude (the quantisation step of 16-bit audio; ≈ 0 for float audio) and σ the quieter neighbour's rms, a
    noisy sample is zero with a chance p ≈ q/(σ·√(2π)), m in a row p^m (kept below `GAP_CHANCE`), and a smooth
    one crosses zero over ≈ q/|Δx| samples (3× that is needed)."""
    zero = x == 0.0
    if np.count_nonzero(zero) < GAP_MIN_SAMPLES:
        return []
    edges = np.diff(np.concatenate(([0], zero.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    block = max(1, int(BLOCK_S * fs_hz))
    n_blocks = x.size // block
    loudest = float(np.max(np.mean(x[: n_blocks * block].reshape(n_blocks, block) ** 2, axis=1))) if n_blocks else 0.0
    floor = loudest * 10 ** (-GAP_BELOW_LOUDEST_DB / 10)
    side = max(2, int(GAP_NEIGHBOUR_S * fs_hz))
    step = float(np.min(np.abs(x[~zero]))) if np.any(~zero) else 0.0
    gaps = []
    for a, b in zip(starts.tolist(), stops.tolist()):
        if b - a < GAP_MIN_SAMPLES or a < side or b + side > x.size:
            continue
        before, after = x[a - side : a], x[b : b + side]
        power = min(float(np.mean(before**2)), float(np.mean(after**2)))
        if power < floor:
            continue
        chance = step / math.sqrt(2 * math.pi * power)
        by_chance = math.log(GAP_CHANCE) / math.log(chance) if chance < 1 else math.inf
        crossing = 3 * step / max(float(np.mean(np.abs(np.diff(before)))), float(np.mean(np.abs(np.diff(after)))), 1e-300)
        if b - a >= max(by_chance, crossing):
            gaps.append((a, b - a))
    return gaps


def _gap_message(gaps: list[tuple[int, int]], fs_hz: float, repetitions: list[int], requested: int) -> str:
    where = ", ".join(f"{1000 * n / fs_hz:.2f} ms at {a / fs_hz:.3f} s" for a, n in gaps)
    which = f" of repetition {', '.join(str(k + 1) for k in repetitions)}" if requested > 1 else ""
    return (
        f"the recording has {'a gap' if len(gaps) == 1 else f'{len(gaps)} gaps'} of zeros during the sweep{which} "
        f"({where}): the phone lost audio there (a buffer "
        "underrun); such a gap looks like an impulsive noise to the response and shifts the clock estimate"
        + ("; that repetition is rejected" if requested > 1 else "")
        + " — close other apps and record again"
    )


# -- impulsive noise -------------------------------------------------------------------------------


def impulse_excess_db(x: np.ndarray, h: np.ndarray, start: int, params: SweepParams) -> float:
    """Largest excess (dB) of a 10 ms frame of the residual x − sweep ⊛ h over the residual's running
    median, during the sweep that begins at ``start`` (the lag of ``h[0]``), fades excluded."""
    fs_hz = params.fs_hz
    n_sweep = params.sweep_length_samples
    n_fft = sp_fft.next_fast_len(n_sweep + h.size - 1, real=True)  # sweep ⊛ h, linear (no wrap)
    predicted = sp_fft.irfft(sweep_spectrum(params, n_fft) * sp_fft.rfft(h, n_fft), n_fft)[:n_sweep]
    residual = x[start : start + n_sweep] - predicted[: max(0, min(n_sweep, x.size - start))]
    fade = int(round(params.fade_s * fs_hz))
    residual = residual[fade : residual.size - fade]
    frame = max(1, int(RESIDUAL_FRAME_S * fs_hz))
    n_frames = residual.size // frame
    if n_frames < 5:
        return 0.0
    power = np.mean(residual[: n_frames * frame].reshape(n_frames, frame) ** 2, axis=1)
    level_db = 10.0 * np.log10(power + 1e-30)
    width = max(3, int(RESIDUAL_MEDIAN_S / RESIDUAL_FRAME_S) | 1)
    baseline_db = ndimage.median_filter(level_db, size=width, mode="nearest")
    return float(np.max(level_db - baseline_db))


# -- repetitions ------------------------------------------------------------------------------------


def _fractional_lag(reference: np.ndarray, other: np.ndarray) -> float:
    """Lag (samples, sub-sample by parabolic interpolation) of ``other`` behind ``reference``."""
    n = sp_fft.next_fast_len(2 * reference.size, real=True)
    corr = sp_fft.irfft(sp_fft.rfft(other, n) * np.conj(sp_fft.rfft(reference, n)), n)
    corr = np.concatenate((corr[-reference.size :], corr[: reference.size]))
    i = int(np.argmax(corr))
    offset = 0.0
    if 0 < i < corr.size - 1:
        a, b, c = corr[i - 1 : i + 2]
        denominator = a - 2 * b + c
        offset = 0.5 * (a - c) / denominator if denominator < 0 else 0.0
    return i + offset - reference.size


def _shift(h: np.ndarray, lag: float) -> np.ndarray:
    """``h`` advanced by ``lag`` samples (FFT phase ramp on a zero-padded copy)."""
    n = sp_fft.next_fast_len(h.size + int(abs(lag)) + 64, real=True)
    f = sp_fft.rfftfreq(n)
    return sp_fft.irfft(sp_fft.rfft(h, n) * np.exp(2j * np.pi * f * lag), n)[: h.size]


def _first_repetition(energy: np.ndarray, strongest: int, period: int, count: int, search: int) -> int:
    """Lag of the first repetition's impulse: among the strongest impulses (one of them may be an
    impulsive noise's, not a repetition's), the one whose series a period apart is the loudest (median)."""
    peaks, _ = signal.find_peaks(energy, distance=max(1, period // 4))
    candidates = {strongest, *peaks[np.argsort(energy[peaks])[::-1][: 2 * count + 2]].tolist()}
    best, best_level = strongest, -1.0
    for candidate in candidates:
        for rank in range(count):
            first = candidate - rank * period
            if first - search < 0:
                continue
            levels = [
                float(energy[p - search : p + search + 1].max()) if p + search < energy.size else 0.0
                for p in (first + k * period for k in range(count))
            ]
            level = float(np.median(levels))
            located = first - search + int(np.argmax(energy[first - search : first + search + 1]))
            if level > best_level or (level == best_level and located < best):  # a tie: the earlier series
                best, best_level = located, level
    return best


# -- truncation -------------------------------------------------------------------------------------


def _band_signals(ir: np.ndarray, fs_hz: float) -> dict[str, np.ndarray]:
    """Octave-band parts of ``ir`` by an FFT-domain mask (levels only; the report's filter bank gives
    the metrics), and the broadband IR."""
    n = sp_fft.next_fast_len(ir.size, real=True)
    f_hz = sp_fft.rfftfreq(n, 1.0 / fs_hz)
    keys, masks = [], []
    for band in OCTAVE_BANDS_HZ:
        if band_available(band, fs_hz):
            low_hz, high_hz = octave_band_edges_hz(band)
            keys.append(str(band))
            masks.append((f_hz >= low_hz) & (f_hz < high_hz))
    signals = sp_fft.irfft(sp_fft.rfft(ir, n) * np.array(masks), n, axis=1)[:, : ir.size]  # one batched inverse
    out = dict(zip(keys, signals))
    out[BROADBAND] = ir
    return out


@dataclass(frozen=True)
class TailCheck:
    peak_to_noise_db: float
    still_decaying: bool
    missing_db: float
    """Energy after the response's end (extrapolated) re the total, dB; −∞ when the decay ended."""


def tail_check(h: np.ndarray, fs_hz: float) -> TailCheck:
    """Peak (10 ms) over the level of the response's last 10 %, and whether its decay is still going at
    the end (module docstring) with the share of energy it misses."""
    block = max(1, int(BLOCK_S * fs_hz))
    n_blocks = h.size // block
    power = np.mean(h[: n_blocks * block].reshape(n_blocks, block) ** 2, axis=1) + 1e-300
    level_db = 10.0 * np.log10(power)
    end_power = float(np.mean(power[int(n_blocks * 0.9) :]))
    peak_to_noise_db = 10.0 * math.log10(float(power.max()) / end_power)
    n_tail = max(3, int(n_blocks * TAIL_FRACTION))
    t_s = (np.arange(n_blocks - n_tail, n_blocks) + 0.5) * block / fs_hz
    slope_db_s, intercept_db = np.polyfit(t_s, level_db[-n_tail:], 1)
    fall_db = -slope_db_s * (t_s[-1] - t_s[0])
    if fall_db <= STILL_DECAYING_DB:
        return TailCheck(peak_to_noise_db, False, -math.inf)
    end_level = 10.0 ** ((intercept_db + slope_db_s * h.size / fs_hz) / 10.0)  # power per sample
    missing = end_level * fs_hz * 10.0 / (math.log(10.0) * -slope_db_s)  # ∫ of the exponential tail, in Σh²
    total = float(np.sum(h**2)) + missing
    return TailCheck(peak_to_noise_db, True, 10.0 * math.log10(missing / total))


# -- the whole check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clock:
    """The clock offset used (ppm, None when unknown), how it was measured, and why it is unknown."""

    ppm: float | None
    method: str | None
    reason: str | None = None


def repetition_clock_ppm(lags: dict[int, float], period: int) -> float | None:
    """Clock offset (ppm) from where repetitions landed: ``lags[k]`` samples after ``k`` periods behind
    the first (the synchronous average's own alignment, Farina): the least-squares slope of lag against
    k·period (Theil–Sen with three or more: one disturbed repetition cannot move it). Independent of the room and the loudspeaker (the same response repeats), to a fraction of a
    ppm over a period of seconds. None with fewer than two repetitions."""
    if len(lags) < 2:
        return None
    k = np.asarray(sorted(lags), dtype=float)
    lag = np.asarray([lags[int(i)] for i in k])
    slope = (lag[1] - lag[0]) / period if k.size == 2 else stats.theilslopes(lag, k * period).slope  # a slammed one
    return float(slope * 1e6)


def _spacing_run(lags: dict[int, float], stretch: StretchClock, params: SweepParams) -> tuple[list[int], list[int]]:
    """The repetitions whose spacing measures the clock, and those rejected for a break in it.

    Consecutive repetitions k, k+1 lie one period apart at the recording's clock; a spacing whose offset
    the sweep itself contradicts — the single-sweep estimate (`stretch_clock_ppm`) unique and more than
    both methods' tolerances away, and the sweep re-timed at the spacing's offset peaking below
    `STRETCH_CONTRADICTED_RATIO` of its best (a unique estimate can still be a tail's chance peak in a room
    whose direct sound is weak, with the true offset close behind) — means samples were lost or added between them (a
    dropout, a buffer glitch): that spacing is no clock, and repetition k, whose sweep or decay the break
    fell into, is rejected. Returns the longest run of repetitions without a break (all of them when
    nothing can be checked) and the rejected ones."""
    indices = sorted(lags)
    if stretch.ppm is None or len(indices) < 2:
        return indices, []
    period = params.period_samples
    tolerance = clock_tolerance_ppm("stretched_inverse", params) + REPETITION_TOLERANCE_PPM
    broken = []
    for k, following in zip(indices, indices[1:]):
        spacing_ppm = (lags[following] - lags[k]) / (following - k) / period * 1e6
        if abs(spacing_ppm - stretch.ppm) > tolerance and stretch.power_ratio(spacing_ppm) < STRETCH_CONTRADICTED_RATIO:
            broken.append(k)
    runs, current = [], [indices[0]]
    for k in indices[1:]:
        if current[-1] in broken:
            runs.append(current)
            current = []
        current.append(k)
    runs.append(current)
    return max(runs, key=len), broken


def _dropout_message(broken: list[int], lags: dict[int, float], stretch_ppm: float | None, period: int) -> str:
    pairs = ", ".join(
        f"{k + 1}→{k + 2}: {(lags[k + 1] - lags[k]) / period * 1e6:+.0f} ppm" for k in broken if k + 1 in lags
    )
    return (
        f"the repetitions are not one period apart ({pairs}; the sweep itself runs {stretch_ppm:+.0f} ppm): the "
        "recording lost or gained samples between them (a dropout); the repetition before each break is "
        "rejected and the clock is not taken from that spacing — close other apps and record again"
    )


def _responses(
    x: np.ndarray, params: SweepParams, ir_length_s: float | None
) -> tuple[np.ndarray, int, int, list[int], list[np.ndarray], dict[int, float], int]:
    """Deconvolution of ``x`` and its repetitions: ``(h_all, peak, onset, starts, irs, lags, n_ir)`` — the
    first repetition's strongest peak and ISO 3382-1 onset, each repetition's response window, aligned on
    the first to a fraction of a sample, and that alignment's lag (samples) per repetition index."""
    h_all = deconvolve_recording(x, params)
    peak = strongest_peak(h_all, x.size, params, check_start=False)  # an impulse is told first
    period = params.period_samples
    requested = int(params.sweep_count)
    if requested > 1:
        peak = _first_repetition(h_all[: x.size] ** 2, peak, period, requested, int(0.005 * params.fs_hz))
    start, n_ir = ir_window(h_all, x.size, params, peak, ir_length_s)
    starts = [start + k * period for k in range(requested)]
    starts = [s for s in starts if s + params.sweep_length_samples + n_ir <= x.size]  # repetitions held whole
    irs = [h_all[s : s + n_ir] for s in starts]
    compare = min(n_ir, int(AGREEMENT_S * params.fs_hz))
    lags = {0: 0.0} if len(irs) > 1 else {}
    for k in range(1, len(irs)):
        lags[k] = _fractional_lag(irs[0][:compare], irs[k][:compare])
        irs[k] = _shift(irs[k], lags[k])
    return h_all, peak, start + int(round(PRE_ROLL_S * params.fs_hz)), starts, irs, lags, n_ir


def check_recording(
    x: np.ndarray,
    params: SweepParams,
    *,
    ir_length_s: float | None = None,
    declared_fs_hz: float | None = None,
) -> RecordingCheck:
    """Clock, repetitions, impulsive noise and truncation of a 1-D recording of ``params``' sweep(s).

    Returns the (averaged) impulse response and the findings; raises `RecordingRefused` for a clock
    beyond `MAX_CORRECTED_PPM` or when every repetition holds an impulse, and ValueError (from the
    deconvolution) when no sweep is found or the recording is cut inside the sweep.
    """
    params.validate()
    requested = int(params.sweep_count)
    declared_hz = declared_fs_hz or params.fs_hz
    coarse = track_clock_ppm(x, params)
    if coarse is not None and abs(coarse) > CLOCK_GROSS_PPM:
        raise RecordingRefused("sample_rate_mismatch", _mismatch_message(coarse, declared_hz), empty_section(requested, coarse))
    h_all, peak, onset, starts, irs, lags, n_ir = _responses(x, params, ir_length_s)
    gaps = zero_gaps(x, params.fs_hz)
    # a gap in a sweep (a gap in the decay after it moved no value by more than 0.01 %: docs/acoustics.md)
    gapped = {k: [g for g in gaps if s <= g[0] < s + params.sweep_length_samples] for k, s in enumerate(starts)}
    gapped = {k: found for k, found in gapped.items() if found}
    if gapped and len(gapped) == len(starts):
        message = _gap_message([g for found in gapped.values() for g in found], params.fs_hz, sorted(gapped), requested)
        section = empty_section(requested)
        section["sweeps"]["rejected"] = sorted(gapped)
        raise RecordingRefused(DROPOUT, message, section)
    stretch = StretchClock(None, 0.0, 1.0)
    for k in range(len(irs)):  # the first repetition without a gap; a glitch in it: the next one's own clock
        if stretch.ppm is None and k not in gapped:
            stretch = stretch_clock_ppm(h_all, onset + k * params.period_samples + int(round(lags.get(k, 0.0))), params)
    run, broken = _spacing_run(lags, stretch, params)
    spacing = repetition_clock_ppm({k: lags[k] for k in run}, params.period_samples)
    if spacing is not None:
        clock = Clock(spacing, "repetition_spacing")
    elif stretch.ppm is not None:
        clock = Clock(stretch.ppm, "stretched_inverse")
    else:
        clock = Clock(None, None, CLOCK_UNKNOWN)
    if clock.ppm is not None and abs(clock.ppm) - clock_tolerance_ppm(clock.method, params) > MAX_CORRECTED_PPM:
        raise RecordingRefused("sample_rate_mismatch", _mismatch_message(clock.ppm, declared_hz), empty_section(requested, clock.ppm))
    if clock.ppm is not None and abs(clock.ppm) >= MIN_CORRECTED_PPM:
        x = correct_clock(x, clock.ppm)
        h_all, peak, onset, starts, irs, lags, n_ir = _responses(x, params, ir_length_s)
    ppm = clock.ppm
    compare = min(n_ir, int(AGREEMENT_S * params.fs_hz))
    rejected = [
        k for k, (s, h) in enumerate(zip(starts, irs))
        if k in broken or k in gapped or impulse_excess_db(x, h, s, params) > IMPULSE_EXCESS_DB
    ]
    kept = [k for k in range(len(irs)) if k not in rejected]
    if len(kept) >= 3:
        stack = np.stack([irs[k][:compare] for k in kept])
        median = np.median(stack, axis=0)
        reference = float(np.sum(median**2))
        differences = np.sum((stack - median) ** 2, axis=1)
        typical = float(np.median(differences))
        for k, difference in zip(list(kept), differences):
            if difference > DISAGREEMENT_RATIO * typical and difference > reference * 10 ** (DISAGREEMENT_FLOOR_DB / 10):
                rejected.append(k)
                kept.remove(k)
    rejected.sort()
    if not kept:
        section = empty_section(requested, ppm)
        section["sweeps"]["rejected"] = rejected
        message = (
            "an impulsive noise (a knock, a door, a cough) happened during the sweep"
            + (" in every repetition" if requested > 1 else "")
            + ": it would spread over the whole impulse response; record again in quiet"
        )
        raise RecordingRefused("impulsive_noise", message, section)
    if starts_after_sweep(h_all, x.size, peak, params):
        raise ValueError(STARTS_AFTER_SWEEP)
    ir = np.mean([irs[k] for k in kept], axis=0)
    check = RecordingCheck(ir, ppm, requested, kept, rejected, {}, clock_method=clock.method, clock_reason=clock.reason)
    if broken:
        check.refusals.append({"code": DROPOUT, "message": _dropout_message(broken, lags, stretch.ppm, params.period_samples)})
    if gapped:
        message = _gap_message([g for found in gapped.values() for g in found], params.fs_hz, sorted(gapped), requested)
        check.refusals.append({"code": DROPOUT, "message": message})
    _truncation(check, params.fs_hz)
    return check


def _truncation(check: RecordingCheck, fs_hz: float) -> None:
    """Fill ``peak_to_noise_db`` and the ``truncated_recording`` refusals of ``check``."""
    cut: dict[str, float] = {}
    for key, h in _band_signals(check.ir, fs_hz).items():
        tail = tail_check(h, fs_hz)
        check.peak_to_noise_db[key] = tail.peak_to_noise_db
        if tail.still_decaying:
            cut[key] = tail.missing_db
    refused_names = []
    for name, limit_db in MISSING_ENERGY_LIMIT_DB.items():
        keys = {key: missing for key, missing in cut.items() if missing > limit_db}
        if keys:
            refused_names.append(name)
            check.refused[name] = {
                key: (
                    f"the recording ends {check.ir.size / fs_hz:.2f} s after the onset, before the decay reaches "
                    f"its noise floor: {-missing:.0f} dB of the energy is missing, {name} needs more than "
                    f"{-limit_db:.0f} dB"
                )
                for key, missing in keys.items()
            }
    if refused_names:
        bands = sorted({key for name in refused_names for key in check.refused[name]}, key=_band_order)
        check.refusals.append(
            {
                "code": TRUNCATED,
                "message": (
                    f"the recording ends before the decay reaches its noise floor ({', '.join(bands)}): "
                    f"{', '.join(refused_names)} refused where the missing tail would change them; leave more "
                    "silence after the sweep and keep recording until the sound has died away"
                ),
            }
        )


def _band_order(key: str) -> int:
    return int(key) if key.isdigit() else 10**6


def _null(metric: dict[str, Any], key: str, reason: str) -> None:
    """Null ``metric``'s value at ``key`` (a band or ``broadband``) with ``reason``, code
    ``truncated_recording``; a value already null keeps its own reason."""
    if key == BROADBAND:
        if metric["broadband"] is None:
            return
        metric["broadband"] = None
    else:
        index = [str(b) for b in OCTAVE_BANDS_HZ].index(key)
        if metric["bands"][index] is None:
            return
        metric["bands"][index] = None
    metric["reasons"][key] = reason
    metric.setdefault("codes", {})[key] = TRUNCATED


def apply_refusals(report: dict[str, Any], check: RecordingCheck) -> None:
    """Null, with reason and code ``truncated_recording``, every value of ``report`` that ``check``
    refused (metric objects per band key, the curvature with T20/T30, ``sti`` as a whole)."""
    for name, keys in check.refused.items():
        if name == "sti":
            sti = report.get("sti")
            if sti is not None and sti.get("value") is not None:
                sti.update(value=None, rating=None, reason=next(iter(keys.values())), code=TRUNCATED)
            continue
        for key, reason in keys.items():
            if name in report:
                _null(report[name], key, reason)
            if name in ("t20_s", "t30_s") and "curvature_percent" in report:
                _null(report["curvature_percent"], key, "needs valid T20 and T30")
