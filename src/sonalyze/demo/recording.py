"""What a virtual phone microphone records: the played sweep through the room, with noise, late start."""

from __future__ import annotations

import io

import numpy as np
import soundfile
from scipy.signal import oaconvolve

#: Peak level of the written recording (full scale = 1), far from the measurement service's clipping check.
RECORDING_PEAK = 0.5


def virtual_recording(
    sweep: np.ndarray,
    rir: np.ndarray,
    *,
    snr_db: float,
    start_offset_s: float,
    fs_hz: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Convolve the played ``sweep`` with the room impulse response and add white noise.

    ``snr_db`` is the ratio of the mean power of the room's answer (over the sweep) to the noise power.
    The recording begins ``start_offset_s`` earlier than the playback (the phone started recording first),
    and is scaled to a peak of ``RECORDING_PEAK``.
    """
    if not (np.ndim(sweep) == 1 and np.ndim(rir) == 1 and len(sweep) and len(rir)):
        raise ValueError("sweep and rir must be non-empty 1-D arrays")
    wet = oaconvolve(sweep, rir)
    active = np.abs(sweep) > 0
    signal_power = float(np.mean(wet[: len(sweep)][active] ** 2))
    lead = np.zeros(int(round(start_offset_s * fs_hz)))
    recording = np.concatenate([lead, wet])
    noise_power = signal_power / 10 ** (snr_db / 10)
    recording = recording + rng.normal(0.0, np.sqrt(noise_power), len(recording))
    return recording * (RECORDING_PEAK / np.max(np.abs(recording)))


def wav_bytes(signal: np.ndarray, fs_hz: int) -> bytes:
    """``signal`` as a 24-bit PCM WAV file."""
    buffer = io.BytesIO()
    soundfile.write(buffer, signal, fs_hz, format="WAV", subtype="PCM_24")
    return buffer.getvalue()
