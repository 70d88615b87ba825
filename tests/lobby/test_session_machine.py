"""The pure measurement-session machine, driven without any I/O."""

from __future__ import annotations

import pytest

from sonalyze.lobby.errors import BadRequest, Forbidden, SessionMismatch, WrongDevice, WrongStep
from sonalyze.lobby.session_machine import (
    STEP_TRANSITIONS,
    TERMINAL_STEPS,
    Analyze,
    Ended,
    Push,
    SessionState,
    SessionStep,
    Signal,
    StepTimeouts,
    analyze_command,
    handle_analysis,
    handle_device_left,
    handle_signal,
    handle_timeout,
    new_session,
    session_view,
)

HOST = "host"
SPEAKERS = ["spk-a", "spk-b"]
MICS = ["mic-1", "mic-2", "mic-3"]
T = StepTimeouts(device_s=10.0, upload_s=20.0, analysis_s=30.0, host_s=100.0)


def _new(now_s: float = 1000.0) -> SessionState:
    return new_session(session_id="s1", lobby_id="l1", job_id="j1", speakers=SPEAKERS, microphones=MICS, now_s=now_s, timeouts=T).state


def _sig(state, signal, device, now_s=1001.0, **kw):
    return handle_signal(state, signal, device, host_device_id=HOST, now_s=now_s, timeouts=T, **kw)


def _pushes(transition, event):
    return [e for e in transition.effects if isinstance(e, Push) and e.event == event]


def _run_speaker(state: SessionState, index: int) -> tuple[SessionState, list]:
    """Drive one speaker from start to the Analyze command; returns the state and every effect seen."""
    seen = []
    t = _sig(state, Signal.START_SPEAKER, HOST, speaker_index=index)
    seen += t.effects
    speaker = SPEAKERS[index]
    for device in [speaker, *MICS]:
        t = _sig(t.state, Signal.READY, device)
        seen += t.effects
    t = _sig(t.state, Signal.SPEAKER_AUDIO_READY, speaker)
    seen += t.effects
    for mic in MICS:
        t = _sig(t.state, Signal.RECORDING_STARTED, mic)
        seen += t.effects
    t = _sig(t.state, Signal.PLAYBACK_COMPLETE, speaker)
    seen += t.effects
    for mic in MICS:
        t = _sig(t.state, Signal.RECORDING_UPLOADED, mic, upload_name=t.state.upload_name(mic))
        seen += t.effects
    return t.state, seen


def test_transition_table_is_closed_and_terminal_steps_are_final():
    assert set(STEP_TRANSITIONS) == set(SessionStep)
    assert TERMINAL_STEPS == {SessionStep.COMPLETED, SessionStep.FAILED, SessionStep.CANCELLED}
    for step, targets in STEP_TRANSITIONS.items():
        if step not in TERMINAL_STEPS:
            assert {SessionStep.FAILED, SessionStep.CANCELLED} <= targets


def test_two_speakers_three_microphones_complete_with_the_right_instructions():
    state = _new()
    assert state.step is SessionStep.CREATED and state.deadline_s == 1000.0 + T.host_s
    results_pushed = []
    for index in range(2):
        state, effects = _run_speaker(state, index)
        assert state.step is SessionStep.ANALYZING
        analyze = [e for e in effects if isinstance(e, Analyze)]
        assert analyze == [Analyze("j1", index, tuple(f"speaker-{index}_mic-{j}.wav" for j in range(3)))]
        prepare = [e for e in effects if isinstance(e, Push) and e.event == "measurement.prepare_speaker"]
        assert len(prepare) == 1 and prepare[0].targets is None
        assert prepare[0].data["speaker_device_id"] == SPEAKERS[index]
        start = [e for e in effects if isinstance(e, Push) and e.event == "measurement.start_recording"]
        assert sorted(e.targets for e in start) == [(m,) for m in MICS]
        play = [e for e in effects if isinstance(e, Push) and e.event == "measurement.play"]
        assert [e.targets for e in play] == [(SPEAKERS[index],)]
        stop = [e for e in effects if isinstance(e, Push) and e.event == "measurement.stop_recording"]
        assert {e.targets[0]: e.data["upload_path"] for e in stop} == {
            m: f"/v1/jobs/j1/uploads/speaker-{index}_mic-{j}.wav" for j, m in enumerate(MICS)
        }
        t = handle_analysis(state, index, result={"rt60_s": 0.5 + index}, error=None, now_s=1100.0, timeouts=T)
        state = t.state
        results_pushed += _pushes(t, "measurement.results")
    assert state.step is SessionStep.COMPLETED and state.deadline_s is None
    assert [p.data["analysis"]["rt60_s"] for p in results_pushed] == [0.5, 1.5]
    assert [r["speaker_device_id"] for r in state.results] == SPEAKERS
    assert any(isinstance(e, Ended) and e.step is SessionStep.COMPLETED for e in t.effects)
    assert _pushes(t, "measurement.session_completed")[0].data["results"] == list(state.results)


