"""Receiving an upload: the name check, the streamed body (raw or multipart), the audio check.

The body is written to a temporary file while it arrives, counting bytes: past the limit the request
is refused at once (413) without reading the rest. The file is then opened with soundfile (WAV or
FLAC) and refused with 422 and a reason when it is not audio, empty, silent, clipped or too short.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from sonalyze.common.errors import BadRequest, PayloadTooLarge, Unprocessable
from sonalyze.measurement.jobs import MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, UPLOAD_NAME_PATTERN, AudioFacts

ACCEPTED_FORMATS = frozenset({"WAV", "WAVEX", "FLAC"})
MIN_DURATION_S = 0.1
"""Shortest accepted upload: below this no decay can be evaluated at all."""
FULL_SCALE = 0.999
"""A sample at or above this magnitude (−0.009 dBFS) counts as full scale."""
MAX_CLIPPED_FRACTION = 0.001
"""More than 0.1 % of the samples at full scale: the recording is clipped."""
_BLOCK_FRAMES = 1 << 16
MAX_CAPTURE_FACTS_BYTES = 4096
"""Largest decoded ``X-Capture-Facts`` JSON object (contract C3)."""
MAX_CAPTURE_FACTS_KEYS = 32
MAX_CAPTURE_TEXT = 256
#: Known capture facts and their types (Web Audio ``MediaTrackSettings`` / ``AudioContext`` values).
CAPTURE_FACT_TYPES: dict[str, type] = {
    "sample_rate_hz": float,
    "context_sample_rate_hz": float,
    "echo_cancellation": bool,
    "noise_suppression": bool,
    "auto_gain_control": bool,
    "base_latency_s": float,
    "output_latency_s": float,
    "user_agent": str,
    "channel_count": float,
    "device_label": str,
}


def check_upload_name(name: str) -> str:
    """``name`` if it is a plain file name (letters, digits, ``.``, ``_``, ``-``; 1–64 chars), else 400."""
    if not UPLOAD_NAME_PATTERN.fullmatch(name):
        raise BadRequest(
            "an upload name is 1–64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            code="invalid_name",
            details={"name": name[:100]},
        )
    return name


def _too_large(limit_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the upload exceeds {limit_bytes} bytes (MEASUREMENT_MAX_UPLOAD_MB)",
        details={"max_bytes": limit_bytes},
        headers={"Connection": "close"},
    )


def check_declared_length(content_length: str | None, limit_bytes: int) -> None:
    """Refuse before reading anything when ``Content-Length`` already says the body is too large."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit_bytes:
        raise _too_large(limit_bytes)


async def _bounded(chunks: AsyncIterator[bytes], limit_bytes: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit_bytes:
            raise _too_large(limit_bytes)
        yield chunk


async def receive_raw(chunks: AsyncIterator[bytes], out: BinaryIO, limit_bytes: int) -> None:
    """The body is the file."""
    async for chunk in _bounded(chunks, limit_bytes):
        out.write(chunk)


class _FilePartWriter:
    """MultipartParser callbacks that write the first file part (a ``filename`` or the field ``file``)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.found = False
        self._writing = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        self._writing = not self.found and (b"filename" in options or options.get(b"name") == b"file")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writing:
            self.out.write(data[start:end])

    def _part_end(self) -> None:
        if self._writing:
            self.found = True
            self._writing = False


async def receive_multipart(chunks: AsyncIterator[bytes], content_type: str, out: BinaryIO, limit_bytes: int) -> None:
    """``multipart/form-data``: the first part with a file name (or named ``file``) is the file."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary", code="invalid_multipart")
    writer = _FilePartWriter(out)
    try:
        parser = MultipartParser(boundary, writer.callbacks())
        async for chunk in _bounded(chunks, limit_bytes):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from exc
    if not writer.found:
        raise BadRequest(
            "the multipart body has no file part (a part with a filename, or named 'file')", code="invalid_multipart"
        )


def _bad_facts(message: str) -> BadRequest:
    return BadRequest(f"X-Capture-Facts: {message}", code="invalid_capture_facts")


