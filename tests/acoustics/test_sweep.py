"""Exponential sweep generation and its inverse filter (Farina 2000; ISO 18233 Annex B)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import signal

from sonalyze.acoustics.sweep import SweepParams, exponential_sweep, inverse_filter


def test_defaults_and_properties():
    p = SweepParams()
    assert p.validate() is p
    assert p.sweep_start_s == 0.5
    assert p.sweep_length_samples == 240000
    assert p.total_samples == 24000 + 240000 + 96000
    assert_allclose(p.total_duration_s, 7.5)
    assert_allclose(p.harmonic_advance_s(2), 5.0 * np.log(2) / np.log(1000))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"f_end_hz": 30000.0}, "Nyquist"),
        ({"fs_hz": 16000, "f_end_hz": 8001.0}, "Nyquist"),
        ({"f_start_hz": 0.0}, "f_start_hz"),
        ({"f_start_hz": 500.0, "f_end_hz": 400.0}, "f_start_hz < f_end_hz"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"silence_after_s": -1.0}, "silence"),
        ({"level_dbfs": 3.0}, "level_dbfs"),
        ({"fade_s": 2.0}, "fade_s"),
        ({"fs_hz": 1000}, "fs_hz"),
    ],
)
def test_validate_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SweepParams(**kwargs).validate()
    with pytest.raises(ValueError):
        exponential_sweep(SweepParams(**kwargs))


def test_signal_layout_level_and_frequency():
    p = SweepParams(duration_s=2.0, silence_before_s=0.25, silence_after_s=1.0, level_dbfs=-6.0)
    x = exponential_sweep(p)
    assert x.dtype == np.float64 and x.size == p.total_samples
    start = p.silence_before_samples
    assert not x[:start].any() and not x[start + p.sweep_length_samples :].any()
    assert_allclose(np.abs(x).max(), 10 ** (-6 / 20), rtol=1e-3)
    # instantaneous frequency f1·(f2/f1)^(t/T): count zero crossings around t = T/2 (≈ 632 Hz)
    mid = start + p.sweep_length_samples // 2
    seg = x[mid - 480 : mid + 480]  # 20 ms
    crossings = np.count_nonzero(np.diff(np.signbit(seg)))
    expected_hz = p.f_start_hz * (p.f_end_hz / p.f_start_hz) ** 0.5
    assert_allclose(crossings / 2 / 0.02, expected_hz, rtol=0.05)


def test_inverse_filter_gives_a_unit_in_band_pulse():
    p = SweepParams(duration_s=2.0)
    sweep = exponential_sweep(p)[p.silence_before_samples : p.silence_before_samples + p.sweep_length_samples]
    pulse = signal.fftconvolve(sweep, inverse_filter(p))
    peak = p.sweep_length_samples - 1
    assert int(np.argmax(np.abs(pulse))) == peak
    near = pulse[peak - 4800 : peak + 4800]  # ±100 ms
    assert 10 * np.log10((np.sum(pulse**2) - np.sum(near**2)) / np.sum(near**2)) < -40.0
    spectrum = np.abs(np.fft.rfft(near))
    f_hz = np.fft.rfftfreq(near.size, 1 / p.fs_hz)
    band = (f_hz >= 100.0) & (f_hz < p.f_end_hz / 1.5)
    assert_allclose(20 * np.log10(spectrum[band]), 0.0, atol=0.1)
    # outside the sweep the inverse does not blow up the noise
    assert spectrum[f_hz > 23000].max() < 0.5