def test_every_step_sets_its_own_deadline():
    state = _new()
    t = _sig(state, Signal.START_SPEAKER, HOST, now_s=2000.0)
    assert t.state.step is SessionStep.PREPARING and t.state.deadline_s == 2000.0 + T.device_s
    state, _ = _run_speaker(_new(), 0)
    assert state.deadline_s == 1001.0 + T.analysis_s


def test_repeated_signals_are_idempotent():
    state = _sig(_new(), Signal.START_SPEAKER, HOST).state
    once = _sig(state, Signal.READY, "mic-1")
    again = _sig(once.state, Signal.READY, "mic-1")
    assert again.state == once.state and again.effects == []
    assert _sig(once.state, Signal.START_SPEAKER, HOST).effects == []  # the host's retry
    # A retried ready after the step moved on is acknowledged, not refused.
    state = once.state
    for device in ["spk-a", "mic-2", "mic-3"]:
        state = _sig(state, Signal.READY, device).state
    state = _sig(state, Signal.SPEAKER_AUDIO_READY, "spk-a").state
    assert state.step is SessionStep.RECORDING_STARTING
    assert _sig(state, Signal.READY, "mic-1").effects == []
    assert _sig(state, Signal.SPEAKER_AUDIO_READY, "spk-a").effects == []


def test_stale_retry_for_an_earlier_speaker_is_acknowledged():
    state, _ = _run_speaker(_new(), 0)
    state = handle_analysis(state, 0, result={}, error=None, now_s=1.0, timeouts=T).state
    state = _sig(state, Signal.START_SPEAKER, HOST, speaker_index=1).state
    t = _sig(state, Signal.RECORDING_UPLOADED, "mic-1", speaker_index=0)
    assert t.effects == [] and t.state == state


def test_refusals_have_their_own_codes():
    state = _sig(_new(), Signal.START_SPEAKER, HOST).state
    with pytest.raises(WrongDevice) as exc:
        _sig(state, Signal.SPEAKER_AUDIO_READY, "mic-1")
    assert exc.value.code == "wrong_device"
    with pytest.raises(WrongDevice):
        _sig(state, Signal.READY, "spk-b")  # not the current speaker
    with pytest.raises(WrongDevice):
        _sig(state, Signal.ERROR, "stranger")
    with pytest.raises(WrongStep) as exc:
        _sig(state, Signal.RECORDING_STARTED, "mic-1")
    assert exc.value.code == "wrong_step" and exc.value.details["expected_step"] == "recording_starting"
    with pytest.raises(SessionMismatch) as exc:
        _sig(state, Signal.READY, "mic-1", speaker_index=1)
    assert exc.value.code == "session_mismatch"
    with pytest.raises(Forbidden):
        _sig(state, Signal.START_SPEAKER, "mic-1")
    with pytest.raises(Forbidden):
        _sig(state, Signal.CANCEL, "spk-a")
    with pytest.raises(WrongStep):
        _sig(_new(), Signal.READY, "mic-1")  # nothing started yet


