"""Issue 14's cases at the impulse-response level: every answer is within one JND of the clean IR's
value or a refusal with the right code — never a confident wrong number.

The "clean IR's value" comes from independent code: pyrato 1.1 on the noise-free IR (its Schroeder
integration, linear-regression T, clarity/definition, its own STI with its own filter bank), fed the same
octave-band IRs for the band parameters. The disturbed IRs add what a phone measurement adds: stationary
noise at a given level re the decay's start, and a loudspeaker's high-pass (Butterworth, causal).
JNDs (ISO 3382-1 Table A.1; IEC 60268-16 for the STI): T and EDT 5 %, C 1 dB, D50 0.05, STI 0.03.
"""

import warnings

import numpy as np
import pytest
from scipy import signal

from sonalyze.acoustics import analyze_impulse_response
from sonalyze.acoustics.bands import OCTAVE_BANDS_HZ, octave_band_irs
from sonalyze.acoustics.onset import find_onset
from tests.support.infra import require_module

from .synthetic import decaying_multisine

pf = require_module("pyfar")
ra = require_module("pyrato")

FS_HZ = 48000
JND = {"edt_s": ("rel", 0.05), "t20_s": ("rel", 0.05), "t30_s": ("rel", 0.05), "c50_db": ("abs", 1.0), "c80_db": ("abs", 1.0), "d50": ("abs", 0.05)}
NOISE_CODES = {"insufficient_dynamic_range", "no_decay_above_noise", "band_level_too_low", "nonlinear_decay"}


