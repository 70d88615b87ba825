"""The JSON-ready room-acoustic result shared by the measurement and simulation services.

`analyze_impulse_response` returns plain ``dict``/``list``/``float``/``str``/``None`` (no numpy
scalars, no NaN or ∞). Conventions:

* ``fs_hz``; ``onset_s`` (ISO 3382-1 A.2.1 onset in the given IR); ``duration_s`` (analysed, after it).
* ``bands_hz`` lists the 7 nominal octave centres; every per-band list follows that order.
* Metric objects: ``edt_s``, ``t20_s``, ``t30_s``, ``curvature_percent``, ``c50_db``, ``c80_db``,
  ``d50``, ``centre_time_s``, ``drr_db``, ``dynamic_range_db`` (an example: docs/acoustics.md).
* A metric object is ``{"bands": [7 × float|null], "broadband": float|null, "reasons": {key: str}}``:
  a value is ``null`` **iff** its key (``"125"`` … ``"8000"`` or ``"broadband"``) is in ``reasons``
  with a human-readable explanation (e.g. ``"dynamic range 31 dB < 45 dB needed for T30"`` or
  ``"band unavailable: …"`` for 8 kHz at fs < 22.5 kHz).
* ``t20_s``, ``t30_s``, ``edt_s`` add ``"correlation": {"bands": [...], "broadband": r}``: Pearson r
  of the line fit (|r| < 0.98 is unreliable; values are still reported), null where no fit was made.
* ``curvature_percent`` = 100·(T30/T20 − 1) (ISO 3382-2 §B.3; > 10 % suspect).
* ``dynamic_range_db``: peak (10 ms running mean) over the noise floor found by Lundeby's method;
  null with a reason when the IR holds no noise floor.
* ``sti``: ``{"value", "mti": [7], "rating": "A+"…"U", "reason"}`` (IEC 60268-16, no noise or
  masking correction: the IR alone).
* With ``include_curves``: ``decay_curves`` ``{"time_s": [...], "bands": {"125": [dB|null], …,
  "broadband": [...]}}`` (Schroeder curves decimated to `CURVE_POINTS`, null past the truncation)
  and ``frequency_response`` ``{"frequency_hz", "level_db"}`` (1/3-octave smoothed, dB re unit gain).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sonalyze.acoustics import decay, energy, spectrum
from sonalyze.acoustics.bands import OCTAVE_BANDS_HZ, octave_band_irs, unavailable_reason
from sonalyze.acoustics.deconvolution import deconvolve_sweep
from sonalyze.acoustics.onset import as_signal, find_onset
from sonalyze.acoustics.sti import modulation_transfer_function, sti_from_mtf
from sonalyze.acoustics.sweep import SweepParams

#: Shortest IR after the onset that is analysed, s (C80 needs 80 ms, a decay needs more).
MIN_ANALYSIS_S = 0.1
MIN_FS_HZ = 8000.0
CURVE_POINTS = 300
#: Decay-curve points below this level are reported as null (numerical floor).
CURVE_FLOOR_DB = -150.0
BROADBAND = "broadband"
T_METRICS = {"edt_s": decay.EDT_RANGE_DB, "t20_s": decay.T20_RANGE_DB, "t30_s": decay.T30_RANGE_DB}
ENERGY_METRICS = ("c50_db", "c80_db", "d50", "centre_time_s", "drr_db")


def _json_float(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


class _Metric:
    """Collects one metric over the bands and broadband into the null-with-reason object."""

    def __init__(self, with_correlation: bool = False):
        self.values: dict[str, float | None] = {}
        self.reasons: dict[str, str] = {}
        self.correlation: dict[str, float | None] | None = {} if with_correlation else None

    def set(self, key: str, value: float | None, reason: str | None = None) -> None:
        value = _json_float(value)
        if value is None:
            self.reasons[key] = reason or "not computable"
        self.values[key] = value

    def to_json(self) -> dict[str, Any]:
        keys = [str(b) for b in OCTAVE_BANDS_HZ]
        out: dict[str, Any] = {
            "bands": [self.values.get(k) for k in keys],
            "broadband": self.values.get(BROADBAND),
            "reasons": dict(self.reasons),
        }
        if self.correlation is not None:
            out["correlation"] = {
                "bands": [self.correlation.get(k) for k in keys],
                "broadband": self.correlation.get(BROADBAND),
            }
        return out


def _energy_metric(metric: _Metric, key: str, compute) -> None:
    try:
        metric.set(key, compute())
    except ValueError as exc:
        metric.set(key, None, str(exc))


def analyze_impulse_response(ir: np.ndarray, fs_hz: float, *, include_curves: bool = True) -> dict[str, Any]:
    """Every ISO 3382-1 / IEC 60268-16 metric of a 1-D impulse response, as a JSON-ready dict.

    The IR may have any pre-delay (the onset is found per ISO 3382-1 A.2.1); each band is filtered with
    the zero-phase octave bank, its decay truncated by Lundeby's method, and T20/T30/EDT, C50/C80/D50,
    Ts, DRR computed from the onset. Raises ValueError for an empty, silent, non-finite or too short IR
    or an fs below 8 kHz. See the module docstring for the schema.
    """
    fs_hz = float(fs_hz)
    if not math.isfinite(fs_hz) or fs_hz < MIN_FS_HZ:
        raise ValueError(f"fs_hz must be ≥ {MIN_FS_HZ:.0f} Hz, got {fs_hz}")
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
    signals: dict[str, np.ndarray] = {str(b): h for b, h in octave_band_irs(x, fs_hz, onset).items()}
    for band in OCTAVE_BANDS_HZ:
        if str(band) not in signals:
            reason = unavailable_reason(band, fs_hz)
            for metric in (*t_metrics.values(), *e_metrics.values(), curvature, dynamic_range):
                metric.set(str(band), None, reason)
    broadband = x[onset:]
    signals[BROADBAND] = broadband
    peak_index = int(np.argmax(np.abs(broadband)))
    curves: dict[str, np.ndarray] = {}

    for key, h in signals.items():
        truncation = decay.lundeby_truncation(h, fs_hz)
        edc_db = decay.schroeder_curve_db(h, fs_hz, truncation)
        curves[key] = edc_db
        dr_db = truncation.dynamic_range_db
        dynamic_range.set(key, dr_db, "no noise floor found in the impulse response (noise-free)")
        fits = {}
        for name, range_db in T_METRICS.items():
            fit = decay.reverberation_time(edc_db, fs_hz, range_db, dynamic_range_db=dr_db)
            fits[name] = fit
            t_metrics[name].set(key, fit.rt_s if fit.valid else None, fit.reason)
            t_metrics[name].correlation[key] = _json_float(fit.correlation)
        if fits["t20_s"].valid and fits["t30_s"].valid:
            curvature.set(key, 100.0 * (fits["t30_s"].rt_s / fits["t20_s"].rt_s - 1.0))
        else:
            curvature.set(key, None, "needs valid T20 and T30")
        _energy_metric(e_metrics["c50_db"], key, lambda: energy.clarity_db(h, fs_hz, 50.0, truncation=truncation))
        _energy_metric(e_metrics["c80_db"], key, lambda: energy.clarity_db(h, fs_hz, 80.0, truncation=truncation))
        _energy_metric(e_metrics["d50"], key, lambda: energy.definition(h, fs_hz, 50.0, truncation=truncation))
        _energy_metric(e_metrics["centre_time_s"], key, lambda: energy.centre_time_s(h, fs_hz, truncation=truncation))
        _energy_metric(
            e_metrics["drr_db"],
            key,
            lambda: energy.direct_to_reverberant_db(h, fs_hz, peak_index=peak_index, truncation=truncation),
        )

    result: dict[str, Any] = {
        "fs_hz": int(fs_hz) if fs_hz.is_integer() else fs_hz,
        "onset_s": _json_float(onset / fs_hz),
        "duration_s": _json_float(broadband.size / fs_hz),
        "bands_hz": list(OCTAVE_BANDS_HZ),
        **{name: m.to_json() for name, m in t_metrics.items()},
        "curvature_percent": curvature.to_json(),
        **{name: m.to_json() for name, m in e_metrics.items()},
        "dynamic_range_db": dynamic_range.to_json(),
        "sti": _sti_json(signals, fs_hz),
    }
    if include_curves:
        result["decay_curves"] = _curves_json(curves, fs_hz)
        freqs_hz, level_db = spectrum.frequency_response_db(broadband, fs_hz, 3)
        result["frequency_response"] = {
            "frequency_hz": [_json_float(f, 3) for f in freqs_hz],
            "level_db": [_json_float(v, 3) for v in level_db],
        }
    return result


def _sti_json(signals: dict[str, np.ndarray], fs_hz: float) -> dict[str, Any]:
    missing = [b for b in OCTAVE_BANDS_HZ if str(b) not in signals]
    if missing:
        reason = f"STI needs all 7 octave bands; {missing[0]} Hz: {unavailable_reason(missing[0], fs_hz)}"
        return {"value": None, "mti": [None] * 7, "rating": None, "reason": reason}
    try:
        mtf = modulation_transfer_function(np.stack([signals[str(b)] for b in OCTAVE_BANDS_HZ]), fs_hz)
        res = sti_from_mtf(mtf)
    except ValueError as exc:
        return {"value": None, "mti": [None] * 7, "rating": None, "reason": str(exc)}
    return {"value": _json_float(res.sti), "mti": [_json_float(v) for v in res.mti], "rating": res.rating, "reason": None}


def _curves_json(curves: dict[str, np.ndarray], fs_hz: float) -> dict[str, Any]:
    n = curves[BROADBAND].size
    idx = np.unique(np.linspace(0, n - 1, min(CURVE_POINTS, n)).astype(int))
    out: dict[str, list[float | None]] = {}
    for key, edc_db in curves.items():
        values = edc_db[idx]
        out[key] = [_json_float(v, 3) if v > CURVE_FLOOR_DB else None for v in values.tolist()]
    for band in OCTAVE_BANDS_HZ:
        out.setdefault(str(band), [None] * idx.size)
    ordered = {str(b): out[str(b)] for b in OCTAVE_BANDS_HZ} | {BROADBAND: out[BROADBAND]}
    return {"time_s": [_json_float(i / fs_hz) for i in idx.tolist()], "bands": ordered}


def analyze_sweep_recording(
    recording: np.ndarray,
    params: SweepParams,
    *,
    ir_length_s: float | None = None,
    include_curves: bool = True,
) -> dict[str, Any]:
    """`deconvolve_sweep` then `analyze_impulse_response` (at ``params.fs_hz``)."""
    ir = deconvolve_sweep(recording, params, ir_length_s)
    return analyze_impulse_response(ir, params.fs_hz, include_curves=include_curves)
