"""Recording checks (sonalyze.acoustics.recording) and the capture facts (measurement.uploads/analysis)."""

import base64
import functools
import json

import numpy as np
import pytest

from sonalyze.acoustics.recording import (
    REPETITION_TOLERANCE_PPM,
    CLOCK_TRACK_ERROR_PPM,
    RecordingRefused,
    check_recording,
    clock_tolerance_ppm,
    correct_clock,
    stretch_clock_ppm,
    tail_check,
    track_clock_ppm,
    zero_gaps,
)
from sonalyze.acoustics.deconvolution import deconvolve_recording
from sonalyze.acoustics.sweep import SweepParams, exponential_sweep
from sonalyze.common.errors import BadRequest
from sonalyze.measurement.analysis import capture_flags
from sonalyze.measurement.uploads import parse_capture_facts

from .conftest import record as conftest_record
from .phone_chain import Chain, pyroomacoustics_room, record, synthetic_room

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


# Phone-chain rooms for the clock (tests/acoustics/phone_chain.py): band-wise synthetic decays of 0.2, 2.2 and
# 6 s (a direct sound 15–25 dB below the reverberation, the hardest case for any timing) and a
# pyroomacoustics shoebox; silence after the sweep ≈ the longest T. The 6 s room at 40 dB SNR: at 20 dB
# its deconvolved impulse stands < 25 dB out of the noise and the deconvolution finds no sweep at all.
CLOCK_ROOMS = {
    "0.2s": ([0.3, 0.25, 0.22, 0.2, 0.2, 0.2, 0.2], 1.0),
    "2.2s": ([2.6, 2.4, 2.3, 2.2, 2.0, 1.7, 1.4], 3.0),
    "6s": ([6.5, 6.2, 6.0, 5.8, 5.0, 4.0, 3.0], 7.0),
    "shoebox": (None, 1.5),
}


@functools.cache
def _clock_room(name: str, fs_hz: int) -> np.ndarray:
    rt_s = CLOCK_ROOMS[name][0]
    return pyroomacoustics_room(fs_hz) if rt_s is None else synthetic_room(rt_s, fs_hz, seed=3)


def _clock_params(name: str, fs_hz: int = 48000, sweep_count: int = 1) -> SweepParams:
    return SweepParams(
        fs_hz=fs_hz, duration_s=3.0, silence_before_s=0.3, silence_after_s=CLOCK_ROOMS[name][1],
        f_end_hz=min(20000.0, 0.45 * fs_hz), sweep_count=sweep_count,
    )


@pytest.mark.parametrize(
    ("ppm", "room_name", "snr_db"),
    [(0, "0.2s", 20), (50, "2.2s", 60), (-50, "6s", 40), (1000, "shoebox", 60), (-1000, "0.2s", 60),
     (2000, "2.2s", 20), (-2000, "shoebox", 20)],
)
def test_clock_from_repeated_sweeps(ppm, room_name, snr_db):
    """Two sweeps through the phone loudspeaker into the room, recorded ``ppm`` fast: the spacing of the
    repetitions gives the offset within the measured spread, and it is corrected (±2000 ppm included)."""
    params = _clock_params(room_name, sweep_count=2)
    x = record(params, _clock_room(room_name, 48000), Chain(clock_ppm=ppm, snr_db=snr_db, seed=snr_db + abs(ppm)))
    check = check_recording(x, params)
    assert check.clock_method == "repetition_spacing"
    assert check.clock_offset_ppm == pytest.approx(ppm, abs=REPETITION_TOLERANCE_PPM)
    assert check.used == [0, 1]