def parse_capture_facts(header: str | None) -> dict[str, object] | None:
    """The ``X-Capture-Facts`` header (base64url of a JSON object, ≤ 4 KiB decoded) as a dict, or None.

    Known keys must have their type (`CAPTURE_FACT_TYPES`: numbers finite and ≥ 0, rates 1–768000 Hz,
    texts ≤ 256 characters); other keys are kept when their value is a short text, a number, a boolean
    or null; at most 32 keys. Anything else: 400 ``invalid_capture_facts``.
    """
    if header is None:
        return None
    if len(header) > 2 * MAX_CAPTURE_FACTS_BYTES:
        raise _bad_facts(f"longer than {MAX_CAPTURE_FACTS_BYTES} bytes")
    try:
        raw = base64.urlsafe_b64decode(header.strip() + "=" * (-len(header.strip()) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _bad_facts("not base64url") from exc
    if len(raw) > MAX_CAPTURE_FACTS_BYTES:
        raise _bad_facts(f"longer than {MAX_CAPTURE_FACTS_BYTES} bytes")
    try:
        facts = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad_facts("not JSON") from exc
    if not isinstance(facts, dict):
        raise _bad_facts("not a JSON object")
    if len(facts) > MAX_CAPTURE_FACTS_KEYS:
        raise _bad_facts(f"more than {MAX_CAPTURE_FACTS_KEYS} keys")
    for key, value in facts.items():
        if len(key) > 64:
            raise _bad_facts("a key longer than 64 characters")
        expected = CAPTURE_FACT_TYPES.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            if len(value) > MAX_CAPTURE_TEXT or (expected not in (None, str)):
                raise _bad_facts(f"{key!r} must be {_type_name(expected)}")
        elif isinstance(value, bool):
            if expected not in (None, bool):
                raise _bad_facts(f"{key!r} must be {_type_name(expected)}")
        elif isinstance(value, (int, float)):
            if expected not in (None, float) or not math.isfinite(value) or value < 0:
                raise _bad_facts(f"{key!r} must be {_type_name(expected or float)}")
            if key.endswith("sample_rate_hz") and not 1 <= value <= 768000:
                raise _bad_facts(f"{key!r} must be within 1–768000 Hz")
        else:
            raise _bad_facts(f"{key!r} must be a text, a number, a boolean or null")
    return facts


def _type_name(expected: type | None) -> str:
    return {str: "a text (≤ 256 characters)", bool: "a boolean", float: "a finite number ≥ 0"}.get(
        expected, "a text, a number, a boolean or null"
    )


def _refuse(code: str, message: str, **details: object) -> Unprocessable:
    return Unprocessable(message, code=code, details=details or None)


def check_sample_rate(fs_hz: int) -> None:
    """422 ``unsupported_sample_rate`` outside 8–192 kHz, for sweeps and uploads alike: the analysis
    resamples to the sweep's rate, and a file declaring 1 Hz would ask it for gigabytes."""
    if not MIN_SAMPLE_RATE_HZ <= fs_hz <= MAX_SAMPLE_RATE_HZ:
        raise _refuse(
            "unsupported_sample_rate",
            f"{fs_hz} Hz is not a supported sample rate ({MIN_SAMPLE_RATE_HZ}–{MAX_SAMPLE_RATE_HZ} Hz)",
            sample_rate_hz=fs_hz, min_hz=MIN_SAMPLE_RATE_HZ, max_hz=MAX_SAMPLE_RATE_HZ,
        )


def inspect_audio(path: Path, *, max_duration_s: float) -> AudioFacts:
    """Open ``path`` as audio and check it can be analyzed; 422 with a code and a reason when not.

    Codes: ``empty_audio``, ``not_audio``, ``unsupported_format``, ``unsupported_sample_rate``,
    ``too_short``, ``too_long`` (over ``max_duration_s``: a small FLAC of silence decodes to hours),
    ``invalid_samples`` (NaN/inf), ``silent_audio``, ``clipped_audio``. Blocking (reads the whole file
    in blocks), and it checks the header's rate and length before decoding a sample.
    """
    size_bytes = path.stat().st_size
    if size_bytes == 0:
        raise _refuse("empty_audio", "the upload is empty")
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise _refuse("not_audio", f"the upload is not a readable audio file: {exc}") from exc
    if info.format not in ACCEPTED_FORMATS:
        message = f"{info.format} audio is not accepted; send WAV or FLAC"
        raise _refuse("unsupported_format", message, format=info.format)
    check_sample_rate(info.samplerate)
    if info.frames == 0:
        raise _refuse("empty_audio", "the audio file holds no samples")
    duration_s = info.frames / info.samplerate
    if duration_s > max_duration_s:
        raise _refuse(
            "too_long", f"the audio lasts {duration_s:.1f} s; at most {max_duration_s:g} s is accepted (MEASUREMENT_MAX_UPLOAD_S)",
            duration_s=duration_s, max_duration_s=max_duration_s,
        )
    if duration_s < MIN_DURATION_S:
        raise _refuse(
            "too_short", f"the audio lasts {duration_s:.3f} s; at least {MIN_DURATION_S} s is needed",
            duration_s=duration_s, min_duration_s=MIN_DURATION_S,
        )
    peak, clipped, samples = 0.0, 0, 0
    for block in soundfile.blocks(str(path), blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
        magnitude = np.abs(block)
        if not np.isfinite(magnitude).all():
            raise _refuse("invalid_samples", "the audio holds NaN or infinite samples")
        peak = max(peak, float(magnitude.max()))
        clipped += int(np.count_nonzero(magnitude >= FULL_SCALE))
        samples += magnitude.size
    if peak == 0.0:
        raise _refuse("silent_audio", "the audio is digital silence (every sample is zero)")
    if clipped > MAX_CLIPPED_FRACTION * samples:
        raise _refuse(
            "clipped_audio",
            f"{100 * clipped / samples:.2f} % of the samples are at full scale (more than "
            f"{100 * MAX_CLIPPED_FRACTION:g} %): the recording is clipped; record again at a lower level",
            clipped_fraction=clipped / samples,
        )
    return AudioFacts(
        duration_s=duration_s,
        sample_rate_hz=info.samplerate,
        channels=info.channels,
        frames=info.frames,
        format=info.format,
        subtype=info.subtype,
        size_bytes=size_bytes,
        peak_dbfs=20.0 * float(np.log10(peak)),
    )
