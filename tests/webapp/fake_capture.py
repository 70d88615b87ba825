"""The microphone input of the end-to-end test: the lobby's job sweep through a known room.

Chromium plays ``--use-file-for-fake-audio-capture`` in a loop from an arbitrary point, so the file is a
whole number of periods of a sweep train (one sweep every ``PERIOD_S``) circularly convolved with a
synthetic impulse response whose octave-band energy decays are exactly exponential (a direct sound,
then tests/acoustics/synthetic.py's decaying multisine: a dense random-phase line spectrum, each octave band
with its own decay — a single Gaussian-noise realisation is not straight enough for a 5 % T30 test), plus a
little white noise and a low rumble that leaves the 125 Hz band too little dynamic range for T30 (the band
the app must show as refused).

The app's recording window (``start_recording`` → ``stop_recording``, docs/lobby.md) holds the speaker's
3 s countdown and the job's whole sweep file (0.5 s + ``SWEEP_DURATION_S`` 3 s + 2 s), ≥ 8.5 s; any window
longer than ``PERIOD_S + sweep + 0.1 s`` = 6.7 s holds a whole sweep and at least ``PERIOD_S`` − 3 s of its
decay (the analysis takes the earliest whole sweep: `sonalyze.acoustics.deconvolution.whole_sweep_peak`).
"""

from __future__ import annotations

import numpy as np
import soundfile
from scipy import signal

from sonalyze.acoustics.sweep import SweepParams, exponential_sweep
from tests.acoustics.synthetic import decaying_multisine

FS_HZ = 44100  # Chromium passes a 44.1 kHz mono 16-bit file through bit-exactly
PERIOD_S = 3.6
PERIODS = 4
RT_S = (0.55, 0.65, 0.75, 0.6, 0.5, 0.45, 0.4)  # per octave band 125 Hz–8 kHz (neighbours differ: a band mix-up in the app shows)
PRE_DELAY_SAMPLES = 882  # 20 ms
BANDS_HZ = (125, 250, 500, 1000, 2000, 4000, 8000)


def lobby_sweep(fs_hz: int, duration_s: float = 3.0) -> np.ndarray:
    """The faded sweep alone, with the parameters of the lobby's jobs (SWEEP_DURATION_S, job defaults)."""
    params = SweepParams(fs_hz=fs_hz, duration_s=duration_s)
    whole = exponential_sweep(params)
    start = int(round(params.silence_before_s * fs_hz))
    return whole[start : start + int(round(duration_s * fs_hz))]


def room_ir(seed: int = 7, duration_s: float = 1.5) -> np.ndarray:
    """A direct sound, then octave bands of a decaying multisine (lines every 20 Hz), each with its RT_S."""
    ir = decaying_multisine(list(RT_S), FS_HZ, duration_s, seed=seed, period_s=0.05)
    ir[0] += 2.0 * np.max(np.abs(ir))
    return np.concatenate((np.zeros(PRE_DELAY_SAMPLES), ir))  # room for the band filters' spread before the direct sound


def band_truth(ir: np.ndarray, band_hz: int) -> tuple[float, float]:
    """T30 (Schroeder, line fit −5…−35 dB, ISO 3382-1) and C80 of one octave band of a noiseless IR,
    with scipy's Butterworth filter: independent of sonalyze.acoustics."""
    sos = signal.butter(3, [band_hz / np.sqrt(2), band_hz * np.sqrt(2)], btype="bandpass", fs=FS_HZ, output="sos")
    h2 = signal.sosfiltfilt(sos, ir) ** 2
    edc_db = 10 * np.log10(np.cumsum(h2[::-1])[::-1] / np.sum(h2))
    t_s = np.arange(h2.size) / FS_HZ
    fit = (edc_db <= -5) & (edc_db >= -35) & (t_s < t_s[np.argmax(edc_db < -35)])
    slope = np.polyfit(t_s[fit], edc_db[fit], 1)[0]
    n80 = PRE_DELAY_SAMPLES + int(round(0.08 * FS_HZ))
    return -60.0 / slope, 10 * np.log10(np.sum(h2[:n80]) / np.sum(h2[n80:]))


def capture_signal(seed: int = 7, rumble_dbfs: float = -45.0, noise_dbfs: float = -80.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_period = int(round(PERIOD_S * FS_HZ))
    excitation = np.zeros(n_period)
    sweep = lobby_sweep(FS_HZ)
    excitation[: sweep.size] = sweep
    ir = room_ir(seed)
    n_fft = n_period
    periodic = np.fft.irfft(np.fft.rfft(excitation, n_fft) * np.fft.rfft(ir, n_fft), n_fft)  # circular: the loop is seamless
    periodic *= 0.25 / np.max(np.abs(periodic))
    out = np.tile(periodic, PERIODS)
    sos = signal.butter(4, [30, 110], btype="bandpass", fs=FS_HZ, output="sos")
    rumble = signal.sosfilt(sos, rng.standard_normal(out.size + FS_HZ))[FS_HZ:]
    rumble *= 10 ** (rumble_dbfs / 20) / np.sqrt(np.mean(rumble**2))
    white = rng.standard_normal(out.size) * 10 ** (noise_dbfs / 20)
    return out + rumble + white


def write_capture_wav(path, **kwargs) -> None:
    soundfile.write(str(path), capture_signal(**kwargs), FS_HZ, subtype="PCM_16")
