"""The analysis of a job's uploads, run in a worker process, and the summary over them.

:func:`analyze_uploads` is the task (`sonalyze.common.tasks`: the local pool or a queue worker): it reads
each upload from the blob store (``sonalyze.common.blobs.BlobAddress``), hands it to
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

from sonalyze.acoustics.recording import RecordingRefused
from sonalyze.acoustics.report import analyze_impulse_response, analyze_sweep_recording
from sonalyze.acoustics.sweep import SweepParams
from sonalyze.common.blobs import BlobAddress
from sonalyze.measurement.jobs import AnalysisSource

BANDED_METRICS = ("t20_s", "t30_s", "edt_s", "c50_db", "c80_db", "d50", "centre_time_s", "drr_db")


@dataclass(frozen=True)
class AnalysisTask:
    """Everything a worker process needs (picklable): the sweep, the source, where the uploads are."""

    source: AnalysisSource
    sweep: SweepParams
    uploads: tuple[tuple[str, str], ...]
    """(upload name, blob key) in ``blobs``."""
    blobs: BlobAddress
    captures: tuple[dict[str, Any] | None, ...] = ()
    """Each upload's capture facts (same order as ``uploads``), None where the client sent none."""


def _first_channel(path: Path) -> tuple[np.ndarray, int]:
    samples, fs_hz = soundfile.read(str(path), dtype="float64", always_2d=True)
    return samples[:, 0], int(fs_hz)


#: Capture facts that mean the browser processed the audio (WebRTC echo canceller, noise suppressor,
#: gain control): the decay may be bent, so the result is flagged ``processed_capture``.
PROCESSING_FACTS = ("echo_cancellation", "noise_suppression", "auto_gain_control")


def capture_flags(capture: dict[str, Any] | None, wav_fs_hz: int) -> list[str]:
    """``processed_capture`` when any processing fact is true; ``capture_rate_differs`` when the client's
    ``sample_rate_hz`` or ``context_sample_rate_hz`` is not the WAV's declared rate (the clock check then
    decides whether the audio can be analysed)."""
    if not capture:
        return []
    flags = []
    if any(capture.get(name) is True for name in PROCESSING_FACTS):
        flags.append("processed_capture")
    rates = [capture.get(key) for key in ("sample_rate_hz", "context_sample_rate_hz")]
    if any(isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate != wav_fs_hz for rate in rates):
        flags.append("capture_rate_differs")
    return flags


def _analyze_one(task: AnalysisTask, key: str, capture: dict[str, Any] | None) -> dict[str, Any]:
    path = task.blobs.open().local_path(key)
    if path is None:
        raise FileNotFoundError(f"no blob {key!r} in the measurement blob store")
    signal, fs_hz = _first_channel(path)
    if task.source is AnalysisSource.IMPULSE_RESPONSE:
        return analyze_impulse_response(signal, fs_hz)
    declared_fs_hz = fs_hz
    if fs_hz != task.sweep.fs_hz:
        # The phone recorded at another rate than the sweep's: bring the recording to the sweep's rate.
        common = math.gcd(fs_hz, task.sweep.fs_hz)
        signal = resample_poly(signal, task.sweep.fs_hz // common, fs_hz // common)
    return analyze_sweep_recording(
        signal, task.sweep, declared_fs_hz=declared_fs_hz, flags=capture_flags(capture, fs_hz), capture=capture
    )


def analyze_uploads(
    task: AnalysisTask, *, progress: Callable[[float, str], None] | None = None
) -> dict[str, dict[str, Any]]:
    """One report per upload (the shared result schema, plus ``source``), or ``{"error"}`` for that upload.

    A recording the checks refuse as a whole gets the refusal's code (``sample_rate_mismatch``,
    ``impulsive_noise``) and its ``recording`` section; any other ValueError ``analysis_failed``."""
    results: dict[str, dict[str, Any]] = {}
    count = len(task.uploads)
    captures = task.captures or (None,) * count
    for index, ((name, key), capture) in enumerate(zip(task.uploads, captures)):
        if progress is not None:
            progress(index / count, f"analyzing {name} ({index + 1}/{count})")
        try:
            report = _analyze_one(task, key, capture)
        except RecordingRefused as exc:
            report = {"error": {"code": exc.code, "message": exc.message}, "recording": exc.recording}
        except ValueError as exc:
            report = {"error": {"code": "analysis_failed", "message": str(exc)}}
        results[name] = {"source": task.source.value, **report}
    if progress is not None:
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