@pytest.mark.parametrize(
    ("count", "dropout_at_s", "dropout_s", "rejected", "method", "codes"),
    [
        (2, 3.8, 0.01, [0], "stretched_inverse", ["dropout"]),  # 10 ms lost in the first decay: spacing −2222 ppm
        (2, 3.5, -0.004, [0], "stretched_inverse", ["dropout"]),  # 4 ms of silence inserted there: +889 ppm
        (3, 4.5 + 3.4, 0.02, [1], "repetition_spacing", ["dropout"]),  # between the 2nd and 3rd: the first two measure it
        # inside the first sweep: a gap of zeros there (rejected: `dropout`; an impulse before zero_gaps), and the
        # spacing follows the sweep's loud part, intact
        (2, 1.5, -0.004, [0], "repetition_spacing", ["dropout"]),
    ],
)
def test_dropout_between_repetitions_is_no_clock(count, dropout_at_s, dropout_s, rejected, method, codes):
    """Samples lost (or silence inserted) between repetitions move their spacing, not the clock: the spacing
    the sweep's own clock contradicts is not used, the repetition the break fell into is rejected, and the
    recording says so (code ``dropout``). Without the check, 10 ms lost over a 4.5 s period reads as −2222 ppm
    and the recording is refused as ``sample_rate_mismatch`` (or wrongly corrected)."""
    params = _clock_params("shoebox", sweep_count=count)
    chain = Chain(clock_ppm=30, snr_db=50, dropout_at_s=dropout_at_s, dropout_s=dropout_s, seed=count)
    check = check_recording(record(params, _clock_room("shoebox", 48000), chain), params)
    assert check.rejected == rejected
    assert check.used == [k for k in range(count) if k not in rejected]
    assert check.clock_method == method
    assert check.clock_offset_ppm == pytest.approx(30, abs=clock_tolerance_ppm(method, params))
    assert [r["code"] for r in check.refusals] == codes


@pytest.mark.parametrize(
    ("room_ir", "count", "ppm", "snr_db", "seed"),
    [
        (lambda: _clock_room("shoebox", 48000), 3, -700, 40, 5),
        # a 0.3 s room with a weak direct sound: the one-sweep estimate's "unique" peak is a chance peak of
        # the tail (+1214 ppm), the true +500 ppm close behind (0.49 of it): the spacing must be kept
        (lambda: synthetic_room([0.3] * 7, 48000, seed=3), 2, 500, 20, 24),
    ],
    ids=["shoebox-3-sweeps", "weak-direct-sound"],
)
def test_repetitions_without_dropout_keep_their_spacing(room_ir, count, ppm, snr_db, seed):
    params = SweepParams(duration_s=3.0, silence_before_s=0.3, silence_after_s=1.5, sweep_count=count)
    check = check_recording(record(params, room_ir(), Chain(clock_ppm=ppm, snr_db=snr_db, seed=seed)), params)
    assert check.used == list(range(count)) and check.refusals == []
    assert check.clock_method == "repetition_spacing"
    assert check.clock_offset_ppm == pytest.approx(ppm, abs=REPETITION_TOLERANCE_PPM)


@pytest.mark.parametrize(
    ("true_hz", "labelled_hz", "room_name", "snr_db"),
    [(44100, 48000, "0.2s", 20), (44100, 48000, "2.2s", 60), (44100, 48000, "6s", 40), (44100, 48000, "shoebox", 60),
     (48000, 44100, "2.2s", 20), (48000, 44100, "shoebox", 60)],
)
def test_mislabelled_rate_refused_with_the_true_rate(true_hz, labelled_hz, room_name, snr_db):
    """One sweep, recorded at ``true_hz`` in a file labelled ``labelled_hz``: refused from the sweep's
    track (its error ≤ `CLOCK_TRACK_ERROR_PPM`, measured) with the likely rate named."""
    params = _clock_params(room_name, labelled_hz)
    x = record(params, _clock_room(room_name, labelled_hz), Chain(mislabelled_from_hz=true_hz, snr_db=snr_db, seed=snr_db))
    with pytest.raises(RecordingRefused) as refused:
        check_recording(x, params)
    assert refused.value.code == "sample_rate_mismatch"
    assert f"{true_hz} Hz audio labelled {labelled_hz} Hz" in refused.value.message
    assert refused.value.recording["clock_offset_ppm"] == pytest.approx((true_hz / labelled_hz - 1) * 1e6, abs=CLOCK_TRACK_ERROR_PPM)


