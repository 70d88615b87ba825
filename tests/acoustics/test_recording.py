"""Recording checks (sonalyze.acoustics.recording) and the capture facts (measurement.uploads/analysis)."""

import base64
import json

import numpy as np
import pytest

from sonalyze.acoustics.recording import correct_clock, estimate_clock_ppm, tail_check
from sonalyze.acoustics.sweep import SweepParams, exponential_sweep
from sonalyze.common.errors import BadRequest
from sonalyze.measurement.analysis import capture_flags
from sonalyze.measurement.uploads import parse_capture_facts

PARAMS = SweepParams(duration_s=2.0, silence_before_s=0.2, silence_after_s=1.0)


def test_repeated_sweeps_layout():
    params = SweepParams(duration_s=1.0, silence_before_s=0.5, silence_after_s=1.5, sweep_count=3)
    x = exponential_sweep(params)
    assert x.size == int(0.5 * 48000) + 3 * int(2.5 * 48000)
    one = x[24000 : 24000 + 48000]
    for k in (1, 2):
        start = 24000 + k * 120000
        np.testing.assert_array_equal(x[start : start + 48000], one)
        assert not x[start - 72000 : start].any()  # the silence for the decay
    with pytest.raises(ValueError, match="sweep_count"):
        SweepParams(sweep_count=6).validate()


@pytest.mark.parametrize("ppm", [0.0, 300.0, -1500.0])
def test_clock_estimate_of_a_resampled_sweep(ppm):
    """A sweep resampled by 1 + ppm·1e-6 (FFT resampling, independent of the estimator) is found within 20 ppm."""
    from scipy import signal

    x = exponential_sweep(PARAMS)
    stretched = signal.resample(x, int(round(x.size * (1 + ppm * 1e-6)))) if ppm else x
    assert estimate_clock_ppm(stretched, PARAMS) == pytest.approx(ppm, abs=20.0)
    if ppm:
        assert estimate_clock_ppm(correct_clock(stretched, ppm), PARAMS) == pytest.approx(0.0, abs=20.0)


def test_clock_estimate_of_noise_is_none():
    assert estimate_clock_ppm(np.random.default_rng(0).standard_normal(4 * 48000), PARAMS) is None


def test_tail_check_of_a_cut_and_of_a_complete_decay():
    fs_hz = 48000
    t_s = np.arange(int(0.3 * fs_hz)) / fs_hz
    rng = np.random.default_rng(1)
    cut = rng.standard_normal(t_s.size) * np.exp(-6.91 * t_s / 1.0)  # T = 1 s cut at 0.3 s
    check = tail_check(cut, fs_hz)
    # missing share of an exponential cut at t: e^(−13.8·t/T) → −18 dB at 0.3 s
    assert check.still_decaying and check.missing_db == pytest.approx(-18.0, abs=1.5)
    t_s = np.arange(int(2.0 * fs_hz)) / fs_hz
    whole = rng.standard_normal(t_s.size) * (np.exp(-6.91 * t_s / 0.3) + 1e-3)  # meets a −60 dB floor
    assert not tail_check(whole, fs_hz).still_decaying


def _header(facts) -> str:
    return base64.urlsafe_b64encode(json.dumps(facts).encode()).decode().rstrip("=")


def test_capture_facts_parsed_and_flags():
    facts = {"sample_rate_hz": 48000, "context_sample_rate_hz": 44100, "echo_cancellation": True,
             "noise_suppression": False, "user_agent": "Mozilla/5.0", "future_fact": 3}
    assert parse_capture_facts(_header(facts)) == facts
    assert parse_capture_facts(None) is None
    assert capture_flags(facts, 48000) == ["processed_capture", "capture_rate_differs"]
    assert capture_flags({"auto_gain_control": False, "sample_rate_hz": 48000}, 48000) == []


@pytest.mark.parametrize(
    "header",
    [
        "%%%not-base64",
        _header([1, 2]),
        _header({"echo_cancellation": "yes"}),
        _header({"sample_rate_hz": -1}),
        _header({"sample_rate_hz": 10**7}),
        _header({"user_agent": "x" * 300}),
        _header({f"k{i}": i for i in range(40)}),
        _header({"nested": {"a": 1}}),
        _header({"pad": "x" * 200, **{f"k{i}": "y" * 200 for i in range(25)}}),
    ],
)
def test_bad_capture_facts_refused(header):
    with pytest.raises(BadRequest) as refused:
        parse_capture_facts(header)
    assert refused.value.code == "invalid_capture_facts"
