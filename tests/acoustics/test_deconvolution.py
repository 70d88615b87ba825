"""Deconvolution of a recorded sweep back to the system's impulse response."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import fft as sp_fft
from scipy import signal

from sonalyze.acoustics import analyze_impulse_response, deconvolve_sweep
from sonalyze.acoustics.deconvolution import PRE_ROLL_S
from sonalyze.acoustics.sweep import SweepParams, exponential_sweep

from .conftest import record


def _band_error_db(estimate: np.ndarray, reference: np.ndarray, fs_hz: int, band_hz=(40.0, 16000.0)) -> float:
    """Energy of (estimate − reference) over the reference's, within the sweep's band, dB."""
    n = sp_fft.next_fast_len(2 * max(estimate.size, reference.size))
    f_hz = np.fft.rfftfreq(n, 1 / fs_hz)
    band = (f_hz >= band_hz[0]) & (f_hz <= band_hz[1])
    e = np.fft.rfft(estimate, n)[band]
    r = np.fft.rfft(reference, n)[band]
    return float(10 * np.log10(np.sum(np.abs(e - r) ** 2) / np.sum(np.abs(r) ** 2)))


def _aligned(ir: np.ndarray, reference: np.ndarray, pre: int) -> np.ndarray:
    """``ir`` shifted so the reference starts ``pre`` samples in (cross-correlation peak)."""
    lag = int(np.argmax(np.abs(signal.correlate(ir, reference[:2048], mode="valid"))))
    assert abs(lag - pre) <= 8, (lag, pre)
    return ir[lag - pre : lag - pre + reference.size + 2 * pre]


@pytest.mark.parametrize("seed", [1, 2])
def test_known_filter_is_recovered(sweep_params, seed):
    fs_hz = sweep_params.fs_hz
    rng = np.random.default_rng(seed)
    # a known filter: a Butterworth band-pass cascaded with a short random decay
    sos = signal.butter(4, [200, 6000], btype="bandpass", fs=fs_hz, output="sos")
    t_s = np.arange(int(0.2 * fs_hz)) / fs_hz
    h = signal.sosfilt(sos, rng.standard_normal(t_s.size) * np.exp(-6.9 * t_s / 0.15))
    h[0] += 0.5
    recording, _ = record(sweep_params, h, seed=seed, noise_db=-70.0)
    ir = deconvolve_sweep(recording, sweep_params, ir_length_s=0.5)
    pre = int(round(PRE_ROLL_S * fs_hz))
    assert ir.size == int(0.5 * fs_hz)
    reference = np.concatenate((np.zeros(pre), h, np.zeros(pre)))
    assert _band_error_db(_aligned(ir, h, pre), reference, fs_hz) <= -40.0


def test_onset_lands_at_the_pre_roll_whatever_the_offset(sweep_params, room_ir):
    pre = int(round(PRE_ROLL_S * sweep_params.fs_hz))
    for seed in (3, 4, 5):
        recording, _ = record(sweep_params, room_ir, seed=seed)
        ir = deconvolve_sweep(recording, sweep_params)
        assert abs(int(np.argmax(np.abs(ir))) - pre) <= 4
        assert ir.size == int(sweep_params.silence_after_s * sweep_params.fs_hz)


def test_harmonic_distortion_does_not_change_t30(sweep_params, room_ir):
    """A loudspeaker with 10 % 2nd and 2.5 % 3rd harmonic: the products land before the linear IR."""
    recording, _ = record(sweep_params, room_ir, seed=6, noise_db=-90.0)
    distorted, _ = record(
        sweep_params, room_ir, seed=6, noise_db=-90.0, loudspeaker=lambda x: x + 0.4 * x**2 + 0.4 * x**3
    )
    clean = analyze_impulse_response(deconvolve_sweep(recording, sweep_params, 1.2), 48000, include_curves=False)
    dirty = analyze_impulse_response(deconvolve_sweep(distorted, sweep_params, 1.2), 48000, include_curves=False)
    assert clean["t30_s"]["reasons"] == {} and dirty["t30_s"]["reasons"] == {}
    for band_i in range(7):
        assert_allclose(dirty["t30_s"]["bands"][band_i], clean["t30_s"]["bands"][band_i], rtol=0.02)
    assert_allclose(clean["t30_s"]["bands"][1:6], 0.8, rtol=0.05)


def test_stereo_recording_uses_the_first_channel(sweep_params, room_ir):
    recording, _ = record(sweep_params, room_ir, seed=7)
    stereo = np.stack((recording, np.random.default_rng(0).standard_normal(recording.size)), axis=1)
    assert_allclose(deconvolve_sweep(stereo, sweep_params), deconvolve_sweep(recording, sweep_params))


def test_44_1_khz():
    params = SweepParams(fs_hz=44100, duration_s=2.0, silence_after_s=1.0)
    h = np.zeros(2000)
    h[0], h[700] = 1.0, -0.5
    recording, _ = record(params, h, seed=8, length_s=5.0)
    ir = deconvolve_sweep(recording, params, 0.2)
    pre = int(round(PRE_ROLL_S * params.fs_hz))
    reference = np.concatenate((np.zeros(pre), h, np.zeros(pre)))
    assert _band_error_db(_aligned(ir, h, pre), reference, 44100) <= -40.0


@pytest.mark.parametrize("phase", [0.02, 0.35, 0.6, 0.9])
def test_a_looped_sweep_cut_by_the_recording_is_ignored(sweep_params, room_ir, phase):
    """A phone recording a looped sweep train starts and ends inside sweeps (``phase``: where in a period
    it starts — silence, partway through the sweep, in the decay): the earliest whole sweep with its decay
    is analysed, the cut ones are ignored, whichever deconvolves the strongest."""
    fs_hz = sweep_params.fs_hz
    period = sweep_params.total_samples
    train = signal.fftconvolve(np.tile(exponential_sweep(sweep_params), 4), room_ir)
    train += np.random.default_rng(10).standard_normal(train.size) * 1e-4
    start = period + int(phase * period)
    window = train[start : start + period + sweep_params.sweep_length_samples + fs_hz]
    h = room_ir[: int(0.9 * fs_hz)]
    ir = deconvolve_sweep(window, sweep_params, ir_length_s=1.0)
    pre = int(round(PRE_ROLL_S * fs_hz))
    reference = np.concatenate((np.zeros(pre), h, np.zeros(pre)))
    assert _band_error_db(_aligned(ir, h, pre), reference, fs_hz) <= -30.0


def test_rejects_bad_recordings(sweep_params, room_ir):
    with pytest.raises(ValueError, match="all zeros"):
        deconvolve_sweep(np.zeros(10 * 48000), sweep_params)
    with pytest.raises(ValueError, match="too short"):
        deconvolve_sweep(np.ones(1000), sweep_params)
    with pytest.raises(ValueError, match="no sweep found"):
        deconvolve_sweep(np.random.default_rng(0).standard_normal(10 * 48000), sweep_params)
    with pytest.raises(ValueError, match="NaN"):
        deconvolve_sweep(np.full(10 * 48000, np.nan), sweep_params)
    recording, offset = record(sweep_params, room_ir, seed=9)
    cut = recording[: offset + sweep_params.silence_before_samples + sweep_params.sweep_length_samples + 100]
    with pytest.raises(ValueError, match="after the sweep"):
        deconvolve_sweep(cut, sweep_params)
    late_start = recording[offset + sweep_params.silence_before_samples + 48000 :]
    with pytest.raises(ValueError, match="starts after the sweep began"):
        deconvolve_sweep(late_start, sweep_params)
    with pytest.raises(ValueError, match="ir_length_s"):
        deconvolve_sweep(recording, sweep_params, ir_length_s=-1.0)