@pytest.mark.parametrize(
    ("ppm", "room_name", "snr_db"),
    [(0, "0.2s", 60), (0, "2.2s", 20), (0, "6s", 60), (0, "shoebox", 20), (1000, "2.2s", 60), (-1000, "6s", 40),
     (2000, "0.2s", 20), (-2000, "shoebox", 60)],
)
def test_single_sweep_never_refused_and_never_confidently_wrong(ppm, room_name, snr_db):
    """One sweep within ±2000 ppm: never refused; the sweep's track is within its measured error; the
    reported offset is within the band method's tolerance or null with the reason (these rooms' direct
    sound is too weak for its arrivals to agree)."""
    params = _clock_params(room_name)
    x = record(params, _clock_room(room_name, 48000), Chain(clock_ppm=ppm, snr_db=snr_db, seed=snr_db + abs(ppm) + 1))
    assert track_clock_ppm(x, params) == pytest.approx(ppm, abs=CLOCK_TRACK_ERROR_PPM)
    section = check_recording(x, params).section()
    if section["clock_offset_ppm"] is None:
        assert section["clock_offset_method"] is None and "sweep_count" in section["clock_offset_reason"]
    else:
        assert section["clock_offset_ppm"] == pytest.approx(ppm, abs=clock_tolerance_ppm("stretched_inverse", params))


@pytest.mark.parametrize(
    ("duration_s", "ppm", "snr_db", "seed"),
    [(2.0, -1153.0, 23.4, 912638), (3.0, -243.0, 33.0, 600110), (3.0, 590.3, 55.6, 108393), (2.0, -946.3, 20.3, 57195)],
)
def test_single_sweep_clock_in_a_weak_direct_sound_room(duration_s, ppm, snr_db, seed):
    """The 4 one-sweep recordings of 120 generated ones (0.3–2.2 s rooms and the shoebox, 2–4 s sweeps, ±1500 ppm,
    20–60 dB SNR) whose estimate was confidently wrong (+1000 to +1140 ppm off, "unique"), all in the 0.3 s room:
    its strongest deconvolved peak is a reflection 16–19 ms after the direct sound, and the re-timed segment,
    centred on it, held the direct sound at its end. Centred on the onset, each is measured within its tolerance."""
    params = SweepParams(duration_s=duration_s, silence_before_s=0.3, silence_after_s=1.3)
    x = record(params, synthetic_room([0.3] * 7, 48000, seed=3), Chain(clock_ppm=ppm, snr_db=snr_db, seed=seed))
    check = check_recording(x, params)
    assert check.clock_method == "stretched_inverse"
    assert check.clock_offset_ppm == pytest.approx(ppm, abs=clock_tolerance_ppm("stretched_inverse", params))


GAP_PARAMS = SweepParams(duration_s=3.0, silence_before_s=0.3, silence_after_s=1.3)


def _with_gap(x: np.ndarray, params: SweepParams, seed: int, at_s: float, gap_ms: float) -> np.ndarray:
    """``x`` (recorded by `phone_chain.record` with ``seed``) with ``gap_ms`` of its samples set to zero ``at_s``
    after its first sweep started (a phone's buffer underrun)."""
    lead = int(np.random.default_rng(seed).uniform(0.05, 0.6) * params.fs_hz)  # as phone_chain.record draws it
    at = lead + params.silence_before_samples + int(at_s * params.fs_hz)
    out = x.copy()
    out[at : at + max(1, round(gap_ms * params.fs_hz / 1000))] = 0.0
    return out


@pytest.mark.parametrize(("gap_ms", "at_s"), [(0.1, 1.0), (0.25, 2.0), (1.0, 2.9)])
def test_zero_gap_in_a_single_sweep_is_a_dropout(gap_ms, at_s):
    """A gap of zeros ≤ 1 ms in the sweep: refused as ``dropout`` (before, ``impulsive_noise``, or for 1 ms early in
    the sweep ``sample_rate_mismatch``; the 0.1 ms one at 2.0 s passed, moving T20 by 0.08 %)."""
    x = record(GAP_PARAMS, synthetic_room([0.7] * 7, 48000, seed=6), Chain(snr_db=50, seed=6))
    with pytest.raises(RecordingRefused) as refused:
        check_recording(_with_gap(x, GAP_PARAMS, 6, at_s, gap_ms), GAP_PARAMS)
    assert refused.value.code == "dropout"
    assert f"{gap_ms:.2f} ms" in refused.value.message