def clean_values(ir: np.ndarray) -> dict:
    """pyrato on the noise-free IR: per band EDT/T20/T30 (Schroeder + regression), C50/C80/D50, and its STI."""
    onset = find_onset(ir)
    bands = pf.Signal(np.stack(list(octave_band_irs(ir, FS_HZ, onset).values())), FS_HZ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edc = ra.edc.schroeder_integration(bands)
        edc.time = edc.time / edc.time[..., :1]
        out = {k: np.ravel(ra.parameters.reverberation_time_linear_regression(edc, k[:3].upper())) for k in ("t20_s", "t30_s")}
        out["edt_s"] = np.ravel(ra.parameters.reverberation_time_linear_regression(edc, "EDT"))
        out["c50_db"] = np.ravel(ra.parameters.clarity(edc, 50))
        out["c80_db"] = np.ravel(ra.parameters.clarity(edc, 80))
        out["d50"] = np.ravel(ra.parameters.definition(edc, 50))
        out["sti"] = float(np.ravel(ra.parameters.speech_transmission_index_indirect(pf.Signal(ir[onset:], FS_HZ)))[0])
    return out


def assert_jnd_or_refused(result: dict, clean: dict, key: str, band_hz: int, codes=NOISE_CODES) -> str:
    """The value within one JND of the clean one, or null with one of ``codes``; returns which."""
    i = OCTAVE_BANDS_HZ.index(band_hz)
    value = result[key]["bands"][i]
    if value is None:
        assert result[key]["codes"][str(band_hz)] in codes, (key, band_hz, result[key]["reasons"])
        return "refused"
    kind, jnd = JND[key]
    truth = clean[key][i]
    error = abs(value / truth - 1) if kind == "rel" else abs(value - truth)
    assert error <= jnd, f"{key} {band_hz} Hz: {value} vs clean {truth} (JND {jnd}) — a confidently wrong number"
    return "value"


def assert_sti_jnd_or_refused(result: dict, clean: dict, codes=NOISE_CODES | {"ir_too_short"}) -> str:
    sti = result["sti"]
    if sti["value"] is None:
        assert sti["code"] in codes, sti
        return "refused"
    assert abs(sti["value"] - clean["sti"]) <= 0.03, (sti["value"], clean["sti"])
    return "value"


def room(rt_s, duration_s: float, seed: int, period_s: float, pre_delay_s: float) -> np.ndarray:
    """Band-wise exponential decays (initial power 1) after a direct sound 10 dB above them."""
    ir = decaying_multisine(rt_s, FS_HZ, duration_s, seed=seed, period_s=period_s, pre_delay_s=pre_delay_s)
    ir[int(round(pre_delay_s * FS_HZ))] += np.sqrt(10 * FS_HZ * 0.001)  # 10 dB over the first 1 ms of decay
    return ir


def with_noise(ir: np.ndarray, floor_db: float, seed: int) -> np.ndarray:
    """Stationary white noise at ``floor_db`` re the decay's initial power (1)."""
    return ir + np.random.default_rng(seed).standard_normal(ir.size) * 10 ** (floor_db / 20)


SHORT_ROOM_RT_S = [0.2, 0.16, 0.12, 0.09, 0.06, 0.035, 0.016]  # a dry small room: 8 kHz decays in 16 ms


@pytest.fixture(scope="module")
def short_room():
    ir = room(SHORT_ROOM_RT_S, 2.0, seed=61, period_s=0.02, pre_delay_s=0.01)
    return ir, clean_values(ir)


@pytest.mark.parametrize("floor_db", [-20.0, -30.0, -45.0])
def test_short_room_with_noise(short_room, floor_db):
    """Issue: short room, SNR 20 dB gave EDT 8 kHz 16.1 s (truth 0.016), D50 4 kHz 0.82 (1.00), STI 0.92 (0.99)."""
    ir, clean = short_room
    result = analyze_impulse_response(with_noise(ir, floor_db, seed=62), FS_HZ, include_curves=False)
    outcomes = [
        assert_jnd_or_refused(result, clean, "edt_s", 8000),
        assert_jnd_or_refused(result, clean, "d50", 4000),
        assert_sti_jnd_or_refused(result, clean),
    ]
    for band_hz in OCTAVE_BANDS_HZ:
        for key in ("edt_s", "c50_db", "c80_db", "d50"):
            assert_jnd_or_refused(result, clean, key, band_hz)
    if floor_db <= -45.0:  # plenty of range: numbers, not refusals
        assert outcomes[1:] == ["value", "value"], outcomes


def test_short_room_edt_refused_when_noise_is_all_there_is(short_room):
    """With the 8 kHz band's decay buried (noise 10 dB under its start), nothing is integrated from noise."""
    ir, _ = short_room
    result = analyze_impulse_response(with_noise(ir, -12.0, seed=63), FS_HZ, include_curves=False)
    assert result["edt_s"]["bands"][6] is None
    assert result["edt_s"]["codes"]["8000"] in {"no_decay_above_noise", "band_level_too_low", "insufficient_dynamic_range"}


LARGE_HALL_RT_S = [5.3, 4.6, 4.0, 3.5, 3.0, 2.6, 2.2]


def test_large_hall_t30_with_40_db_snr():
    """Issue: large hall, SNR 40 dB gave T30 8 kHz 2.39 s for 2.22 s (+8 %)."""
    ir = room(LARGE_HALL_RT_S, 7.0, seed=64, period_s=0.02, pre_delay_s=0.02)
    clean = clean_values(ir)
    for floor_db, seed in ((-50.0, 65), (-55.0, 66)):
        result = analyze_impulse_response(with_noise(ir, floor_db, seed), FS_HZ, include_curves=False)
        outcomes = [assert_jnd_or_refused(result, clean, key, b) for key in ("t20_s", "t30_s") for b in OCTAVE_BANDS_HZ]
        assert result["t30_s"]["bands"][6] is not None, result["t30_s"]["reasons"]  # 55+ dB here: a number
        assert outcomes.count("value") >= 12


PHONE_ROOM_RT_S = [1.6, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5]  # 125 Hz decays twice as long as its neighbour


def phone_loudspeaker(ir: np.ndarray, highpass_hz: float, order: int) -> np.ndarray:
    """A small loudspeaker: Butterworth high-pass (6·order dB per octave), causal as the real one."""
    return signal.sosfilt(signal.butter(order, highpass_hz, btype="highpass", fs=FS_HZ, output="sos"), ir)


@pytest.fixture(scope="module")
def phone_room():
    ir = room(PHONE_ROOM_RT_S, 3.0, seed=67, period_s=0.05, pre_delay_s=0.05)
    return ir, clean_values(ir)


@pytest.mark.parametrize(("highpass_hz", "order"), [(100.0, 4), (170.0, 4), (250.0, 4), (300.0, 8)])
@pytest.mark.parametrize("floor_db", [-60.0, -40.0])
def test_phone_loudspeaker_low_band(phone_room, highpass_hz, order, floor_db):
    """Issue: under a phone loudspeaker (roll-off below 250 Hz) C50 125 Hz came out +2.6 dB for −0.6 dB and
    T30 125 Hz 5.74 s for 5.26 s: leakage from the louder 250 Hz band. Now within a JND or refused."""
    ir, clean = phone_room
    measured = with_noise(phone_loudspeaker(ir, highpass_hz, order), floor_db, seed=68)
    result = analyze_impulse_response(measured, FS_HZ, include_curves=False)
    for key in ("c50_db", "c80_db", "d50", "t20_s", "t30_s", "edt_s"):
        for band_hz in OCTAVE_BANDS_HZ:
            assert_jnd_or_refused(result, clean, key, band_hz)
    # (between, e.g. 4th order at 150 Hz, the loudspeaker's transient moves C50 at 125 Hz by 1.3 dB while its
    # roll-off inside the band, +6 dB, is still within what single room responses show: docs "Limits")
    if highpass_hz >= 170.0:  # the source rolls off inside the 125 Hz band: its own transient shapes C50 there
        expected = {"band_level_too_low"} if floor_db < -50 else {"band_level_too_low", "no_decay_above_noise"}
        assert result["c50_db"]["codes"]["125"] in expected and result["t30_s"]["codes"]["125"] in expected
        assert result["sti"]["code"] in expected
    else:  # a roll-off below the band costs nothing
        assert result["c50_db"]["bands"][0] is not None and result["t30_s"]["bands"][0] is not None
