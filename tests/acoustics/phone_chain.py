"""A simulated phone measurement chain, for the recording checks (generated here, nothing downloaded).

The job's sweep is played through a phone loudspeaker model (4th-order Butterworth high-pass — 24 dB per
octave — a +6 dB resonance, a memoryless nonlinearity giving 2nd and 3rd harmonics at −30 dB, applied at
4× the rate as in an analogue stage), convolved with a room, then recorded as a phone would: from a
random moment before the sweep, with a clock offset, background noise at a given SNR, optional door slam,
slow gain riding, a dropout, a cut ending, and a lossy codec round trip through ffmpeg.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile
from scipy import signal

from sonalyze.acoustics.sweep import SweepParams, exponential_sweep

from .synthetic import decaying_multisine

FFMPEG = shutil.which("ffmpeg")


def loudspeaker(x: np.ndarray, fs_hz: int, *, highpass_hz: float = 200.0, resonance_hz: float = 900.0) -> np.ndarray:
    """A phone loudspeaker: high-pass (24 dB/octave), +6 dB resonance (Q 2), −30 dB H2 and H3."""
    sos = signal.butter(4, highpass_hz, btype="highpass", fs=fs_hz, output="sos")
    y = resonance(signal.sosfilt(sos, x), fs_hz, resonance_hz)
    amplitude = float(np.max(np.abs(y)))
    over = signal.resample_poly(y, 4, 1)
    # x + a2·x² + a3·x³ on a sine of amplitude A: H2 = a2·A/2, H3 = a3·A²/4 relative to the fundamental
    a2 = 2 * 10 ** (-30 / 20) / amplitude
    a3 = 4 * 10 ** (-30 / 20) / amplitude**2
    return signal.resample_poly(over + a2 * over**2 + a3 * over**3, 1, 4)


def resonance(x: np.ndarray, fs_hz: int, resonance_hz: float = 900.0) -> np.ndarray:
    """The loudspeaker's response inside the bands where it radiates: its +6 dB resonance (Q 2, a peaking
    biquad whose ringing lasts 7 ms to −60 dB), without the roll-off below them or the distortion."""
    b, a = _peaking(resonance_hz, 6.0, 2.0, fs_hz)
    return signal.lfilter(b, a, x)


def _peaking(f_hz: float, gain_db: float, q: float, fs_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """RBJ audio-EQ-cookbook peaking biquad."""
    big_a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * f_hz / fs_hz
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * big_a, -2 * np.cos(w0), 1 - alpha * big_a])
    a = np.array([1 + alpha / big_a, -2 * np.cos(w0), 1 - alpha / big_a])
    return b / a[0], a / a[0]


def synthetic_room(rt_s: list[float] | float, fs_hz: int, *, seed: int, direct: float = 1.0) -> np.ndarray:
    """A direct sound, 2 ms of nothing, then band-wise exponential decays (`decaying_multisine`), long
    enough for 100 dB of decay at the longest T."""
    longest = float(np.max(rt_s))
    tail = 0.2 * decaying_multisine(rt_s, fs_hz, longest * 100 / 60 + 0.05, seed=seed)
    ir = np.concatenate((np.zeros(int(0.002 * fs_hz)), tail))
    ir[0] = direct
    return ir


def pyroomacoustics_room(fs_hz: int, max_order: int = 12) -> np.ndarray:
    """A 7 × 5 × 3 m shoebox (α = 0.2, T ≈ 0.7 s), image sources to ``max_order``, no ray tracing
    (deterministic). Order 12 ends the response 0.26 s after the source, −25 to −40 dB down (enough for a
    clock); order 50 gives 1.03 s, −50 dB by 0.6 s (a decay to take metrics from)."""
    import pyroomacoustics as pra

    room = pra.ShoeBox([7.0, 5.0, 3.0], fs=fs_hz, materials=pra.Material(0.2), max_order=max_order, air_absorption=True)
    room.add_source([2.0, 1.5, 1.4])
    room.add_microphone([5.2, 3.1, 1.2])
    room.compute_rir()
    return np.asarray(room.rir[0][0], dtype=float)


@dataclass(frozen=True)
class Chain:
    """How the phone records: everything is optional (a clean chain by default)."""

    clock_ppm: float = 0.0
    snr_db: float = 60.0
    slam_at_s: float | None = None
    """A door slam this long after the first sweep started (in the sweep's time)."""
    slam_db: float = 0.0
    """The slam's peak re the recording's peak."""
    gain_ripple_db: float = 0.0
    """Slow gain riding: a 0.3 Hz sinusoid of this depth, dB."""
    cut_after_s: float | None = None
    """The recording stops this long after the last sweep ends."""
    dropout_at_s: float | None = None
    """The phone loses ``dropout_s`` of samples this long after the first sweep started (a buffer overrun);
    a negative ``dropout_s`` inserts that much silence instead (a glitch)."""
    dropout_s: float = 0.01
    codec: str | None = None
    """"aac" or "opus" (through ffmpeg, 128 kb/s) or None."""
    mislabelled_from_hz: int | None = None
    """The phone recorded at this rate but labelled the file with the sweep's rate."""
    seed: int = 0


def record(params: SweepParams, room_ir: np.ndarray, chain: Chain) -> np.ndarray:
    """The recording (at ``params.fs_hz`` as labelled) of ``params``' sweep played through the chain."""
    fs_hz = params.fs_hz
    rng = np.random.default_rng(chain.seed)
    played = loudspeaker(exponential_sweep(params), fs_hz)
    at_mic = signal.fftconvolve(played, room_ir)[: params.total_samples + int(0.2 * fs_hz)]
    at_mic /= np.max(np.abs(at_mic)) * 2  # −6 dBFS peak
    lead = int(rng.uniform(0.05, 0.6) * fs_hz)  # the phone starts recording before the sweep plays
    y = np.concatenate((np.zeros(lead), at_mic))
    sweep_start = lead + params.silence_before_samples
    if chain.slam_at_s is not None:
        y = y + _door_slam(y.size, sweep_start + int(chain.slam_at_s * fs_hz), chain.slam_db, fs_hz, rng)
    if chain.gain_ripple_db:
        t_s = np.arange(y.size) / fs_hz
        y = y * 10 ** (chain.gain_ripple_db / 20 * np.sin(2 * np.pi * 0.3 * t_s))
    signal_power = np.mean(at_mic[params.silence_before_samples : params.silence_before_samples + params.sweep_length_samples] ** 2)
    y = y + rng.standard_normal(y.size) * np.sqrt(signal_power * 10 ** (-chain.snr_db / 10))
    if chain.dropout_at_s is not None:
        at, length = sweep_start + int(chain.dropout_at_s * fs_hz), int(abs(chain.dropout_s) * fs_hz)
        y = np.concatenate((y[:at], y[at + length :]) if chain.dropout_s > 0 else (y[:at], np.zeros(length), y[at:]))
    if chain.cut_after_s is not None:
        end = sweep_start + (params.sweep_count - 1) * params.period_samples + params.sweep_length_samples
        y = y[: end + int(chain.cut_after_s * fs_hz)]
    if chain.clock_ppm:
        ratio = Fraction(1.0 + chain.clock_ppm * 1e-6).limit_denominator(100000)
        y = _resample(y, ratio.numerator, ratio.denominator)
    if chain.mislabelled_from_hz is not None:
        ratio = Fraction(chain.mislabelled_from_hz, fs_hz)
        y = signal.resample_poly(y, ratio.numerator, ratio.denominator)
    if chain.codec is not None:
        y = codec_round_trip(y, fs_hz, chain.codec)
    return y


def _resample(y: np.ndarray, up: int, down: int) -> np.ndarray:
    """Band-limited resampling by exactly up/down (polyphase, Kaiser-windowed; an FFT resampling of an
    arbitrary length can take a minute when the length has large prime factors)."""
    return signal.resample_poly(y, up, down)


def _door_slam(n: int, at: int, level_db: float, fs_hz: int, rng: np.random.Generator) -> np.ndarray:
    """A door slam: a low-heavy thump (a decaying 60–400 Hz burst) with its own 0.5 s reverberation."""
    length = int(0.8 * fs_hz)
    t_s = np.arange(length) / fs_hz
    burst = rng.standard_normal(length) * np.exp(-t_s / 0.08)
    burst = signal.sosfilt(signal.butter(2, [60, 2000], btype="bandpass", fs=fs_hz, output="sos"), burst)
    burst += 0.3 * rng.standard_normal(length) * np.exp(-6.91 * t_s / 0.5)
    burst *= 10 ** (level_db / 20) * 0.5 / np.max(np.abs(burst))
    out = np.zeros(n)
    stop = min(n, at + length)
    out[at:stop] = burst[: stop - at]
    return out


def codec_round_trip(y: np.ndarray, fs_hz: int, codec: str, bitrate: str = "128k") -> np.ndarray:
    """Encode and decode ``y`` with ffmpeg (AAC in .m4a or Opus in .ogg), same length and rate back."""
    encoder, suffix = {"aac": ("aac", ".m4a"), "opus": ("libopus", ".ogg")}[codec]
    with tempfile.TemporaryDirectory() as tmp:
        wav_in, encoded, wav_out = Path(tmp, "in.wav"), Path(tmp, "enc" + suffix), Path(tmp, "out.wav")
        soundfile.write(wav_in, y, fs_hz, subtype="FLOAT")
        run = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y"]
        subprocess.run([*run, "-i", str(wav_in), "-c:a", encoder, "-b:a", bitrate, str(encoded)], check=True)
        subprocess.run([*run, "-i", str(encoded), "-ar", str(fs_hz), "-c:a", "pcm_f32le", str(wav_out)], check=True)
        decoded, _ = soundfile.read(wav_out, dtype="float64", always_2d=True)
    return decoded[:, 0]
