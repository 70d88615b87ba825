"""The analysis of a job's uploads, run in a worker process, and the summary over them.

:func:`analyze_uploads` is what the CPU pool runs: it reads each upload, hands it to
``sonalyze.acoustics.report`` (impulse response as is, or a recording of the job's sweep to
deconvolve) and returns one report per upload. An upload the acoustics refuses (ValueError: the sweep
is missing or cut, the decay is too short...) gets ``{"error": {...}}`` instead of failing the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from scipy.signal import resample_poly

from sonalyze.acoustics.report import analyze_impulse_response, analyze_sweep_recording
from sonalyze.acoustics.sweep import SweepParams
from sonalyze.measurement.jobs import AnalysisSource

BANDED_METRICS = ("t20_s", "t30_s", "edt_s", "c50_db", "c80_db", "d50", "centre_time_s", "drr_db")


@dataclass(frozen=True)
class AnalysisTask:
    """Everything a worker process needs (picklable): the sweep, the source, the files."""

    source: AnalysisSource
    sweep: SweepParams
    uploads: tuple[tuple[str, Path], ...]


def _first_channel(path: Path) -> tuple[np.ndarray, int]:
    samples, fs_hz = soundfile.read(str(path), dtype="float64", always_2d=True)
    return samples[:, 0], int(fs_hz)


def _analyze_one(task: AnalysisTask, path: Path) -> dict[str, Any]:
    signal, fs_hz = _first_channel(path)
    if task.source is AnalysisSource.IMPULSE_RESPONSE:
        return analyze_impulse_response(signal, fs_hz)
    if fs_hz != task.sweep.fs_hz:
        # The phone recorded at another rate than the sweep's: bring the recording to the sweep's rate.
        common = math.gcd(fs_hz, task.sweep.fs_hz)
        signal = resample_poly(signal, task.sweep.fs_hz // common, fs_hz // common)
    return analyze_sweep_recording(signal, task.sweep)


def analyze_uploads(task: AnalysisTask, *, progress: Callable[[float, str], None]) -> dict[str, dict[str, Any]]:
    """One report per upload (the shared result schema, plus ``source``), or ``{"error"}`` for that upload."""
    results: dict[str, dict[str, Any]] = {}
    count = len(task.uploads)
    for index, (name, path) in enumerate(task.uploads):
        progress(index / count, f"analyzing {name} ({index + 1}/{count})")
        try:
            report = _analyze_one(task, path)
        except ValueError as exc:
            report = {"error": {"code": "analysis_failed", "message": str(exc)}}
        results[name] = {"source": task.source.value, **report}
    progress(1.0, "analysis finished")
    return results


def _mean(values: list[float | None]) -> float | None:
    valid = [value for value in values if value is not None]
    return float(np.mean(valid)) if valid else None


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Arithmetic means over the uploads' valid values (spatial average, ISO 3382-1 §7), per band.

    A band or metric with no valid value in any upload stays ``null``; ``count`` says how many uploads
    gave a broadband value. Uploads whose analysis failed are listed, not averaged.
    """
    reports = {name: report for name, report in results.items() if "error" not in report}
    summary: dict[str, Any] = {
        "uploads": sorted(reports),
        "failed_uploads": sorted(name for name in results if name not in reports),
    }
    if not reports:
        return summary
    summary["bands_hz"] = next(iter(reports.values()))["bands_hz"]
    for metric in BANDED_METRICS:
        per_upload = [report[metric] for report in reports.values()]
        band_count = len(summary["bands_hz"])
        summary[metric] = {
            "bands": [_mean([entry["bands"][band] for entry in per_upload]) for band in range(band_count)],
            "broadband": _mean([entry["broadband"] for entry in per_upload]),
            "count": sum(entry["broadband"] is not None for entry in per_upload),
        }
    sti_values = [report["sti"]["value"] for report in reports.values()]
    summary["sti"] = {"value": _mean(sti_values), "count": sum(value is not None for value in sti_values)}
    return summary
