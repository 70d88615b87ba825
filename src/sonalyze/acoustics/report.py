"""The JSON-ready room-acoustic result shared by the measurement and simulation services.

`analyze_impulse_response` returns plain ``dict``/``list``/``float``/``str``/``None`` (no numpy
scalars, no NaN or ∞). Conventions:

* ``fs_hz``; ``onset_s`` (ISO 3382-1 A.2.1 onset in the given IR); ``duration_s`` (analysed, after it).
* ``bands_hz`` lists the 7 nominal octave centres; every per-band list follows that order.
* Metric objects: ``edt_s``, ``t20_s``, ``t30_s``, ``curvature_percent``, ``c50_db``, ``c80_db``,
  ``d50``, ``centre_time_s``, ``drr_db``, ``dynamic_range_db`` (an example: docs/acoustics.md).
* A metric object is ``{"bands": [7 × float|null], "broadband": float|null, "reasons": {key: str},
  "codes": {key: code}}``: a value is ``null`` **iff** its key (``"125"`` … ``"8000"`` or
  ``"broadband"``) is in ``reasons`` with a human-readable explanation (e.g. ``"dynamic range 31 dB <
  45 dB needed for T30"``) and in ``codes`` with a stable code (`codes`, contract C3).
* ``t20_s``, ``t30_s``, ``edt_s`` add ``"correlation": {"bands": [...], "broadband": r}`` (Pearson r
  of the line fit) and ``"nonlinearity_permille"`` (ξ = 1000·(1 − r²), ISO 3382-2 Annex B), null
  where no fit was made; T20/T30 with ξ > 10 ‰ are null (``nonlinear_decay``).
* ``curvature_percent`` = 100·(T30/T20 − 1) (ISO 3382-2 §B.3; > 10 % suspect).
* ``dynamic_range_db``: peak (10 ms running mean) over the noise floor found by Lundeby's method;
  null with a reason when the IR holds no noise floor.
* ``sti``: ``{"value", "mti": [7], "rating": "A+"…"U", "reason", "code", "method"}`` (IEC 60268-16;
  ``method`` "ir", "ir+noise", "ir+masking" or "ir+noise+masking", `sti.METHOD_IR` …).
* With ``include_curves``: ``decay_curves`` ``{"time_s": [...], "bands": {"125": [dB|null], …,
  "broadband": [...]}}`` (Schroeder curves decimated to `CURVE_POINTS`, null past the truncation)
  and ``frequency_response`` ``{"frequency_hz", "level_db"}`` (1/3-octave smoothed, dB re unit gain).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sonalyze.acoustics import codes, decay, energy, spectrum, sti
from sonalyze.acoustics.bands import OCTAVE_BANDS_HZ, band_irs_and_leakage, block_factor, exact_centre_hz, unavailable_reason
from sonalyze.acoustics.deconvolution import mono
from sonalyze.acoustics.onset import as_signal, find_onset
from sonalyze.acoustics.recording import RecordingRefused, apply_refusals, check_recording
from sonalyze.acoustics.sweep import SweepParams

#: Shortest IR after the onset that is analysed, s (C80 needs 80 ms, a decay needs more).
MIN_ANALYSIS_S = 0.1
MIN_FS_HZ = 8000.0
CURVE_POINTS = 300
#: Decay-curve points below this level are reported as null (numerical floor).
CURVE_FLOOR_DB = -150.0
BROADBAND = "broadband"
#: A band whose filtered energy is more than this share leakage from outside its edges is refused.
MAX_LEAKAGE = 0.2
#: A band whose 10 ms peak is less than this above its noise floor holds no usable decay.
MIN_PEAK_TO_NOISE_DB = 10.0
#: A band whose upper half-octave's power density exceeds the lower one's by more than this (dB) is
#: refused: a source rolling off inside it (white 0 dB, pink −1.5 dB, single random room responses
#: up to ±5 dB at 125/250 Hz; a 4th-order high-pass at 150 Hz gives +6 dB in the 125 Hz band).
MAX_BAND_TILT_DB = 6.0
#: … and only when the band's energy is this far (dB) below the next band's: a roll-off, not a mode.
MIN_STEP_BELOW_UPPER_DB = 3.0
#: Just-noticeable differences (ISO 3382-1 Table A.1) the source's delay may not exceed: C (dB), D50.
C_JND_DB = 1.0
D_JND = 0.05
T_METRICS = {"edt_s": decay.EDT_RANGE_DB, "t20_s": decay.T20_RANGE_DB, "t30_s": decay.T30_RANGE_DB}
ENERGY_METRICS = ("c50_db", "c80_db", "d50", "centre_time_s", "drr_db")


def _json_float(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _json_floats(values: np.ndarray, digits: int) -> list[float | None]:
    """`_json_float` of every value, rounded as one array (a Python round per value: ≈ 1 µs each)."""
    finite = np.isfinite(values)
    rounded = np.round(np.where(finite, values, 0.0), digits).tolist()
    return [v if ok else None for v, ok in zip(rounded, finite.tolist())]


class _Metric:
    """Collects one metric over the bands and broadband into the null-with-reason object."""

    def __init__(self, with_correlation: bool = False):
        self.values: dict[str, float | None] = {}
        self.reasons: dict[str, str] = {}
        self.codes: dict[str, str] = {}
        self.correlation: dict[str, float | None] | None = {} if with_correlation else None
        self.nonlinearity: dict[str, float | None] = {}

    def set(self, key: str, value: float | None, reason: str | None = None, code: str | None = None) -> None:
        value = _json_float(value)
        if value is None:
            self.reasons[key] = reason or "not computable"
            self.codes[key] = code or codes.NOT_COMPUTABLE
        self.values[key] = value

    def to_json(self) -> dict[str, Any]:
        keys = [str(b) for b in OCTAVE_BANDS_HZ]
        out: dict[str, Any] = {
            "bands": [self.values.get(k) for k in keys],
            "broadband": self.values.get(BROADBAND),
            "reasons": dict(self.reasons),
            "codes": dict(self.codes),
        }
        if self.correlation is not None:
            out["correlation"] = {
                "bands": [self.correlation.get(k) for k in keys],
                "broadband": self.correlation.get(BROADBAND),
            }
            out["nonlinearity_permille"] = {
                "bands": [self.nonlinearity.get(k) for k in keys],
                "broadband": self.nonlinearity.get(BROADBAND),
            }
        return out


def _energy_metric(metric: _Metric, key: str, compute, refusal: str | None) -> None:
    if refusal is not None:
        metric.set(key, None, refusal, codes.INSUFFICIENT_DYNAMIC_RANGE)
        return
    try:
        metric.set(key, compute())
    except ValueError as exc:
        metric.set(key, None, str(exc), codes.NOT_COMPUTABLE)


def _band_refusal(
    key: str,
    truncation: decay.Truncation,
    leakage: dict[str, float],
    tilt: dict[str, float],
    below_upper_db: dict[str, float],
) -> tuple[str, str] | None:
    """``(code, reason)`` when nothing may be computed from a band (or the broadband IR), else None.

    * `codes.BAND_LEVEL_TOO_LOW`: more than `MAX_LEAKAGE` of the band's filtered energy comes from outside
      its edges (`bands.leakage_fraction`), the IR's power density in the band's lower half is more
      than `MAX_BAND_TILT_DB` below the upper half's while the band's energy is more than
      `MIN_STEP_BELOW_UPPER_DB` below the next band's (the source rolls off inside the band: its own
      transient, not the room, shapes the band's early energy; ``below_upper_db``), or its peak is less than
      `MIN_PEAK_TO_NOISE_DB` above the noise: the source gave too little level in the band
      (ISO 3382-1 §5.3).
    * `codes.NO_DECAY_ABOVE_NOISE`: Lundeby's iteration found no decay above the noise floor.
    """
    if _rolls_off(key, tilt, below_upper_db):
        return codes.BAND_LEVEL_TOO_LOW, (
            f"band level too low: the spectrum in the lower half of the band is {tilt[key]:.1f} dB below the "
            f"upper half (more than {MAX_BAND_TILT_DB:g} dB): the source rolls off inside this band"
        )
    share = leakage.get(key, 0.0)
    if share > MAX_LEAKAGE:
        return codes.BAND_LEVEL_TOO_LOW, (
            f"band level too low: {100 * share:.0f} % of its filtered energy comes from outside the band "
            f"(more than {100 * MAX_LEAKAGE:g} %): the source gives too little level here"
        )
    if truncation.dynamic_range_db < MIN_PEAK_TO_NOISE_DB:
        return codes.BAND_LEVEL_TOO_LOW, (
            f"band level too low: peak {truncation.dynamic_range_db:.0f} dB above the noise floor "
            f"(less than {MIN_PEAK_TO_NOISE_DB:g} dB)"
        )
    if not truncation.decay_found:
        return codes.NO_DECAY_ABOVE_NOISE, "no decay above the noise floor found (Lundeby)"
    return None


def _rolls_off(key: str, tilt: dict[str, float], below_upper_db: dict[str, float]) -> bool:
    """The source rolls off inside band ``key`` (`_band_refusal`'s tilt rule)."""
    return tilt.get(key, 0.0) > MAX_BAND_TILT_DB and below_upper_db.get(key, 0.0) > MIN_STEP_BELOW_UPPER_DB


def _source_delay_refusals(band_hz: int, values: dict[str, float | None], rt_s: float | None) -> dict[str, str]:
    """Early-energy values of the band just above one where the source rolls off, refused when the
    source's delay could move them by more than a JND: {metric: reason}.

    A minimum-phase roll-off (a loudspeaker's high-pass) delays the band above it by its group delay —
    at most ≈ 1/f_lo (a Butterworth high-pass of order n at f_lo: 0.42/f_lo for n = 4, 0.82/f_lo for n = 8)
    — and a delay τ of the whole band response against the broadband onset moves C_te by
    ≈ −60·τ/T·(1 + 10^(−C/10)) dB and D50 by ≈ −13.8·τ/T·(1 − D50) (exponential decay of
    reverberation time T; the band's EDT). In the phone-chain set a 4th-order high-pass at 200 Hz cost
    C50 at 250 Hz 1.3 dB in a 0.25 s room (0.6 dB in a 0.8 s room), nearly all of it through its phase.
    """
    lo_hz = exact_centre_hz(band_hz) / 2**0.5
    tau_s = 1.0 / lo_hz
    out = {}
    for metric, value in values.items():
        if value is None:
            continue
        if rt_s is None:
            out[metric] = (
                "band level too low below: the source rolls off in the band under this one and this band's decay "
                "time is unknown: its delay could move the early energy by more than a JND"
            )
            continue
        if metric == "d50":
            shift, limit, unit = 13.8 * tau_s / rt_s * (1.0 - value), D_JND, ""
        else:
            shift, limit, unit = 60.0 * tau_s / rt_s * (1.0 + 10.0 ** (-value / 10.0)), C_JND_DB, " dB"
        if shift > limit:
            out[metric] = (
                f"band level too low below: the source rolls off in the band under this one, and its delay "
                f"(up to {1000 * tau_s:.1f} ms here) could move {metric.split('_')[0].upper()} by {shift:.2f}{unit}, "
                f"more than the JND {limit:g}{unit}"
            )
    return out


def _levels(name: str, values) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (len(OCTAVE_BANDS_HZ),) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be {len(OCTAVE_BANDS_HZ)} finite octave-band levels in dB, got {values!r}")
    return arr


def analyze_impulse_response(
    ir: np.ndarray,
    fs_hz: float,
    *,
    include_curves: bool = True,
    speech_levels_db: Sequence[float] | None = None,
    noise_levels_db: Sequence[float] | None = None,
    calibration_db: float | None = None,
    max_nonlinearity_permille: float | None = decay.NONLINEARITY_LIMIT_PERMILLE,
) -> dict[str, Any]:
    """Every ISO 3382-1 / IEC 60268-16 metric of a 1-D impulse response, as a JSON-ready dict.

    The IR may have any pre-delay (the onset is found per ISO 3382-1 A.2.1); each band is filtered with
    the zero-phase octave bank, its decay noise-compensated (Chu + Lundeby) and T20/T30/EDT, C50/C80/D50,
    Ts, DRR computed from the onset, each behind its validity gate (docs/acoustics.md "Refusals"). A band
    whose upper edge lies far below fs/2 is analysed on blocks of M samples (`bands.block_factor`,
    `decay.BandEnergy`): its energy sums are the full-rate ones, its line fits within ≈ 10⁻⁴ of them.
    STI options (IEC 60268-16): ``speech_levels_db`` and ``noise_levels_db``, 7 octave-band levels in dB
    re the recording's full scale of the speech (or the test signal at speech level) and of the
    measured background noise, give the SNR correction; with ``calibration_db`` (dB SPL at 0 dBFS of
    the recording device) the speech levels become absolute and masking and the reception threshold
    apply. Raises ValueError for an empty, silent, non-finite or too short IR, an fs below 8 kHz, or
    levels not given as 7 finite numbers (or noise levels without speech levels).
    ``max_nonlinearity_permille``: T20/T30 with a larger ξ are refused (ISO 3382-2 Annex B); None reports
    ξ without refusing (a simulation, whose bent decay is the model's, not a measurement's flaw).
    """
    fs_hz = float(fs_hz)
    if not math.isfinite(fs_hz) or fs_hz < MIN_FS_HZ:
        raise ValueError(f"fs_hz must be ≥ {MIN_FS_HZ:.0f} Hz, got {fs_hz}")
    speech = _levels("speech_levels_db", speech_levels_db)
    noise = _levels("noise_levels_db", noise_levels_db)
    if noise is not None and speech is None:
        raise ValueError("noise_levels_db needs speech_levels_db (the SNR is speech minus noise)")
    if calibration_db is not None and not math.isfinite(calibration_db):
        raise ValueError(f"calibration_db must be a finite number of dB, got {calibration_db}")
    x = as_signal(ir)
    onset = find_onset(x)
    if x.size - onset < MIN_ANALYSIS_S * fs_hz:
        raise ValueError(
            f"impulse response too short: {(x.size - onset) / fs_hz:.3f} s after the onset, "
            f"need at least {MIN_ANALYSIS_S} s"
        )
    t_metrics = {name: _Metric(with_correlation=True) for name in T_METRICS}
    e_metrics = {name: _Metric() for name in ENERGY_METRICS}
    curvature, dynamic_range = _Metric(), _Metric()
    band_irs, leakage_by_band, tilt_by_band = band_irs_and_leakage(x, fs_hz, onset)
    leakage = {str(b): v for b, v in leakage_by_band.items()}
    tilt = {str(b): v for b, v in tilt_by_band.items()}
    # each band's h² and its block sums (`decay.BandEnergy`): the low bands' decays run on blocks of M samples
    grid = math.gcd(sti.envelope_bin_samples(fs_hz), decay.grid_samples(fs_hz))  # whole blocks in Lundeby's and the STI's bins
    energies = {str(b): decay.BandEnergy.of_ir(h, block_factor(b, fs_hz, grid)) for b, h in band_irs.items()}
    band_energy_db = {key: 10.0 * math.log10(float(e.blocks.sum()) or 1e-300) for key, e in energies.items()}
    below_upper_db = {
        str(b): band_energy_db[str(u)] - band_energy_db[str(b)]
        for b, u in zip(OCTAVE_BANDS_HZ, OCTAVE_BANDS_HZ[1:])
        if str(b) in band_energy_db and str(u) in band_energy_db
    }
    band_refusals: dict[str, tuple[str, str]] = {}
    for band in OCTAVE_BANDS_HZ:
        if str(band) not in energies:
            band_refusals[str(band)] = (codes.BAND_UNAVAILABLE, unavailable_reason(band, fs_hz))
            for metric in (*t_metrics.values(), *e_metrics.values(), curvature, dynamic_range):
                metric.set(str(band), None, unavailable_reason(band, fs_hz), codes.BAND_UNAVAILABLE)
    broadband = x[onset:]
    energies[BROADBAND] = decay.BandEnergy.of_ir(broadband)
    peak_index = int(np.argmax(np.abs(broadband)))
    curves: dict[str, decay.DecayCurve] = {}
    truncations: dict[str, decay.Truncation] = {}
    decays: dict[str, energy.EnergyDecay] = {}

    for key, band_energy in energies.items():
        truncation = decay.truncation_of_band(band_energy, fs_hz)
        truncations[key] = truncation
        dr_db = truncation.dynamic_range_db
        dynamic_range.set(key, dr_db, "no noise floor found in the impulse response (noise-free)", codes.NO_NOISE_FLOOR)
        refusal = _band_refusal(key, truncation, leakage, tilt, below_upper_db)
        if refusal is not None:
            band_refusals[key] = refusal
            for metric in (*t_metrics.values(), *e_metrics.values(), curvature):
                metric.set(key, None, refusal[1], refusal[0])
            continue
        curve = curves[key] = decay.decay_curve(band_energy, truncation)
        fits = dict(zip(T_METRICS, decay.reverberation_times(
            curve, fs_hz, list(T_METRICS.values()), dynamic_range_db=dr_db, max_nonlinearity_permille=max_nonlinearity_permille
        )))
        for name, fit in fits.items():
            t_metrics[name].set(key, fit.rt_s if fit.valid else None, fit.reason, fit.code)
            t_metrics[name].correlation[key] = _json_float(fit.correlation)
            t_metrics[name].nonlinearity[key] = _json_float(fit.nonlinearity_permille, 3)
        if fits["t20_s"].valid and fits["t30_s"].valid:
            curvature.set(key, 100.0 * (fits["t30_s"].rt_s / fits["t20_s"].rt_s - 1.0))
        else:
            curvature.set(key, None, "needs valid T20 and T30", codes.DEPENDS_ON_REFUSED)
        try:
            decay_energy = decays[key] = energy.EnergyDecay.of_band(band_energy, fs_hz, truncation)
        except ValueError as exc:
            for metric in e_metrics.values():
                metric.set(key, None, str(exc), codes.NOT_COMPUTABLE)
            continue
        gates = energy.refusals(decay_energy, peak_index)
        _energy_metric(e_metrics["c50_db"], key, lambda: decay_energy.clarity_db(50.0), gates["c50_db"])
        _energy_metric(e_metrics["c80_db"], key, lambda: decay_energy.clarity_db(80.0), gates["c80_db"])
        _energy_metric(e_metrics["d50"], key, lambda: decay_energy.definition(50.0), gates["d50"])
        _energy_metric(e_metrics["centre_time_s"], key, decay_energy.centre_time_s, gates["centre_time_s"])
        _energy_metric(e_metrics["drr_db"], key, lambda: decay_energy.direct_to_reverberant_db(peak_index), gates["drr_db"])
        below = dict(zip(map(str, OCTAVE_BANDS_HZ[1:]), map(str, OCTAVE_BANDS_HZ)))
        if key in below and _rolls_off(below[key], tilt, below_upper_db):
            rt_s = next((fits[n].rt_s for n in ("edt_s", "t20_s") if fits[n].valid), None)
            values = {m: e_metrics[m].values.get(key) for m in ("c50_db", "c80_db", "d50")}
            for metric, reason in _source_delay_refusals(int(key), values, rt_s).items():
                e_metrics[metric].set(key, None, reason, codes.BAND_LEVEL_TOO_LOW)

    snr_db = None if noise is None else speech - noise
    band_levels_db = None if speech is None or calibration_db is None else speech + calibration_db
    result: dict[str, Any] = {
        "fs_hz": int(fs_hz) if fs_hz.is_integer() else fs_hz,
        "onset_s": _json_float(onset / fs_hz),
        "duration_s": _json_float(broadband.size / fs_hz),
        "bands_hz": list(OCTAVE_BANDS_HZ),
        **{name: m.to_json() for name, m in t_metrics.items()},
        "curvature_percent": curvature.to_json(),
        **{name: m.to_json() for name, m in e_metrics.items()},
        "dynamic_range_db": dynamic_range.to_json(),
        "sti": _sti_json(broadband.size, decays, truncations, band_refusals, fs_hz, snr_db, band_levels_db),
    }
    if include_curves:
        result["decay_curves"] = _curves_json(curves, broadband.size, fs_hz)
        freqs_hz, level_db = spectrum.frequency_response_db(broadband, fs_hz, 3)
        result["frequency_response"] = {"frequency_hz": _json_floats(freqs_hz, 3), "level_db": _json_floats(level_db, 3)}
    return result


def _sti_json(
    n_samples: int,
    decays: dict[str, energy.EnergyDecay],
    truncations: dict[str, decay.Truncation],
    band_refusals: dict[str, tuple[str, str]],
    fs_hz: float,
    snr_db: np.ndarray | None,
    band_levels_db: np.ndarray | None,
) -> dict[str, Any]:
    method = sti.sti_method(snr_db, band_levels_db)

    def refused(code: str, reason: str) -> dict[str, Any]:
        return {"value": None, "mti": [None] * 7, "rating": None, "reason": reason, "code": code, "method": method}

    for band in OCTAVE_BANDS_HZ:
        if str(band) in band_refusals:
            code, reason = band_refusals[str(band)]
            return refused(code, f"STI needs all 7 octave bands; {band} Hz: {reason}")
    keys = [str(b) for b in OCTAVE_BANDS_HZ]
    band_truncations = [truncations[k] for k in keys]
    # noise-compensated, with the tail; a band without energy (no EnergyDecay) is all uncertain: refused below
    band_energies = [decays[k].total if k in decays else 0.0 for k in keys]
    gate = sti.refusal(
        n_samples / fs_hz,
        [(t.tail_energy + t.noise_power * t.index) / e if e > 0 else 1.0 for t, e in zip(band_truncations, band_energies)],
    )
    if gate is not None:
        return refused(*gate)
    try:
        bin_samples = sti.envelope_bin_samples(fs_hz)
        mtf = sti.envelope_mtf([decays[k].binned(bin_samples) for k in keys], fs_hz, band_truncations)
        res = sti.sti_from_mtf(mtf, snr_db=snr_db, band_levels_db=band_levels_db)
    except ValueError as exc:
        code = codes.INVALID_MTF if "invalid measurement" in str(exc) else codes.NOT_COMPUTABLE
        return refused(code, str(exc))
    return {
        "value": _json_float(res.sti),
        "mti": [_json_float(v) for v in res.mti],
        "rating": res.rating,
        "reason": None,
        "code": None,
        "method": res.method,
    }


def _curves_json(curves: dict[str, decay.DecayCurve], n: int, fs_hz: float) -> dict[str, Any]:
    """``curves``: the bands' (and broadband) Schroeder curves, a refused one absent; ``n``: the IR's samples."""
    idx = np.unique(np.linspace(0, n - 1, min(CURVE_POINTS, n)).astype(int))
    out: dict[str, list[float | None]] = {}
    for key, curve in curves.items():
        values = curve.db_at(idx)
        # rounded as one array (a Python round per point cost ≈ 2 ms per response: 2400 points)
        out[key] = _json_floats(np.where(values > CURVE_FLOOR_DB, values, np.nan), 3)  # NaN after the truncation
    for key in (*map(str, OCTAVE_BANDS_HZ), BROADBAND):
        out.setdefault(key, [None] * idx.size)
    ordered = {str(b): out[str(b)] for b in OCTAVE_BANDS_HZ} | {BROADBAND: out[BROADBAND]}
    return {"time_s": [round(t_s, 6) for t_s in (idx / fs_hz).tolist()], "bands": ordered}  # = _json_float (finite)


def analyze_sweep_recording(
    recording: np.ndarray,
    params: SweepParams,
    *,
    ir_length_s: float | None = None,
    include_curves: bool = True,
    declared_fs_hz: float | None = None,
    flags: list[str] | None = None,
    capture: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`recording.check_recording` (clock, repetitions, impulsive noise, truncation), then
    `analyze_impulse_response` of the (averaged) response (at ``params.fs_hz``), the values the recording
    cannot support nulled (``truncated_recording``), and the ``recording`` section (with ``flags`` and the
    client's ``capture`` facts). Raises `recording.RecordingRefused` (with a ``code``) for a recording
    that must not be analysed at all, ValueError when no sweep is found in it."""
    try:
        check = check_recording(mono(recording), params, ir_length_s=ir_length_s, declared_fs_hz=declared_fs_hz)
    except RecordingRefused as exc:
        exc.recording.update(flags=list(flags or []), capture=capture)
        raise
    report = analyze_impulse_response(check.ir, params.fs_hz, include_curves=include_curves)
    apply_refusals(report, check)
    report["recording"] = check.section(flags=flags, capture=capture)
    return report
