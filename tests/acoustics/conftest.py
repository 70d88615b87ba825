import numpy as np
import pytest
from scipy import signal

from sonalyze.acoustics.sweep import SweepParams, exponential_sweep

from .synthetic import decaying_multisine


@pytest.fixture(scope="session")
def sweep_params() -> SweepParams:
    return SweepParams()


@pytest.fixture(scope="session")
def room_ir() -> np.ndarray:
    """A 1.2 s room response: direct sound, then a decay with T = 0.8 s, at 48 kHz."""
    ir = 0.2 * decaying_multisine(0.8, 48000, 1.2, seed=21)
    ir[0] = 1.0
    return ir


def record(
    params: SweepParams,
    ir: np.ndarray,
    *,
    seed: int,
    noise_db: float = -80.0,
    length_s: float = 10.0,
    loudspeaker=None,
):
    """The sweep played through ``ir``, starting at a random moment, plus white noise at ``noise_db`` dBFS.

    ``loudspeaker``: a memoryless nonlinearity applied to the played signal (harmonic distortion), at 4×
    the sampling rate and then low-passed back, as in an analogue amplifier and an ADC: no aliasing.
    """
    rng = np.random.default_rng(seed)
    sweep = exponential_sweep(params)
    if loudspeaker is not None:
        sweep = signal.resample_poly(loudspeaker(signal.resample_poly(sweep, 4, 1)), 1, 4)
    played = signal.fftconvolve(sweep, ir)
    offset = int(rng.uniform(0.05, 1.0) * params.fs_hz)
    rec = np.zeros(int(length_s * params.fs_hz))
    n = min(rec.size - offset, played.size)
    rec[offset : offset + n] = played[:n]
    return rec + rng.standard_normal(rec.size) * 10 ** (noise_db / 20), offset
