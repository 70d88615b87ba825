"""Octave filters against the IEC 61260-1 class-1 limits at the centre, ±1 and ±2 octaves."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from sonalyze.acoustics import bands


def test_nominal_and_exact_centres():
    assert bands.OCTAVE_BANDS_HZ == (125, 250, 500, 1000, 2000, 4000, 8000)
    assert_allclose(bands.exact_centre_hz(125), 125.89, atol=0.01)
    assert_allclose(bands.exact_centre_hz(8000), 7943.28, atol=0.01)
    lo, hi = bands.octave_band_edges_hz(1000)
    assert_allclose((lo, hi), (707.95, 1412.54), atol=0.01)


# IEC 61260-1:2014 Table 1, class 1, typed in from the standard (not taken from bands.py):
# (exponent e of Ω = G^e, minimum and maximum relative attenuation in dB); ±0.5 is approached from
# inside ("in") and outside ("out"); from e = 4 on the minimum stays 70 dB.
IEC_CLASS_1 = [(0, -0.4, 0.4), (1 / 8, -0.4, 0.5), (1 / 4, -0.4, 0.7), (3 / 8, -0.4, 1.4)]
EDGE_IN, EDGE_OUT = (-0.4, 5.3), (1.2, np.inf)
STOP_BAND = [(0.5, 1.2), (1, 16.6), (2, 40.5), (3, 60.0), (4, 70.0)]


def _mask_db(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Limits between breakpoints: linear in the exponent (log frequency), as the standard draws them."""
    a = np.abs(e)
    lo = np.where(a < 0.5, -0.4, np.interp(a, *zip(*STOP_BAND), right=70.0))
    hi = np.where(a < 0.5, np.interp(a, [0, 1 / 8, 1 / 4, 3 / 8, 0.5], [0.4, 0.5, 0.7, 1.4, 5.3]), np.inf)
    return lo, hi


@pytest.mark.parametrize("band_hz", bands.OCTAVE_BANDS_HZ)
def test_class_1_mask_on_a_dense_grid(band_hz):
    fm = bands.exact_centre_hz(band_hz)
    e = np.concatenate((np.linspace(-5, 5, 4001), [-0.5 - 1e-9, -0.5 + 1e-9, 0.5 - 1e-9, 0.5 + 1e-9]))
    attenuation_db = -20 * np.log10(np.maximum(bands.octave_response(fm * bands.OCTAVE_RATIO**e, band_hz), 1e-300))
    lo, hi = _mask_db(e)
    assert np.all(attenuation_db >= lo) and np.all(attenuation_db <= hi), e[(attenuation_db < lo) | (attenuation_db > hi)]
    for exponent, low, high in IEC_CLASS_1:  # the breakpoints themselves, both sides
        for sign in (1, -1):
            a = -20 * np.log10(bands.octave_response(np.array([fm * bands.OCTAVE_RATIO ** (sign * exponent)]), band_hz)[0])
            assert low <= a <= high, (exponent, a)
    edge = -20 * np.log10(bands.octave_response(fm * bands.OCTAVE_RATIO ** np.array([0.5 - 1e-9, 0.5 + 1e-9]), band_hz))
    assert EDGE_IN[0] <= edge[0] <= EDGE_IN[1] and EDGE_OUT[0] <= edge[1]
    assert_allclose(edge, 3.01, atol=0.01)  # the design: −3 dB at the nominal edges


@pytest.mark.parametrize("fs_hz", [44100, 48000])
@pytest.mark.parametrize("band_hz", [125, 1000, 8000])
def test_filtering_applies_that_response(fs_hz, band_hz):
    """A sine through octave_filter comes out with the amplitude the response gives (and no phase shift)."""
    fm = bands.exact_centre_hz(band_hz)
    t_s = np.arange(fs_hz) / fs_hz
    for ratio in (1.0, 2 ** 0.25, 0.5, 2.0):
        f_hz = round(fm * ratio)  # whole Hz: an integer number of periods in 1 s
        if f_hz >= fs_hz / 2:
            continue
        x = np.cos(2 * np.pi * f_hz * t_s)
        y = bands.octave_filter(x, fs_hz, band_hz)
        expected = float(bands.octave_response(np.array([f_hz]), band_hz)[0])
        mid = slice(fs_hz // 4, 3 * fs_hz // 4)  # away from the ends, where zero padding shows
        assert_allclose(y[mid], expected * x[mid], atol=2e-3 * max(expected, 1e-3) + 1e-6)


def test_leakage_fraction_sees_a_missing_band():
    fs_hz = 48000
    x = np.random.default_rng(3).standard_normal(2 * fs_hz)
    flat = bands.leakage_fraction(x, fs_hz)
    assert all(0.01 < v < 0.08 for v in flat.values()), flat  # a white spectrum: a few % at the skirts
    spec = np.fft.rfft(x)
    f_hz = np.fft.rfftfreq(x.size, 1 / fs_hz)
    lo_hz, hi_hz = bands.octave_band_edges_hz(125)
    spec[(f_hz >= lo_hz) & (f_hz < hi_hz)] *= 10 ** (-40 / 20)  # nothing left in the 125 Hz band itself
    holed = bands.leakage_fraction(np.fft.irfft(spec, x.size), fs_hz)
    assert holed[125] > 0.9 and holed[1000] == pytest.approx(flat[1000], abs=1e-9)


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
