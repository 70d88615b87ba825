"""Schroeder decay curve with noise compensation and reverberation times (ISO 3382-1/-2).

* Schroeder (1965) backward integration E(t) = ∫_t^∞ h²(τ) dτ, in dB re E(0).
* Noise: Lundeby, Vigran, Bietz & Vorländer (1995), "Uncertainties of measurements in room acoustics",
  Acustica 81: find where the decay meets the noise floor — blocks scaled to the decay (10–50 ms,
  5 per 10 dB of the noise-subtracted Schroeder curve's first 10 dB; down to 1 ms for decays faster
  than that), noise from 10 dB of decay past the crossing but at least the
  last 10 %, then 5 blocks per 10 dB and a regression over 20 dB ending 5 dB above the noise on block
  levels with the noise power subtracted, until the crossing moves < 10 ms. Where no decay above the
  noise is found, there is nothing to integrate (``decay_found`` False: never integrate raw noise).
  The EDC subtracts the noise power before integrating (Chu 1978), integrates up to the Lundeby
  crossing and adds the missing tail C = P(t_c)·T_late/(6 ln 10): the combination recommended by
  Guski & Vorländer, "Comparison of noise compensation methods for room acoustic impulse response
  evaluations", Acta Acustica united with Acustica 100 (2014).
* T = −60 dB / slope of a least-squares line over an evaluation range of the EDC (ISO 3382-1 §A.2.3):
  EDT 0 → −10 dB, T20 −5 → −25 dB, T30 −5 → −35 dB. A value needs a dynamic range (peak to noise)
  of at least the evaluation range + 15 dB (ISO 3382-1 §5.3.3 / ISO 3382-2 §7.4).
* Fit quality (ISO 3382-2:2008 Annex B): correlation r, non-linearity ξ = 1000·(1 − r²) ‰; T20 and T30
  with ξ > 10 ‰ are refused (a curved decay has no single T); curvature C = 100·(T30/T20 − 1) %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sonalyze.acoustics import codes
from sonalyze.acoustics.onset import as_signal

#: Decay (dB) per s for a reverberation time of 1 s: 60 dB.
_LN10_6 = 6.0 * math.log(10.0)
#: Lundeby's first averaging blocks, s: scaled to the decay within the paper's 10–50 ms.
INITIAL_BLOCK_MIN_S = 0.01
INITIAL_BLOCK_MAX_S = 0.05
#: Shortest first block, for decays that fall 10 dB within 50 ms, s.
FASTEST_BLOCK_S = 0.001
BLOCKS_PER_10DB = 5
NOISE_TAIL_FRACTION = 0.1
CONVERGENCE_S = 0.01
MAX_ITERATIONS = 10
#: Running-mean window for the "peak" of the dynamic range, s.
PEAK_WINDOW_S = 0.01
#: Evaluation ranges (dB re the EDC start) of the ISO 3382-1 parameters.
EDT_RANGE_DB = (0.0, -10.0)
T20_RANGE_DB = (-5.0, -25.0)
T30_RANGE_DB = (-5.0, -35.0)
#: Extra dynamic range needed below the evaluation range, dB (ISO 3382-1).
DYNAMIC_RANGE_MARGIN_DB = 15.0
#: ISO 3382-2:2008 Annex B.2: ξ above 10 ‰ marks a decay too curved for one reverberation time.
NONLINEARITY_LIMIT_PERMILLE = 10.0
#: ISO 3382-2 Annex B.3: curvature above 10 % suggests a double-slope decay (reported, not refused).
CURVATURE_LIMIT_PERCENT = 10.0


@dataclass(frozen=True)
class Truncation:
    """Where a decay meets its noise floor (Lundeby 1995).

    ``index``: first sample not integrated; ``noise_power``: mean h² of the noise (same unit as h²);
    ``dynamic_range_db``: peak of the 10 ms running-mean energy over the noise power (∞ when
    noise-free); ``late_rt_s``: reverberation time of the late decay (None when not found);
    ``tail_energy``: energy (Σh², unit sample) of the truncated tail added back; ``decay_found``:
    False when no decay above the noise floor was found (nothing may be computed from it).
    """

    index: int
    noise_power: float
    dynamic_range_db: float
    late_rt_s: float | None
    tail_energy: float
    decay_found: bool = True


def _block_levels_db(energy: np.ndarray, block: int, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean energy per block minus ``noise`` (in dB, −∞ at or below it) and block centre times in samples."""
    n_blocks = energy.size // block
    means = energy[: n_blocks * block].reshape(n_blocks, block).sum(axis=1) / block - noise  # = mean, without its overhead
    centres = (np.arange(n_blocks) + 0.5) * block
    level_db = np.full(n_blocks, -np.inf)  # (no np.errstate: entering it costs more than the logarithms)
    positive = means > 0.0
    level_db[positive] = 10.0 * np.log10(means[positive])
    return centres, level_db


