"""A job's analyses as the storage service's records (pure): ``analysis_outputs`` and, for a job created
outside a lobby, its own ``measurements`` record.

One output per analyzed upload, under the id ``{job_id}:{upload_name}`` (an upload name is at most 64
characters of ``A-Za-z0-9._-``, so ids longer than storage's 64 become ``h-`` + 40 hex digits of their
SHA-256): analyzing the upload again replaces the output instead of adding one. An upload named after
the lobby's convention ``speaker-{i}_mic-{j}.wav`` gives ``speaker_id`` ``speaker-{i}`` and
``microphone_id`` ``mic-{j}`` (indices into the lobby measurement's ``parameters.speakers`` and
``parameters.microphones``). Curves (decay curves, frequency response) go to ``curves``, everything else
of the report to ``metrics``; an upload whose analysis failed keeps its ``{"error"}`` there.
"""

from __future__ import annotations

import re
from typing import Any

from sonalyze.measurement.jobs import Job, JobStatus
from sonalyze.storage.ids import storage_id

Record = dict[str, Any]

CURVE_KEYS = ("decay_curves", "frequency_response")
STANDALONE_KIND = "sweep_job"
"""``kind`` of the measurement record of a job created outside a lobby."""

_LOBBY_UPLOAD = re.compile(r"speaker-(\d+)_mic-(\d+)\.wav")


def output_id(job_id: str, upload_name: str) -> str:
    return storage_id(f"{job_id}:{upload_name}")


def output_record(job: Job, upload_name: str, result: dict[str, Any]) -> Record:
    match = _LOBBY_UPLOAD.fullmatch(upload_name)
    return {
        "id": output_id(job.job_id, upload_name),
        "measurement_id": job.job_id,
        "speaker_id": f"speaker-{match[1]}" if match else None,
        "microphone_id": f"mic-{match[2]}" if match else None,
        "parameters": {"upload": upload_name, "source": result.get("source"), "sweep": job.sweep},
        "metrics": {k: v for k, v in result.items() if k not in CURVE_KEYS},
        "curves": {k: result[k] for k in CURVE_KEYS if k in result} or None,
    }


def measurement_record(job: Job) -> Record:
    """A standalone job as a measurement: ``status`` is the job's, ``finished_at`` its last final change."""
    return {
        "id": job.job_id,
        "kind": STANDALONE_KIND,
        "status": job.status.value,
        "parameters": {"sample_rate_hz": job.sample_rate_hz, "sweep": job.sweep, "summary": job.summary},
        "started_at": job.created_at.isoformat(),
        "finished_at": job.updated_at.isoformat() if job.status in (JobStatus.DONE, JobStatus.FAILED) else None,
    }