def test_upload_name_must_be_the_one_given():
    state, _ = _run_speaker(_new(), 0)
    state = handle_analysis(state, 0, result={}, error=None, now_s=1.0, timeouts=T).state
    t = _sig(state, Signal.START_SPEAKER, HOST)
    state = t.state
    for device in ["spk-b", *MICS]:
        state = _sig(state, Signal.READY, device).state
    state = _sig(state, Signal.SPEAKER_AUDIO_READY, "spk-b").state
    for mic in MICS:
        state = _sig(state, Signal.RECORDING_STARTED, mic).state
    state = _sig(state, Signal.PLAYBACK_COMPLETE, "spk-b").state
    with pytest.raises(BadRequest) as exc:
        _sig(state, Signal.RECORDING_UPLOADED, "mic-1", upload_name="speaker-0_mic-0.wav")
    assert exc.value.details == {"upload_name": "speaker-1_mic-0.wav"}


def test_cancel_by_host_ends_the_session_and_repeats_quietly():
    state = _sig(_new(), Signal.START_SPEAKER, HOST).state
    t = _sig(state, Signal.CANCEL, HOST)
    assert t.state.step is SessionStep.CANCELLED and t.state.cancelled_by == HOST
    assert _pushes(t, "measurement.session_cancelled")[0].data["step"] == "preparing"
    assert Ended(SessionStep.CANCELLED) in t.effects
    assert _sig(t.state, Signal.CANCEL, HOST).effects == []
    with pytest.raises(WrongStep):
        _sig(t.state, Signal.READY, "mic-1")


def test_device_error_fails_the_step_with_its_reason():
    state = _sig(_new(), Signal.START_SPEAKER, HOST).state
    t = _sig(state, Signal.ERROR, "mic-2", reason="microphone permission denied")
    assert t.state.step is SessionStep.FAILED
    assert t.state.failure == {
        "step": "preparing",
        "code": "device_error",
        "reason": "microphone permission denied",
        "device_id": "mic-2",
        "speaker_index": 0,
    }
    failed = _pushes(t, "measurement.session_failed")
    assert failed[0].targets is None and failed[0].data["reason"] == "microphone permission denied"
    with pytest.raises(WrongStep):
        _sig(t.state, Signal.ERROR, "mic-2")


def test_timeout_fails_only_after_the_deadline_and_names_who_is_missing():
    state = _sig(_new(), Signal.START_SPEAKER, HOST, now_s=1000.0).state
    state = _sig(state, Signal.READY, "mic-1", now_s=1001.0).state
    assert handle_timeout(state, now_s=1009.9, timeouts=T).effects == []
    t = handle_timeout(state, now_s=1010.0, timeouts=T)
    assert t.state.step is SessionStep.FAILED
    assert t.state.failure["code"] == "step_timeout"
    assert t.state.failure["reason"] == "step preparing timed out waiting for spk-a, mic-2, mic-3"
    assert handle_timeout(t.state, now_s=5000.0, timeouts=T).effects == []


def test_a_session_device_leaving_fails_it_and_others_do_not():
    state = _sig(_new(), Signal.START_SPEAKER, HOST).state
    assert handle_device_left(state, "bystander", now_s=1.0, timeouts=T).effects == []
    t = handle_device_left(state, "mic-3", now_s=1.0, timeouts=T)
    assert t.state.step is SessionStep.FAILED and t.state.failure["code"] == "device_left"


def test_analysis_failure_and_stale_answers():
    state, _ = _run_speaker(_new(), 0)
    assert handle_analysis(state, 1, result={}, error=None, now_s=1.0, timeouts=T).effects == []
    t = handle_analysis(state, 0, result=None, error="upstream_error: boom", now_s=1.0, timeouts=T)
    assert t.state.step is SessionStep.FAILED and t.state.failure["code"] == "analysis_failed"
    assert analyze_command(state) == Analyze("j1", 0, ("speaker-0_mic-0.wav", "speaker-0_mic-1.wav", "speaker-0_mic-2.wav"))


def test_state_survives_a_json_round_trip():
    state, _ = _run_speaker(_new(), 0)
    assert SessionState.from_json(state.to_json()) == state
    view = session_view(state)
    assert view["step"] == "analyzing" and view["speaker_device_id"] == "spk-a" and view["waiting_for"] == []


def test_a_session_needs_speakers_and_microphones():
    with pytest.raises(WrongStep):
        new_session(session_id="s", lobby_id="l", job_id="j", speakers=[], microphones=MICS, now_s=0.0, timeouts=T)
