"""STI (IEC 60268-16 indirect method) against the analytic MTF of an exponential decay."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from sonalyze.acoustics import analyze_impulse_response, sti

from .synthetic import decaying_multisine, sti_mtf_closed_form

FS_HZ = 48000
F_MOD = sti.MODULATION_FREQUENCIES_HZ


def _analytic(rt_s, snr_db=np.inf):
    return sti.sti_from_mtf(np.tile(sti_mtf_closed_form(rt_s, F_MOD, snr_db), (7, 1))).sti


@pytest.mark.parametrize(("rt_s", "expected"), [(0.5, 0.736), (1.0, 0.588), (2.0, 0.437)])
def test_reference_values(rt_s, expected):
    assert_allclose(_analytic(rt_s), expected, atol=0.002)


@pytest.mark.parametrize("rt_s", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("snr_db", [np.inf, 15.0, 3.0])
def test_sti_of_exponential_decay(rt_s, snr_db):
    ir = decaying_multisine(rt_s, FS_HZ, max(1.6, 1.2 * rt_s), seed=9)
    snr = None if np.isinf(snr_db) else np.full(7, snr_db)
    result = sti.speech_transmission_index(ir, FS_HZ, snr_db=snr)
    assert_allclose(result.sti, _analytic(rt_s, snr_db), atol=0.02)
    assert result.mti.shape == (7,) and result.mtf.shape == (7, 14)


def test_sti_with_a_real_noise_floor_in_the_ir():
    rt_s = 0.8
    ir = decaying_multisine(rt_s, FS_HZ, 2.0, seed=10, noise_floor_db=-60.0, pre_delay_s=0.1)
    report = analyze_impulse_response(ir, FS_HZ, include_curves=False)
    assert_allclose(report["sti"]["value"], _analytic(rt_s), atol=0.02)


def test_different_rt_per_band_matches_per_band_mti():
    rts = np.array([1.6, 1.4, 1.2, 1.0, 0.9, 0.8, 0.7])
    ir = decaying_multisine(rts, FS_HZ, 2.5, seed=11)
    expected = sti.sti_from_mtf(np.stack([sti_mtf_closed_form(rt, F_MOD) for rt in rts]))
    result = sti.speech_transmission_index(ir, FS_HZ)
    assert_allclose(result.sti, expected.sti, atol=0.02)
    assert_allclose(result.mti[1:], expected.mti[1:], atol=0.03)


def test_masking_and_threshold():
    mtf = np.ones((7, 14))
    loud = sti.sti_from_mtf(mtf, band_levels_db=np.full(7, 80.0))
    # a perfect channel at a normal level loses a little modulation to masking and threshold only
    assert np.all(loud.mtf < 1.0) and np.all(loud.mtf > 0.95) and loud.sti > 0.95
    # near the threshold of hearing the bands below threshold carry no modulation
    quiet = sti.sti_from_mtf(mtf, band_levels_db=np.full(7, 20.0))
    assert_allclose(quiet.mtf[0], 1.0 / (1.0 + 10 ** ((46 - 20) / 10)))
    assert quiet.mti[0] == 0.0 and quiet.sti < loud.sti - 0.1
    # 125 Hz is never masked: only its threshold counts
    i_s = 10 ** (80 / 10)
    expected_m0 = i_s / (i_s + 10 ** (46 / 10))
    assert_allclose(loud.mtf[0], min(expected_m0, 1.0))
    # L ≥ 100 dB: amdB is the constant −10 dB
    very_loud = sti.sti_from_mtf(mtf, band_levels_db=np.full(7, 110.0))
    i = 10 ** 11
    assert_allclose(very_loud.mtf[3], i / (i + i * 10 ** (-10 / 10) + 10 ** (6.5 / 10)))


def test_masking_slope_table():
    assert_allclose(sti._masking_db(np.array([50.0, 65.0, 80.0, 100.0, 120.0])), [-40.0, -29.9, -19.8, -10.0, -10.0])


def test_snr_without_levels():
    result = sti.sti_from_mtf(np.ones((7, 14)), snr_db=np.zeros(7))
    assert_allclose(result.mtf, 0.5)
    assert_allclose(result.sti, 0.5, atol=1e-12)  # equal MTIs give STI = MTI = TI(0 dB)


def test_invalid_mtf_is_rejected():
    with pytest.raises(ValueError, match="invalid measurement"):
        sti.sti_from_mtf(np.full((7, 14), 1.5))
    with pytest.raises(ValueError, match="shape"):
        sti.sti_from_mtf(np.ones((6, 14)))


@pytest.mark.parametrize(
    ("value", "letter"), [(0.80, "A+"), (0.76, "A+"), (0.74, "A"), (0.70, "B"), (0.62, "D"), (0.37, "J"), (0.30, "U")]
)
def test_rating(value, letter):
    assert sti.rating(value) == letter


def test_low_sampling_rate_cannot_give_sti():
    with pytest.raises(ValueError, match="8000 Hz"):
        sti.speech_transmission_index(decaying_multisine(0.5, 16000, 1.6), 16000)


def test_method_with_background_noise_and_calibration():
    """IEC 60268-16: the SNR from measured speech and noise levels; masking and threshold once a
    calibration makes the levels absolute. Expected values: the analytic MTF with the same corrections."""
    rt_s = 0.8
    ir = decaying_multisine(rt_s, FS_HZ, 2.0, seed=12, noise_floor_db=-70.0, pre_delay_s=0.02)
    speech_dbfs = np.array([-30.0, -30.0, -33.0, -36.0, -40.0, -45.0, -50.0])
    noise_dbfs = np.array([-45.0, -50.0, -55.0, -60.0, -60.0, -65.0, -70.0])
    analytic = np.tile(sti_mtf_closed_form(rt_s, F_MOD), (7, 1))
    plain = analyze_impulse_response(ir, FS_HZ, include_curves=False)["sti"]
    assert plain["method"] == "ir" and plain["code"] is None
    noisy = analyze_impulse_response(ir, FS_HZ, include_curves=False, speech_levels_db=speech_dbfs, noise_levels_db=noise_dbfs)["sti"]
    assert noisy["method"] == "ir+noise"
    assert_allclose(noisy["value"], sti.sti_from_mtf(analytic, snr_db=speech_dbfs - noise_dbfs).sti, atol=0.02)
    calibration_db = 100.0  # 0 dBFS = 100 dB SPL: speech at 70 … 50 dB SPL
    masked = analyze_impulse_response(
        ir, FS_HZ, include_curves=False, speech_levels_db=speech_dbfs, noise_levels_db=noise_dbfs, calibration_db=calibration_db
    )["sti"]
    assert masked["method"] == "ir+noise+masking"
    expected = sti.sti_from_mtf(analytic, snr_db=speech_dbfs - noise_dbfs, band_levels_db=speech_dbfs + calibration_db).sti
    assert_allclose(masked["value"], expected, atol=0.02)
    assert masked["value"] < noisy["value"] < plain["value"]
    with pytest.raises(ValueError, match="needs speech_levels_db"):
        analyze_impulse_response(ir, FS_HZ, noise_levels_db=noise_dbfs)
    with pytest.raises(ValueError, match="7 finite"):
        analyze_impulse_response(ir, FS_HZ, speech_levels_db=speech_dbfs[:6])


def test_ir_length_rule():
    """IEC 60268-16 asks for ≥ 1.6 s: a 1.0 s IR cut while its decay is still above the noise is refused;
    a 1.0 s IR whose decay ends within it (digital silence after) is complete and analysed."""
    rt_s = 4.0  # 15 dB of decay in 1 s: ~3 % of the energy lies beyond the cut
    cut = decaying_multisine(rt_s, FS_HZ, 1.0, seed=13, noise_floor_db=-80.0)
    result = analyze_impulse_response(cut, FS_HZ, include_curves=False)["sti"]
    assert result["value"] is None and result["code"] == "ir_too_short" and "1.6 s" in result["reason"]
    short_room = decaying_multisine(0.3, FS_HZ, 1.0, seed=14)
    short_room[int(0.6 * FS_HZ) :] = 0.0  # −120 dB by then: the decay is over
    complete = analyze_impulse_response(short_room, FS_HZ, include_curves=False)["sti"]
    assert complete["code"] is None
    assert_allclose(complete["value"], _analytic(0.3), atol=0.02)