def _backward_integral(energy: np.ndarray, noise: float = 0.0) -> np.ndarray:
    """Σ_{j ≥ i} (energy[j] − noise) for every i (Schroeder's backward integration, Chu's noise subtracted).

    Written into a contiguous reversed copy and summed there: numpy's cumsum over a reversed (negative
    stride) view is 2–3× slower; the additions and their order, hence every value, are the same.
    """
    reversed_energy = np.subtract(energy[::-1], noise)
    return np.cumsum(reversed_energy, out=reversed_energy)[::-1]


def _first_at_or_below(values_of, size: int, level: float, start: int = 0) -> int | None:
    """Index i ≥ ``start`` of the first value ≤ ``level`` (NaN never is) of a sequence of ``size`` values
    that ``values_of(a, b)`` gives for [a, b); None when there is none.

    Reads chunks that double in length: a decay curve crosses its upper levels early, and a comparison
    over the whole curve (the ``argmax`` of a full mask) would cost a pass per level for one index.
    """
    chunk = 4096
    while start < size:
        stop = min(size, start + chunk)
        hits = values_of(start, stop) <= level
        first = int(hits.argmax())
        if hits[first]:
            return start + first
        start, chunk = stop, 2 * chunk
    return None


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares slope, intercept and correlation coefficient of y(x)."""
    # Σ/n is what ndarray.mean computes (the same sum and division), without its Python overhead (≈ 4 µs a call)
    x_mean = float(x.sum()) / x.size
    y_mean = float(y.sum()) / y.size
    xm = x - x_mean
    ym = y - y_mean
    # sums of products, not BLAS dot products: OpenBLAS hands a long 1-D product to a second thread and
    # waits for it, 16 ms instead of 0.05 ms when the other core is busy (a caller that has not limited
    # BLAS to one thread, e.g. the simulation engine in process)
    sxx = float((xm * xm).sum())
    syy = float((ym * ym).sum())
    sxy = float((xm * ym).sum())
    slope = sxy / sxx
    r = sxy / math.sqrt(sxx * syy) if syy > 0 else 1.0
    return slope, y_mean - slope * x_mean, r


def _decay_fit(
    centres: np.ndarray, level_db: np.ndarray, top_db: float, bottom_db: float
) -> tuple[float, float] | None:
    """Slope (dB/sample) and intercept of the blocks from the first below ``top_db`` to the first below
    ``bottom_db`` after the maximum; None when fewer than 2 blocks."""
    start = int(np.argmax(level_db))
    after = level_db[start:]
    i0 = start + int(np.argmax(after <= top_db)) if top_db < after[0] else start
    below = level_db[i0:] < bottom_db
    i1 = i0 + (int(np.argmax(below)) if below.any() else below.size)
    if i1 - i0 < 2:
        return None
    slope, intercept, _ = _line_fit(centres[i0:i1], level_db[i0:i1])
    return (slope, intercept) if slope < 0 else None


def lundeby_truncation(ir: np.ndarray, fs_hz: float) -> Truncation:
    """Truncation point, noise power and tail compensation of an IR's decay (Lundeby et al. 1995).

    ``ir`` starts at the onset (t = 0). When no decay above the noise can be found the truncation is the
    whole IR with no tail (so the Schroeder curve is plain) and ``late_rt_s`` is None.
    """
    return truncation_of_energy(as_signal(ir) ** 2, fs_hz)


def truncation_of_energy(energy: np.ndarray, fs_hz: float) -> Truncation:
    """`lundeby_truncation` of an IR's squared samples h² (float64, finite; the analysis squares a band once
    for this, the Schroeder curve and the energy parameters)."""
    n = energy.size
    peak_block = max(1, int(PEAK_WINDOW_S * fs_hz))
    csum = np.empty(n + 1)  # Σ energy[:i]
    csum[0] = 0.0
    np.cumsum(energy, out=csum[1:])
    peak_power = float((csum[peak_block:] - csum[:-peak_block]).max() / peak_block) if n >= peak_block else energy.mean()
    tail_start = int(n * (1.0 - NOISE_TAIL_FRACTION))
    noise = float(energy[tail_start:].sum()) / (n - tail_start)
    if noise <= 0.0:
        return Truncation(n, 0.0, math.inf, None, 0.0)

    def result(index: int, noise_power: float, slope: float | None, intercept: float | None) -> Truncation:
        dr_db = 10.0 * math.log10(peak_power / noise_power) if noise_power > 0 else math.inf
        if slope is None:
            return Truncation(n, noise_power, dr_db, None, 0.0, decay_found=False)
        rate = -slope * fs_hz  # dB/s
        p_cross = 10.0 ** ((intercept + slope * index) / 10.0)
        tail = p_cross * (60.0 / rate) * fs_hz / _LN10_6
        return Truncation(index, noise_power, dr_db, 60.0 / rate, tail)

    block = _initial_block(csum, fs_hz, noise)
    centres, level_db = _block_levels_db(energy, block)
    noise_db = 10.0 * math.log10(noise)
    if level_db.size < 3:
        return result(n, noise, None, None)
    fit = _decay_fit(centres, level_db, level_db.max(), noise_db + 10.0)
    if fit is None:
        return result(n, noise, None, None)
    slope, intercept = fit
    cross = min((noise_db - intercept) / slope, n)
    for _ in range(MAX_ITERATIONS):
        noise_from = int(min(cross + 10.0 / -slope, tail_start))
        noise_new = float(energy[noise_from:].sum()) / (n - noise_from) if noise_from < n else noise
        if noise_new <= 0.0:  # digital silence after the decay: noise-free, nothing to truncate
            return Truncation(n, 0.0, math.inf, None, 0.0)
        noise_db = 10.0 * math.log10(noise_new)
        block = max(1, int(10.0 / -slope / BLOCKS_PER_10DB))
        centres, level_db = _block_levels_db(energy, block, noise_new)
        if level_db.size < 3:
            break
        new_fit = _decay_fit(centres, level_db, noise_db + 25.0, noise_db + 5.0)
        if new_fit is None:
            break
        slope, intercept = new_fit
        noise = noise_new
        new_cross = min((noise_db - intercept) / slope, n)
        moved = abs(new_cross - cross)
        cross = new_cross
        if moved < CONVERGENCE_S * fs_hz:
            break
    index = int(np.clip(round(cross), 1, n))
    return result(index, noise, slope, intercept)


def _initial_block(csum: np.ndarray, fs_hz: float, noise: float) -> int:
    """Lundeby's first block length, scaled to the decay: 1/5 of the time the noise-subtracted
    Schroeder curve (Chu) takes to fall 10 dB, within Lundeby's 10–50 ms; a decay that falls 10 dB in
    less than 50 ms (T < 0.3 s, which a 10 ms block would swallow) gets that 1/5 down to 1 ms.
    ``csum``: the energy's cumulative sum with a leading 0 (the curve is read from it, no second pass)."""
    n = csum.size - 1

    def edc(a: int, b: int) -> np.ndarray:
        return (csum[-1] - csum[a:b]) - noise * np.arange(n - a, n - b, -1)

    t10 = _first_at_or_below(edc, n, edc(0, 1)[0] * 0.1)
    t10_s = (n if t10 is None else t10) / fs_hz
    low_s = INITIAL_BLOCK_MIN_S if t10_s >= BLOCKS_PER_10DB * INITIAL_BLOCK_MIN_S else FASTEST_BLOCK_S
    return max(1, int(np.clip(t10_s / BLOCKS_PER_10DB, low_s, INITIAL_BLOCK_MAX_S) * fs_hz))


