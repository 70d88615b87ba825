"""Schroeder decay curve with noise compensation and reverberation times (ISO 3382-1/-2).

* Schroeder (1965) backward integration E(t) = ∫_t^∞ h²(τ) dτ, in dB re E(0).
* Noise: Lundeby, Vigran, Bietz & Vorländer (1995), "Uncertainties of measurements in room acoustics",
  Acustica 81, on the energy in 1 ms bins: find where the decay meets the noise floor — blocks scaled to the decay (10–50 ms,
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
* Blocks (`BandEnergy`): a low octave band changes slowly at a high sampling rate, so its h² is summed over
  blocks of M samples (`bands.block_factor`) and Lundeby and the Schroeder curve run on the block sums, whose
  backward sums are the full-rate curve's values at every M-th sample exactly; values between (a fit's range
  ends, the plotted points) come from the full-rate h² of one block (`DecayCurve.db_at`), and a fit's sums
  between its block-aligned ends from the grid by the Euler–Maclaurin-corrected trapezoidal rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
#: Lundeby's method runs on the energy in bins of this length, s (its blocks, peak window, noise stretch and
#: crossing are whole bins): the same bins from a full-rate band and from one analysed in blocks.
LUNDEBY_GRID_S = 0.001
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


def block_sums(values: np.ndarray, length: int, *, pad: bool = False) -> np.ndarray:
    """Sums of ``values`` over consecutive blocks of ``length``; a last partial block is dropped, or with ``pad``
    summed as it is."""
    if length == 1:
        return values
    n_blocks = -(-values.size // length) if pad else values.size // length
    if pad and values.size % length:
        padded = np.zeros(n_blocks * length)
        padded[: values.size] = values
        values = padded
    rows = values[: n_blocks * length].reshape(n_blocks, length)
    if length > 16:
        return rows.sum(axis=1)
    out = rows[:, 0].copy()  # a short row's sum costs numpy more per row than per value: add the columns
    for k in range(1, length):
        out += rows[:, k]
    return out


@dataclass(frozen=True)
class BandEnergy:
    """An IR's squared samples h² (``energy``, float64, from the onset) and their sums over blocks of ``factor``
    samples (``blocks``; h² itself when ``factor`` is 1). The decay analysis runs on the blocks and reads the
    full-rate h² only inside a block; the last partial block (under ``factor`` samples at the IR's end) is
    left out."""

    energy: np.ndarray
    blocks: np.ndarray
    factor: int = 1

    @classmethod
    def of_ir(cls, ir: np.ndarray, factor: int = 1) -> BandEnergy:
        energy = ir * ir  # squared once for the truncation, the curve and the energy parameters
        return cls(energy, block_sums(energy, factor), factor)


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
    """Truncation point, noise power and tail compensation of an IR's decay (Lundeby et al. 1995), on the
    IR's energy in 1 ms bins (`truncation_of_band`).

    ``ir`` starts at the onset (t = 0). When no decay above the noise can be found the truncation is the
    whole IR with no tail (so the Schroeder curve is plain) and ``late_rt_s`` is None.
    """
    return truncation_of_band(BandEnergy.of_ir(as_signal(ir)), fs_hz)


def truncation_of_energy(energy: np.ndarray, fs_hz: float) -> Truncation:
    """Lundeby's method on a sequence of energies (float64, finite) at ``fs_hz``: in units of its samples."""
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


def grid_samples(fs_hz: float) -> int:
    """Samples per bin of Lundeby's grid (`LUNDEBY_GRID_S`)."""
    return max(1, int(round(LUNDEBY_GRID_S * fs_hz)))


def truncation_of_band(band: BandEnergy, fs_hz: float) -> Truncation:
    """`lundeby_truncation` of a band's h² (`BandEnergy`; its block factor must divide `grid_samples`): Lundeby's
    method on the energy summed over 1 ms bins (`LUNDEBY_GRID_S`; the same bins from any block factor), in
    full-rate units: index a multiple of the bin (or the band's length when noise-free), noise power per sample."""
    per_bin = grid_samples(fs_hz)
    if per_bin % band.factor:
        raise ValueError(f"block factor {band.factor} does not divide Lundeby's bin of {per_bin} samples")
    bins = block_sums(band.blocks, per_bin // band.factor)
    if bins.size == 0:  # under a millisecond: nothing to truncate
        return Truncation(band.blocks.size * band.factor, 0.0, math.inf, None, 0.0)
    truncation = truncation_of_energy(bins, fs_hz / per_bin)
    index = truncation.index * per_bin if truncation.index < bins.size else band.blocks.size * band.factor
    return replace(truncation, index=index, noise_power=truncation.noise_power / per_bin)


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
    return decay_curve(BandEnergy(energy, energy), truncation).db


@dataclass(frozen=True)
class DecayCurve:
    """A Schroeder curve (`decay_curve`): ``db`` at samples 0, M, 2M, … (M = ``band.factor``), NaN after the
    truncation and where the noise-subtracted integral is not positive; ``edc``: E/E(0) there up to the
    truncation, ``tail`` the tail's share; ``db_at`` gives any sample's value."""

    db: np.ndarray
    band: BandEnergy
    edc: np.ndarray
    e0: float
    noise_power: float
    tail: float

    @property
    def factor(self) -> int:
        return self.band.factor

    def db_at(self, index: np.ndarray) -> np.ndarray:
        """The curve at full-rate samples ``index`` (an int array): the next grid point's E plus the h² (noise
        subtracted) from the sample up to it; NaN after the truncation."""
        m = self.factor
        index = np.asarray(index)
        if m == 1:
            return self.db[index]
        end = self.edc.size * m
        inside = index < end
        j = np.where(inside, index, 0)
        grid = -(-j // m)  # the next grid point (the sample itself when on the grid)
        offsets = j[:, None] + np.arange(m - 1)
        partial = np.where(offsets < (grid * m)[:, None], self.band.energy[np.minimum(offsets, end - 1)] - self.noise_power, 0.0)
        return self._db(np.where(grid < self.edc.size, self.edc[np.minimum(grid, self.edc.size - 1)], self.tail)
                        + partial.sum(axis=1) / self.e0, inside)

    def db_range(self, start: int, stop: int) -> np.ndarray:
        """The curve at the full-rate samples ``start`` … ``stop`` − 1 (≤ the truncation): the next grid point's E
        plus a backward sum of the h² (noise subtracted) up to it."""
        m = self.factor
        if m == 1:
            return self.db[start:stop]
        grid = -(-stop // m)
        anchor = self.edc[grid] if grid < self.edc.size else self.tail
        linear = _backward_integral(self.band.energy[start : grid * m], self.noise_power)[: stop - start]
        linear = linear / self.e0 + anchor
        return self._db(linear, np.ones(linear.size, dtype=bool))

    @staticmethod
    def _db(linear: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """10·lg of the positive ``linear`` values where ``valid``, NaN elsewhere."""
        out = np.full(linear.shape, np.nan)
        ok = valid & (linear > 0)
        np.log10(linear, out=out, where=ok)
        out[ok] *= 10.0
        return out


def decay_curve(band: BandEnergy, truncation: Truncation | None = None) -> DecayCurve:
    """The Schroeder curve of a band's h² (`schroeder_curve_db`) on its block grid: the backward sums of the
    block sums are the full-rate sums at every M-th sample. ``truncation`` in full-rate units (`truncation_of_band`;
    its index a multiple of M)."""
    if truncation is not None and not truncation.decay_found:
        raise ValueError("no decay above the noise floor: the decay curve is undefined")
    m = band.factor
    end = band.blocks.size if truncation is None else truncation.index // m
    tail = 0.0 if truncation is None else truncation.tail_energy
    noise = 0.0 if truncation is None else truncation.noise_power
    edc = _backward_integral(band.blocks[:end], noise * m) + tail
    e0 = float(edc[0])
    if not e0 > 0:
        raise ValueError("no energy above the noise floor")
    curve_db = np.full(band.blocks.size, np.nan)  # NaN after the truncation and where the integral is not positive
    np.divide(edc, e0, out=edc)
    np.log10(edc, out=curve_db[:end], where=edc > 0)
    curve_db[:end] *= 10.0
    return DecayCurve(curve_db, band, edc, e0, noise, tail / e0)


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
    edc = np.asarray(edc_db, dtype=np.float64)
    curve = DecayCurve(edc, BandEnergy(edc, edc), edc, 1.0, 0.0, 0.0)  # the full-rate grid (only ``db`` is read)
    return reverberation_times(
        curve, fs_hz, [range_db], dynamic_range_db=dynamic_range_db, max_nonlinearity_permille=max_nonlinearity_permille
    )[0]


def reverberation_times(
    curve: DecayCurve,
    fs_hz: float,
    ranges_db: list[tuple[float, float]],
    *,
    dynamic_range_db: float | None = None,
    max_nonlinearity_permille: float | None = NONLINEARITY_LIMIT_PERMILLE,
) -> list[DecayFit]:
    """`reverberation_time` over each of ``ranges_db`` on one `DecayCurve`: each line fits the curve's full-rate
    samples from the first at or below the range's top to the first at or below its bottom.

    A level's first sample: the first grid point at or below it (a running minimum, so NaN and a rise never
    hide one), then the block before it (the curve falls where it is above the noise). The fit's sums over
    x = 0 … n − 1, y the curve: exact in the blocks holding the range's ends; between them, on the grid of M
    samples, the trapezoidal rule with its Euler–Maclaurin corrections, Σ_{J0 ≤ j < J1} g(j) ≈
    M·(Σ_grid g − (g(J0) + g(J1))/2) − (g(J1) − g(J0))/2 − (M² − 1)/12·(g′(J1) − g′(J0)), g′ by central
    differences on the grid — exact for M = 1. h²'s ripple (≤ 2·f_hi) stays below the grid's Nyquist
    frequency (`bands.block_factor`), so it does not alias into the sums.
    """
    m = curve.factor
    db = curve.db
    names = {EDT_RANGE_DB: "EDT", T20_RANGE_DB: "T20", T30_RANGE_DB: "T30"}
    # per level: its first sample, and the curve's exact values around it (samples lo … hi − 1)
    first: dict[float, int | None] = {}
    exact: dict[float, tuple[int, int, np.ndarray]] = {}
    for level in sorted({level for r in ranges_db for level in r}, reverse=True):
        g = _first_at_or_below(lambda a, b: db[a:b], db.size, level) if math.isfinite(db[0]) else None
        first[level] = g
        if g is None:
            continue
        lo, hi = max(0, (g - 1) * m), min((max(g, 1) + 1) * m, curve.edc.size * m)
        values = curve.db_range(lo, hi)
        hits = values[: g * m - lo + 1] <= level
        first[level] = lo + int(hits.argmax()) if hits.any() else g * m
        exact[level] = (lo, hi, values)
    fits = []
    for top_db, bottom_db in ranges_db:
        name = names.get((top_db, bottom_db), "T")
        i0, i_bottom = first[top_db], first[bottom_db]
        if i0 is None or i_bottom is None:
            reason = f"decay curve does not reach {bottom_db:g} dB for {name} (it ends at the noise floor)"
            fits.append(DecayFit(None, None, False, reason, codes.INSUFFICIENT_DYNAMIC_RANGE))
            continue
        i1 = i_bottom + 1
        n = i1 - i0
        if n < 3:
            reason = f"too few samples between {top_db:g} and {bottom_db:g} dB"
            fits.append(DecayFit(None, None, False, reason, codes.INSUFFICIENT_DYNAMIC_RANGE))
            continue
        sy, sjy, syy = _range_sums(curve, i0, i1, exact[top_db], exact[bottom_db])
        # least squares on x = j − i0 = 0 … n − 1: Σx, Σx² in closed form, centred sums from the raw ones
        sxy = sjy - i0 * sy
        sx, sxx = n * (n - 1) / 2.0, (n - 1) * n * (2 * n - 1) / 6.0
        cxx, cxy, cyy = sxx - sx * sx / n, sxy - sx * sy / n, syy - sy * sy / n
        r = cxy / math.sqrt(cxx * cyy) if cyy > 0 else 1.0
        fits.append(_judged_fit(cxy / cxx * fs_hz, r, (top_db, bottom_db), name, dynamic_range_db, max_nonlinearity_permille))
    return fits


def _sums(j: np.ndarray, y: np.ndarray) -> list[float]:
    """[Σy, Σj·y, Σy²] (sums of products, not BLAS dot products: `_line_fit`)."""
    return [float(y.sum()), float((j * y).sum()), float((y * y).sum())]


def _range_sums(curve: DecayCurve, i0: int, i1: int, top, bottom) -> list[float]:
    """Σy, Σj·y, Σy² over samples j = i0 … i1 − 1 (`reverberation_times`): the exact values around each end (``top``,
    ``bottom``: (lo, hi, values)) from i0 to the first grid point after it (the second when i0 < M: sample 0
    holds the band's energy before the onset, a step no grid sum may span) and from the last grid point at or
    before i1 to i1; the grid between."""
    m = curve.factor
    j0, j1 = max(i0 // m + 1, 2) * m, (i1 // m) * m
    a, b = j0 // m, j1 // m
    (lo, hi, values), (lo_b, _, values_b) = top, bottom
    if j1 - j0 < 2 * m or j0 > hi or j1 < lo_b or b + 1 > curve.edc.size:  # too short for the grid: all exact
        return _sums(np.arange(i0, i1, dtype=np.float64), curve.db_range(i0, i1))
    edges = np.concatenate((values[i0 - lo : j0 - lo], values_b[j1 - lo_b : i1 - lo_b]))
    sums = _sums(np.concatenate((np.arange(i0, j0), np.arange(j1, i1))).astype(np.float64), edges)
    if m == 1:
        return [s + t for s, t in zip(sums, _sums(np.arange(a, b, dtype=np.float64), curve.db[a:b]))]
    top_end = min(b + 2, curve.edc.size)  # the grid from J0 − M to J1 + M (or J1 at the curve's end)
    y = curve.db[a - 1 : top_end]
    grid = _sums(np.arange(a - 1, top_end, dtype=np.float64) * m, y)
    after_end = top_end == b + 2
    at = [a - 1, a, a + 1, b - 1, b, b + 1 if after_end else b]  # the grid points the ends' corrections read
    ys = curve.db[at].tolist()
    for k in range(3):
        g = [yy if k == 0 else (i * m * yy if k == 1 else yy * yy) for i, yy in zip(at, ys)]
        inner = grid[k] - g[0] - (g[5] if after_end else 0.0)  # Σ over the grid points J0 … J1
        slope_start = (g[2] - g[0]) / (2 * m)
        slope_end = (g[5] - g[3]) / (2 * m) if after_end else (g[4] - g[3]) / m
        trapezoid = m * (inner - 0.5 * (g[1] + g[4]))
        sums[k] += trapezoid - 0.5 * (g[4] - g[1]) - (m * m - 1) / 12.0 * (slope_end - slope_start)
    return sums


def _judged_fit(
    slope: float,
    r: float,
    range_db: tuple[float, float],
    name: str,
    dynamic_range_db: float | None,
    max_nonlinearity_permille: float | None,
) -> DecayFit:
    """The `DecayFit` of a line of ``slope`` (dB/s) and correlation ``r`` over ``range_db``, with its gates."""
    top_db, bottom_db = range_db
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