def test_zero_gap_rejects_its_repetition():
    params = SweepParams(duration_s=3.0, silence_before_s=0.3, silence_after_s=1.3, sweep_count=2)
    x = record(params, synthetic_room([0.7] * 7, 48000, seed=6), Chain(snr_db=50, seed=7))
    check = check_recording(_with_gap(x, params, 7, params.period_samples / params.fs_hz + 1.5, 0.5), params)
    assert (check.used, check.rejected) == ([0], [1])
    assert [r["code"] for r in check.refusals] == ["dropout"] and "repetition 2" in check.refusals[0]["message"]


def test_no_zero_gap_in_clean_noisy_quantised_or_silent_recordings():
    """No gap where there is none — float recordings at 20 and 60 dB SNR, the same quantised to 16 bits with its
    peak at −40 dBFS, a noise-free sweep at −50 dBFS in 16 bits (its low frequencies round to zero for dozens of
    samples at each crossing), digital silence before and after — and a 0.25 ms gap found in each once there is one."""
    room_ir = synthetic_room([0.7] * 7, 48000, seed=6)
    noisy = [record(GAP_PARAMS, room_ir, Chain(snr_db=snr_db, seed=6)) for snr_db in (20, 60)]
    quiet = noisy[0] / np.max(np.abs(noisy[0])) * 10 ** (-40 / 20)
    sweep = exponential_sweep(GAP_PARAMS) * 10 ** (-44 / 20)
    recordings = [
        *noisy,
        np.round(quiet * 32768) / 32768,
        np.round(sweep * 32768) / 32768,
        np.concatenate((np.zeros(4800), noisy[1], np.zeros(4800))),
    ]
    for x in recordings:
        assert zero_gaps(x, 48000) == []
        gapped = x.copy()
        middle = x.size // 2
        gapped[middle : middle + 12] = 0.0  # 0.25 ms (float audio: 3 samples are a gap; these 16-bit ones: 6)
        assert [(a, n) for a, n in zero_gaps(gapped, 48000) if a <= middle < a + n]


def test_clean_fixture_clock(sweep_params, room_ir):
    """The shared clean recording (test_report's end-to-end case, once estimated at −3025 ppm): ~0 from the
    track, and no false correction or refusal."""
    x, _ = conftest_record(sweep_params, room_ir, seed=44, noise_db=-50.0)
    assert track_clock_ppm(x, sweep_params) == pytest.approx(0.0, abs=CLOCK_TRACK_ERROR_PPM)
    ppm = check_recording(x, sweep_params).clock_offset_ppm
    assert ppm is None or abs(ppm) < clock_tolerance_ppm("stretched_inverse", sweep_params)


def _stretch_clock(x: np.ndarray, params: SweepParams) -> float | None:
    h_all = deconvolve_recording(x, params)
    return stretch_clock_ppm(h_all, int(np.argmax(h_all[: x.size] ** 2)), params).ppm


@pytest.mark.parametrize("ppm", [0.0, 300.0, -1500.0])
def test_clock_estimate_of_a_resampled_sweep(ppm):
    """A sweep resampled by 1 + ppm·1e-6 (FFT resampling, independent of the estimator) is found within 20 ppm
    by the stretched inverse (the direct sound alone: one sharp peak)."""
    from scipy import signal

    x = exponential_sweep(PARAMS)
    stretched = signal.resample(x, int(round(x.size * (1 + ppm * 1e-6)))) if ppm else x
    assert _stretch_clock(stretched, PARAMS) == pytest.approx(ppm, abs=20.0)
    assert track_clock_ppm(stretched, PARAMS) == pytest.approx(ppm, abs=CLOCK_TRACK_ERROR_PPM)
    if ppm:
        assert _stretch_clock(correct_clock(stretched, ppm), PARAMS) == pytest.approx(0.0, abs=20.0)


def test_clock_estimate_of_noise_is_none():
    noise = np.random.default_rng(0).standard_normal(4 * 48000)
    assert _stretch_clock(noise, PARAMS) is None


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