def schroeder_curve_db(ir: np.ndarray, fs_hz: float, truncation: Truncation | None = None) -> np.ndarray:
    """Energy decay curve in dB re its start (Schroeder 1965), same length as ``ir``.

    With a ``truncation`` (from `lundeby_truncation`), subtracts its noise power (Chu), integrates up
    to ``truncation.index``, adds ``truncation.tail_energy`` and returns NaN after the truncation (and
    where the noise-subtracted integral is not positive); without one, integrates the raw IR to its
    end (only right for a noise-free IR). ``ir`` starts at the onset. Raises ValueError when the
    truncation found no decay above the noise.
    """
    return curve_db_of_energy(as_signal(ir) ** 2, truncation)


def curve_db_of_energy(energy: np.ndarray, truncation: Truncation | None = None) -> np.ndarray:
    """`schroeder_curve_db` of an IR's squared samples h² (float64, finite)."""
    if truncation is not None and not truncation.decay_found:
        raise ValueError("no decay above the noise floor: the decay curve is undefined")
    end = energy.size if truncation is None else truncation.index
    tail = 0.0 if truncation is None else truncation.tail_energy
    noise = 0.0 if truncation is None else truncation.noise_power
    edc = _backward_integral(energy[:end], noise) + tail
    if not edc[0] > 0:
        raise ValueError("no energy above the noise floor")
    curve_db = np.full(energy.size, np.nan)  # NaN after the truncation and where the integral is not positive
    np.divide(edc, edc[0], out=edc)
    np.log10(edc, out=curve_db[:end], where=edc > 0)
    curve_db[:end] *= 10.0
    return curve_db


