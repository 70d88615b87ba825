"""Jobs on disk, durable without a database.

    DATA_DIR/jobs/{job_id}/job.json          the job, replaced atomically (temp + fsync + os.replace)
    DATA_DIR/jobs/{job_id}/sweep.wav         the sweep to play, written once at creation
    DATA_DIR/jobs/{job_id}/uploads/{name}    each upload, streamed to a ``.part`` file then renamed

Nothing is ever visible under a final name before it is complete; leftover ``.part`` files from a
crash are removed at start-up. All methods are blocking: call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile

from sonalyze.common.durable import fsync_dir
from sonalyze.measurement.jobs import JOB_ID_PATTERN, SWEEP_FILE_FORMAT, Job

PARTIAL_SUFFIX = ".part"


def commit_file(temp_path: Path, final_path: Path) -> None:
    """Make a fully written ``temp_path`` durable and visible as ``final_path`` in one step."""
    with open(temp_path, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp_path, final_path)
    fsync_dir(final_path.parent)


class JobStore:
    def __init__(self, data_dir: Path) -> None:
        self.jobs_dir = data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID_PATTERN.fullmatch(job_id):  # never build a path from an unchecked id
            raise ValueError(f"invalid job id {job_id!r}")
        return self.jobs_dir / job_id

    def sweep_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "sweep.wav"

    def upload_path(self, job_id: str, name: str) -> Path:
        return self.job_dir(job_id) / "uploads" / name

    def partial_path(self, job_id: str) -> Path:
        """A fresh temporary file name beside the uploads (same file system, so the rename is atomic)."""
        return self.job_dir(job_id) / "uploads" / f".incoming-{uuid.uuid4().hex}{PARTIAL_SUFFIX}"

    def create(self, job: Job, sweep: np.ndarray) -> None:
        """Write the sweep WAV, then ``job.json``: a job that exists always has its sweep."""
        job_dir = self.job_dir(job.job_id)
        (job_dir / "uploads").mkdir(parents=True)
        temp_path = job_dir / f".sweep-{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
        soundfile.write(temp_path, sweep, job.sample_rate_hz, subtype=SWEEP_FILE_FORMAT["subtype"], format="WAV")
        commit_file(temp_path, self.sweep_path(job.job_id))
        self.save(job)

    def save(self, job: Job) -> None:
        job_dir = self.job_dir(job.job_id)
        temp_path = job_dir / f".job-{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
        temp_path.write_bytes(job.model_dump_json().encode())
        commit_file(temp_path, job_dir / "job.json")

    def load(self, job_id: str) -> Job | None:
        if not JOB_ID_PATTERN.fullmatch(job_id):
            return None
        try:
            text = (self.jobs_dir / job_id / "job.json").read_bytes()
        except FileNotFoundError:
            return None
        return Job.model_validate_json(text)

    def job_ids(self) -> Iterator[str]:
        for entry in self.jobs_dir.iterdir():
            if JOB_ID_PATTERN.fullmatch(entry.name) and (entry / "job.json").is_file():
                yield entry.name

    def remove_partials(self, job_id: str) -> int:
        """Delete leftover temporary files of ``job_id`` (after a crash); how many there were."""
        job_dir = self.job_dir(job_id)
        leftovers = [*job_dir.glob(f".*{PARTIAL_SUFFIX}"), *(job_dir / "uploads").glob(f".*{PARTIAL_SUFFIX}")]
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)
