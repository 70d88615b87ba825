"""Octave filters against the IEC 61260-1 class-1 limits at the centre, ±1 and ±2 octaves."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import signal

from sonalyze.acoustics import bands


def test_nominal_and_exact_centres():
    assert bands.OCTAVE_BANDS_HZ == (125, 250, 500, 1000, 2000, 4000, 8000)
    assert_allclose(bands.exact_centre_hz(125), 125.89, atol=0.01)
    assert_allclose(bands.exact_centre_hz(8000), 7943.28, atol=0.01)
    lo, hi = bands.octave_band_edges_hz(1000)
    assert_allclose((lo, hi), (707.95, 1412.54), atol=0.01)


@pytest.mark.parametrize("fs_hz", [44100, 48000])
@pytest.mark.parametrize("band_hz", bands.OCTAVE_BANDS_HZ)
def test_class_1_mask_zero_phase(fs_hz, band_hz):
    fm = bands.exact_centre_hz(band_hz)
    freqs = np.array([fm / 4, fm / 2, fm, 2 * fm, 4 * fm])
    inside = freqs < fs_hz / 2
    _, h = signal.sosfreqz(bands.octave_sos(band_hz, fs_hz), worN=freqs[inside], fs=fs_hz)
    gain_db = 2 * 20 * np.log10(np.abs(h))  # forward-backward squares the magnitude
    limits = np.array([-40.5, -16.6, None, -16.6, -40.5], dtype=object)[inside]
    for g, limit, f in zip(gain_db, limits, freqs[inside]):
        if limit is None:
            assert -0.4 <= g <= 0.4, (f, g)
        else:
            assert g <= limit, (f, g)


def test_filter_is_zero_phase():
    fs_hz = 48000
    x = np.zeros(fs_hz)
    x[fs_hz // 2] = 1.0
    y = bands.octave_filter(x, fs_hz, 1000)
    assert int(np.argmax(np.abs(y))) == fs_hz // 2
    assert_allclose(y[fs_hz // 2 - 200 : fs_hz // 2], y[fs_hz // 2 + 200 : fs_hz // 2 : -1], atol=1e-12)


def test_band_energies_add_up_for_white_noise():
    fs_hz = 48000
    x = np.random.default_rng(0).standard_normal(4 * fs_hz)
    bank = bands.octave_filter_bank(x, fs_hz)
    assert list(bank) == list(bands.OCTAVE_BANDS_HZ)
    # white noise: band power ∝ bandwidth (0.707·fm)
    for band_hz, y in bank.items():
        expected = 0.7071 * bands.exact_centre_hz(band_hz) / (fs_hz / 2)
        assert_allclose(np.mean(y**2), expected, rtol=0.15)


def test_8khz_band_needs_22_5_khz():
    assert bands.band_available(8000, 22500) and bands.band_available(8000, 44100)
    assert not bands.band_available(8000, 22050)
    with pytest.raises(ValueError, match="band unavailable"):
        bands.octave_filter(np.ones(100), 22050, 8000)
    assert list(bands.octave_filter_bank(np.ones(1000), 22050)) == [125, 250, 500, 1000, 2000, 4000]
    y = bands.octave_filter(np.random.default_rng(1).standard_normal(4096), 22500, 8000)  # Nyquist-limited design
    assert np.isfinite(y).all()