@dataclass(frozen=True)
class DecayFit:
    """A reverberation time from a line fit on the EDC.

    ``rt_s``: −60/slope in s, None when the EDC never spans the range; ``correlation``: Pearson r of
    the fit; ``nonlinearity_permille``: ξ = 1000·(1 − r²) (ISO 3382-2 Annex B.2); ``valid``: False
    when the value must not be reported, with ``reason`` (text) and ``code`` (`codes`).
    """

    rt_s: float | None
    correlation: float | None
    valid: bool
    reason: str | None
    code: str | None = None
    nonlinearity_permille: float | None = None


def reverberation_time(
    edc_db: np.ndarray,
    fs_hz: float,
    range_db: tuple[float, float] = T30_RANGE_DB,
    *,
    dynamic_range_db: float | None = None,
    max_nonlinearity_permille: float | None = NONLINEARITY_LIMIT_PERMILLE,
) -> DecayFit:
    """Reverberation time from the EDC over ``range_db`` (ISO 3382-1 §A.2.3): T = −60 dB / slope.

    ``range_db=(0, -10)`` gives EDT, ``(-5, -25)`` T20, ``(-5, -35)`` T30. With ``dynamic_range_db``
    (e.g. `Truncation.dynamic_range_db`), the value is flagged invalid when it is below the span of
    the range + 15 dB (ISO 3382-1 §5.3.3). T20 and T30 (ranges starting below 0 dB) are flagged
    invalid when ξ > ``max_nonlinearity_permille`` (10 ‰, ISO 3382-2 Annex B.2; None: reported only);
    EDT, which includes the direct sound's bend, is not.
    """
    top_db, bottom_db = range_db
    name = {EDT_RANGE_DB: "EDT", T20_RANGE_DB: "T20", T30_RANGE_DB: "T30"}.get(tuple(range_db), "T")
    edc = np.asarray(edc_db, dtype=np.float64)

    def curve(a: int, b: int) -> np.ndarray:
        return edc[a:b]

    i0 = _first_at_or_below(curve, edc.size, top_db)
    # the first point ≤ bottom_db lies at or after the first ≤ top_db (every earlier one is > top_db or NaN)
    i_bottom = None if i0 is None else _first_at_or_below(curve, edc.size, bottom_db, i0)
    if not math.isfinite(edc[0]) or i_bottom is None:
        reason = f"decay curve does not reach {bottom_db:g} dB for {name} (it ends at the noise floor)"
        return DecayFit(None, None, False, reason, codes.INSUFFICIENT_DYNAMIC_RANGE)
    i1 = i_bottom + 1
    if i1 - i0 < 3:
        reason = f"too few samples between {top_db:g} and {bottom_db:g} dB"
        return DecayFit(None, None, False, reason, codes.INSUFFICIENT_DYNAMIC_RANGE)
    t = np.arange(i0, i1) / fs_hz
    slope, _, r = _line_fit(t, edc[i0:i1])
    xi = 1000.0 * (1.0 - r * r)
    if slope >= 0:
        return DecayFit(None, r, False, "decay curve is not decaying", codes.NO_DECAY_ABOVE_NOISE, xi)
    rt_s = -60.0 / slope
    needed_db = top_db - bottom_db + DYNAMIC_RANGE_MARGIN_DB
    if dynamic_range_db is not None and dynamic_range_db < needed_db:
        reason = f"dynamic range {dynamic_range_db:.0f} dB < {needed_db:.0f} dB needed for {name}"
        return DecayFit(rt_s, r, False, reason, codes.INSUFFICIENT_DYNAMIC_RANGE, xi)
    if top_db < 0.0 and max_nonlinearity_permille is not None and xi > max_nonlinearity_permille:
        reason = f"decay not straight: non-linearity ξ {xi:.1f} ‰ > {max_nonlinearity_permille:g} ‰ for {name}"
        return DecayFit(rt_s, r, False, reason, codes.NONLINEAR_DECAY, xi)
    return DecayFit(rt_s, r, True, None, None, xi)
