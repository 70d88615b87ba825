"""Real audio for the tests: a synthetic room (exponentially decaying noise of known T) and recordings."""

from __future__ import annotations

import io

import numpy as np
import soundfile
from scipy.signal import fftconvolve


def room_ir(fs_hz: int, rt_s: float, length_s: float, seed: int = 1) -> np.ndarray:
    """A direct impulse, then Gaussian noise whose energy falls 60 dB in ``rt_s`` (a diffuse decay)."""
    rng = np.random.default_rng(seed)
    t_s = np.arange(int(length_s * fs_hz)) / fs_hz
    ir = rng.standard_normal(t_s.size) * 10.0 ** (-3.0 * t_s / rt_s) * 0.3
    ir[0] = 1.0
    return ir


def sweep_recording(
    sweep: np.ndarray, ir: np.ndarray, fs_hz: int, *, offset_s: float, noise_dbfs: float, seed: int = 2
) -> np.ndarray:
    """What a microphone records: ``offset_s`` of room noise, then the sweep through the room, plus noise."""
    rng = np.random.default_rng(seed)
    wet = fftconvolve(sweep, ir)
    recording = np.concatenate((np.zeros(int(offset_s * fs_hz)), wet))
    recording *= 0.5 / np.max(np.abs(recording))
    return recording + rng.standard_normal(recording.size) * 10.0 ** (noise_dbfs / 20.0)


def encode(samples: np.ndarray, fs_hz: int, audio_format: str = "WAV", subtype: str = "PCM_24") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, fs_hz, format=audio_format, subtype=subtype)
    return buffer.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    samples, fs_hz = soundfile.read(io.BytesIO(data), dtype="float64")
    return samples, fs_hz
