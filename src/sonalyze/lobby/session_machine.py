"""The measurement session as pure logic: (state, input, now) → (new state, effects). No I/O here.

One session measures every speaker of a lobby in turn with every microphone. For each speaker:

    host  measurement.start_speaker ─▶ preparing          push measurement.prepare_speaker (everyone)
    speaker+mics measurement.ready, speaker measurement.speaker_audio_ready
                                     ─▶ recording_starting push measurement.start_recording (each mic)
    each mic measurement.recording_started
                                     ─▶ playing            push measurement.play (speaker)
    speaker measurement.playback_complete
                                     ─▶ uploading          push measurement.stop_recording (each mic)
    each mic measurement.recording_uploaded
                                     ─▶ analyzing          command Analyze (the shell calls the service)
    analysis result                  ─▶ speaker_done       push measurement.results (everyone)
                                        or completed       push measurement.session_completed

Any step can end in ``failed`` (``measurement.error``, a step timeout, a session device leaving, a failed
analysis) or ``cancelled`` (host). The shell (:mod:`sonalyze.lobby.session_coordinator`) persists the state, runs the
effects and feeds timeouts and analysis results back in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from sonalyze.lobby.errors import BadRequest, Forbidden, SessionMismatch, WrongDevice, WrongStep


class SessionStep(StrEnum):
    CREATED = "created"
    PREPARING = "preparing"
    RECORDING_STARTING = "recording_starting"
    PLAYING = "playing"
    UPLOADING = "uploading"
    ANALYZING = "analyzing"
    SPEAKER_DONE = "speaker_done"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


_ENDINGS = frozenset({SessionStep.FAILED, SessionStep.CANCELLED})

STEP_TRANSITIONS: dict[SessionStep, frozenset[SessionStep]] = {
    SessionStep.CREATED: frozenset({SessionStep.PREPARING}) | _ENDINGS,
    SessionStep.PREPARING: frozenset({SessionStep.RECORDING_STARTING}) | _ENDINGS,
    SessionStep.RECORDING_STARTING: frozenset({SessionStep.PLAYING}) | _ENDINGS,
    SessionStep.PLAYING: frozenset({SessionStep.UPLOADING}) | _ENDINGS,
    SessionStep.UPLOADING: frozenset({SessionStep.ANALYZING}) | _ENDINGS,
    SessionStep.ANALYZING: frozenset({SessionStep.SPEAKER_DONE, SessionStep.COMPLETED}) | _ENDINGS,
    SessionStep.SPEAKER_DONE: frozenset({SessionStep.PREPARING}) | _ENDINGS,
    SessionStep.COMPLETED: frozenset(),
    SessionStep.FAILED: frozenset(),
    SessionStep.CANCELLED: frozenset(),
}

TERMINAL_STEPS = frozenset(step for step, targets in STEP_TRANSITIONS.items() if not targets)

_SPEAKER_STEPS = frozenset(
    {SessionStep.PREPARING, SessionStep.RECORDING_STARTING, SessionStep.PLAYING, SessionStep.UPLOADING, SessionStep.ANALYZING}
)


class Signal(StrEnum):
    """What devices send (the gateway event names)."""

    START_SPEAKER = "measurement.start_speaker"
    READY = "measurement.ready"
    SPEAKER_AUDIO_READY = "measurement.speaker_audio_ready"
    RECORDING_STARTED = "measurement.recording_started"
    PLAYBACK_COMPLETE = "measurement.playback_complete"
    RECORDING_UPLOADED = "measurement.recording_uploaded"
    CANCEL = "measurement.cancel_session"
    ERROR = "measurement.error"


@dataclass(frozen=True, slots=True)
class StepTimeouts:
    """How long each step may wait, in seconds."""

    device_s: float = 30.0
    """preparing, recording_starting, playing: waiting for phones."""
    upload_s: float = 60.0
    analysis_s: float = 120.0
    host_s: float = 600.0
    """created, speaker_done: waiting for the host to start the next speaker."""

    def for_step(self, step: SessionStep) -> float | None:
        if step in TERMINAL_STEPS:
            return None
        if step in (SessionStep.CREATED, SessionStep.SPEAKER_DONE):
            return self.host_s
        if step is SessionStep.UPLOADING:
            return self.upload_s
        if step is SessionStep.ANALYZING:
            return self.analysis_s
        return self.device_s


# ----------------------------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Push:
    """Send ``event`` with ``data`` to ``targets`` (``None``: every participant of the lobby)."""

    event: str
    data: dict[str, Any]
    targets: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Analyze:
    """Ask the measurement service to analyze the uploads of one speaker."""

    job_id: str
    speaker_index: int
    uploads: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ended:
    """The session reached a final step: the lobby may measure again."""

    step: SessionStep


Effect = Push | Analyze | Ended


# ----------------------------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class SessionState:
    session_id: str
    lobby_id: str
    job_id: str
    speakers: tuple[str, ...]
    microphones: tuple[str, ...]
    step: SessionStep = SessionStep.CREATED
    speaker_index: int = -1
    """Index in ``speakers`` of the speaker being measured; -1 before the first."""
    deadline_s: float | None = None
    """Unix time (s) when the current step times out."""
    ready: tuple[str, ...] = ()
    audio_ready: bool = False
    recording_started: tuple[str, ...] = ()
    playback_complete: bool = False
    uploaded: tuple[str, ...] = ()
    results: tuple[dict[str, Any], ...] = ()
    failure: dict[str, Any] | None = None
    cancelled_by: str | None = None

    @property
    def speaker(self) -> str | None:
        return self.speakers[self.speaker_index] if 0 <= self.speaker_index < len(self.speakers) else None

    @property
    def devices(self) -> tuple[str, ...]:
        return self.speakers + self.microphones

    @property
    def finished(self) -> bool:
        return self.step in TERMINAL_STEPS

    def upload_name(self, microphone: str, speaker_index: int | None = None) -> str:
        """The file each microphone uploads for a speaker: ``speaker-{i}_mic-{j}.wav`` (URL-safe)."""
        index = self.speaker_index if speaker_index is None else speaker_index
        return f"speaker-{index}_mic-{self.microphones.index(microphone)}.wav"

    def upload_path(self, microphone: str) -> str:
        """Where the microphone uploads (the gateway proxies ``/v1/jobs/...`` to the measurement service)."""
        return f"/v1/jobs/{self.job_id}/uploads/{self.upload_name(microphone)}"

    def waiting_for(self) -> list[str]:
        """Devices whose signal the current step still needs."""
        if self.step is SessionStep.PREPARING:
            missing = [d for d in (self.speaker, *self.microphones) if d not in self.ready]
            if not self.audio_ready and self.speaker not in missing:
                missing.insert(0, self.speaker)
            return missing
        if self.step is SessionStep.RECORDING_STARTING:
            return [m for m in self.microphones if m not in self.recording_started]
        if self.step is SessionStep.PLAYING:
            return [self.speaker]
        if self.step is SessionStep.UPLOADING:
            return [m for m in self.microphones if m not in self.uploaded]
        return []

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SessionState":
        return cls(
            **{
                **data,
                "step": SessionStep(data["step"]),
                "speakers": tuple(data["speakers"]),
                "microphones": tuple(data["microphones"]),
                "ready": tuple(data["ready"]),
                "recording_started": tuple(data["recording_started"]),
                "uploaded": tuple(data["uploaded"]),
                "results": tuple(data["results"]),
            }
        )


def session_view(state: SessionState) -> dict[str, Any]:
    """The session as clients see it (``measurement.session_status`` and ``session_updated``)."""
    return {
        "session_id": state.session_id,
        "lobby_id": state.lobby_id,
        "job_id": state.job_id,
        "step": state.step.value,
        "speaker_index": state.speaker_index,
        "speaker_device_id": state.speaker,
        "speakers": list(state.speakers),
        "microphones": list(state.microphones),
        "waiting_for": state.waiting_for(),
        "deadline_s": state.deadline_s,
        "results": list(state.results),
        "failure": state.failure,
    }


@dataclass(frozen=True, slots=True)
class Transition:
    state: SessionState
    effects: list[Effect] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.effects)


# ----------------------------------------------------------------------------------------------- logic


def _move(state: SessionState, step: SessionStep, now_s: float, timeouts: StepTimeouts, **changes: Any) -> SessionState:
    if step not in STEP_TRANSITIONS[state.step]:
        raise WrongStep(f"a session in step {state.step.value} cannot move to {step.value}")
    timeout_s = timeouts.for_step(step)
    deadline_s = None if timeout_s is None else now_s + timeout_s
    return replace(state, step=step, deadline_s=deadline_s, **changes)


def _updated(state: SessionState) -> Push:
    return Push("measurement.session_updated", session_view(state))


def new_session(
    *,
    session_id: str,
    lobby_id: str,
    job_id: str,
    speakers: list[str],
    microphones: list[str],
    now_s: float,
    timeouts: StepTimeouts,
) -> Transition:
    """A session that waits for the host's first ``measurement.start_speaker``."""
    if not speakers or not microphones:
        raise WrongStep("a session needs at least one speaker and one microphone")
    state = SessionState(
        session_id=session_id,
        lobby_id=lobby_id,
        job_id=job_id,
        speakers=tuple(speakers),
        microphones=tuple(microphones),
        deadline_s=now_s + timeouts.host_s,
    )
    return Transition(state, [_updated(state)])


def _fail(state: SessionState, reason: str, now_s: float, timeouts: StepTimeouts, *, code: str, device_id: str | None = None) -> Transition:
    failure = {"step": state.step.value, "code": code, "reason": reason, "device_id": device_id, "speaker_index": state.speaker_index}
    failed = _move(state, SessionStep.FAILED, now_s, timeouts, failure=failure)
    pushed = {"session_id": state.session_id, "lobby_id": state.lobby_id, **failure}
    return Transition(failed, [_updated(failed), Push("measurement.session_failed", pushed), Ended(SessionStep.FAILED)])


def _check_speaker_index(state: SessionState, speaker_index: int | None, *, next_speaker: bool = False) -> bool:
    """``True`` when the signal is a stale retry for an earlier speaker (to be acknowledged, not applied)."""
    if speaker_index is None:
        return False
    expected = state.speaker_index + 1 if next_speaker else state.speaker_index
    if speaker_index < expected:
        return True
    if speaker_index > expected:
        raise SessionMismatch(
            f"this signal is for speaker {speaker_index}, the session is at speaker {expected}",
            details={"speaker_index": expected},
        )
    return False


def handle_signal(
    state: SessionState,
    signal: Signal,
    device_id: str,
    *,
    host_device_id: str,
    now_s: float,
    timeouts: StepTimeouts,
    speaker_index: int | None = None,
    upload_name: str | None = None,
    reason: str | None = None,
) -> Transition:
    """Apply one device signal; refusals raise (``wrong_device``, ``wrong_step``, ``session_mismatch``,
    ``forbidden``). A repeated signal (a phone retrying) returns the state unchanged with no effects."""
    if signal is Signal.CANCEL:
        return _cancel(state, device_id, host_device_id=host_device_id, now_s=now_s, timeouts=timeouts)
    if signal is Signal.ERROR:
        if device_id not in state.devices and device_id != host_device_id:
            raise WrongDevice(f"device {device_id} takes no part in this session")
        if state.finished:
            raise WrongStep(f"the session is already {state.step.value}", details={"step": state.step.value})
        return _fail(state, reason or "a device reported an error", now_s, timeouts, code="device_error", device_id=device_id)
    if signal is Signal.START_SPEAKER:
        return _start_speaker(state, device_id, host_device_id=host_device_id, now_s=now_s, timeouts=timeouts, speaker_index=speaker_index)
    return _device_signal(state, signal, device_id, now_s=now_s, timeouts=timeouts, speaker_index=speaker_index, upload_name=upload_name)


def _cancel(state: SessionState, device_id: str, *, host_device_id: str, now_s: float, timeouts: StepTimeouts) -> Transition:
    if device_id != host_device_id:
        raise Forbidden("only the host can cancel the session")
    if state.step is SessionStep.CANCELLED:
        return Transition(state)
    if state.finished:
        raise WrongStep(f"the session is already {state.step.value}", details={"step": state.step.value})
    cancelled = _move(state, SessionStep.CANCELLED, now_s, timeouts, cancelled_by=device_id)
    pushed = {"session_id": state.session_id, "lobby_id": state.lobby_id, "step": state.step.value, "device_id": device_id}
    return Transition(cancelled, [_updated(cancelled), Push("measurement.session_cancelled", pushed), Ended(SessionStep.CANCELLED)])


def _start_speaker(
    state: SessionState, device_id: str, *, host_device_id: str, now_s: float, timeouts: StepTimeouts, speaker_index: int | None
) -> Transition:
    if device_id != host_device_id:
        raise Forbidden("only the host starts a speaker")
    if state.step in _SPEAKER_STEPS and speaker_index in (None, state.speaker_index):
        return Transition(state)  # a retry of the start that began this speaker
    if state.step not in (SessionStep.CREATED, SessionStep.SPEAKER_DONE):
        raise WrongStep(f"cannot start a speaker in step {state.step.value}", details={"step": state.step.value})
    if _check_speaker_index(state, speaker_index, next_speaker=True):
        return Transition(state)
    index = state.speaker_index + 1
    prepared = _move(
        state,
        SessionStep.PREPARING,
        now_s,
        timeouts,
        speaker_index=index,
        ready=(),
        audio_ready=False,
        recording_started=(),
        playback_complete=False,
        uploaded=(),
    )
    instruction = _instruction(prepared, lobby_id=state.lobby_id, speaker_device_id=prepared.speaker, microphones=list(state.microphones))
    return Transition(prepared, [_updated(prepared), Push("measurement.prepare_speaker", instruction)])


def _device_signal(
    state: SessionState,
    signal: Signal,
    device_id: str,
    *,
    now_s: float,
    timeouts: StepTimeouts,
    speaker_index: int | None,
    upload_name: str | None,
) -> Transition:
    is_speaker = device_id == state.speaker
    is_microphone = device_id in state.microphones
    allowed = {
        Signal.READY: is_speaker or is_microphone,
        Signal.SPEAKER_AUDIO_READY: is_speaker,
        Signal.RECORDING_STARTED: is_microphone,
        Signal.PLAYBACK_COMPLETE: is_speaker,
        Signal.RECORDING_UPLOADED: is_microphone,
    }[signal]
    if not allowed:
        who = "the current speaker" if signal in (Signal.SPEAKER_AUDIO_READY, Signal.PLAYBACK_COMPLETE) else "a microphone"
        if signal is Signal.READY:
            who = "the current speaker or a microphone"
        raise WrongDevice(f"{signal.value} must come from {who} of this session", details={"step": state.step.value})
    if state.speaker_index >= 0 and _check_speaker_index(state, speaker_index):
        return Transition(state)
    already = {
        Signal.READY: device_id in state.ready,
        Signal.SPEAKER_AUDIO_READY: state.audio_ready,
        Signal.RECORDING_STARTED: device_id in state.recording_started,
        Signal.PLAYBACK_COMPLETE: state.playback_complete,
        Signal.RECORDING_UPLOADED: device_id in state.uploaded,
    }[signal]
    if already and state.step in _SPEAKER_STEPS | {SessionStep.SPEAKER_DONE, SessionStep.COMPLETED}:
        return Transition(state)
    expected_step = {
        Signal.READY: SessionStep.PREPARING,
        Signal.SPEAKER_AUDIO_READY: SessionStep.PREPARING,
        Signal.RECORDING_STARTED: SessionStep.RECORDING_STARTING,
        Signal.PLAYBACK_COMPLETE: SessionStep.PLAYING,
        Signal.RECORDING_UPLOADED: SessionStep.UPLOADING,
    }[signal]
    if state.step is not expected_step:
        raise WrongStep(
            f"{signal.value} is not expected in step {state.step.value}",
            details={"step": state.step.value, "expected_step": expected_step.value},
        )
    if signal is Signal.READY:
        return _after_preparing(replace(state, ready=state.ready + (device_id,)), now_s, timeouts)
    if signal is Signal.SPEAKER_AUDIO_READY:
        return _after_preparing(replace(state, audio_ready=True), now_s, timeouts)
    if signal is Signal.RECORDING_STARTED:
        return _after_recording_started(replace(state, recording_started=state.recording_started + (device_id,)), now_s, timeouts)
    if signal is Signal.PLAYBACK_COMPLETE:
        return _after_playback(replace(state, playback_complete=True), now_s, timeouts)
    expected_name = state.upload_name(device_id)
    if upload_name is not None and upload_name != expected_name:
        raise BadRequest(
            f"this microphone uploads {expected_name!r} for this speaker, not {upload_name!r}",
            details={"upload_name": expected_name},
        )
    return _after_upload(replace(state, uploaded=state.uploaded + (device_id,)), now_s, timeouts)


def _instruction(moved: SessionState, **extra: Any) -> dict[str, Any]:
    """What every instruction to a device carries, plus ``extra``."""
    return {
        "session_id": moved.session_id,
        "job_id": moved.job_id,
        "speaker_index": moved.speaker_index,
        "deadline_s": moved.deadline_s,
        **extra,
    }


def _after_preparing(state: SessionState, now_s: float, timeouts: StepTimeouts) -> Transition:
    if state.waiting_for():
        return Transition(state, [_updated(state)])
    started = _move(state, SessionStep.RECORDING_STARTING, now_s, timeouts)
    effects: list[Effect] = [_updated(started)]
    for microphone in state.microphones:
        instruction = _instruction(started, speaker_device_id=state.speaker, upload_name=state.upload_name(microphone))
        effects.append(Push("measurement.start_recording", instruction, (microphone,)))
    return Transition(started, effects)


def _after_recording_started(state: SessionState, now_s: float, timeouts: StepTimeouts) -> Transition:
    if state.waiting_for():
        return Transition(state, [_updated(state)])
    playing = _move(state, SessionStep.PLAYING, now_s, timeouts)
    return Transition(playing, [_updated(playing), Push("measurement.play", _instruction(playing), (state.speaker,))])


def _after_playback(state: SessionState, now_s: float, timeouts: StepTimeouts) -> Transition:
    uploading = _move(state, SessionStep.UPLOADING, now_s, timeouts)
    effects: list[Effect] = [_updated(uploading)]
    for microphone in state.microphones:
        instruction = _instruction(uploading, upload_name=state.upload_name(microphone), upload_path=state.upload_path(microphone))
        effects.append(Push("measurement.stop_recording", instruction, (microphone,)))
    return Transition(uploading, effects)


def _after_upload(state: SessionState, now_s: float, timeouts: StepTimeouts) -> Transition:
    if state.waiting_for():
        return Transition(state, [_updated(state)])
    analyzing = _move(state, SessionStep.ANALYZING, now_s, timeouts)
    return Transition(analyzing, [_updated(analyzing), analyze_command(analyzing)])


def analyze_command(state: SessionState) -> Analyze:
    """The analysis the ``analyzing`` step waits for (re-issued by the shell after a restart)."""
    return Analyze(state.job_id, state.speaker_index, tuple(state.upload_name(m) for m in state.microphones))


def handle_analysis(
    state: SessionState,
    speaker_index: int,
    *,
    result: dict[str, Any] | None,
    error: str | None,
    now_s: float,
    timeouts: StepTimeouts,
) -> Transition:
    """The measurement service answered for ``speaker_index``; a stale answer changes nothing."""
    if state.step is not SessionStep.ANALYZING or speaker_index != state.speaker_index:
        return Transition(state)
    if error is not None or result is None:
        return _fail(state, error or "the analysis returned no result", now_s, timeouts, code="analysis_failed")
    entry = {"speaker_index": speaker_index, "speaker_device_id": state.speaker, "microphones": list(state.microphones), "analysis": result}
    results = state.results + (entry,)
    last = speaker_index == len(state.speakers) - 1
    step = SessionStep.COMPLETED if last else SessionStep.SPEAKER_DONE
    moved = _move(state, step, now_s, timeouts, results=results)
    effects: list[Effect] = [
        _updated(moved),
        Push("measurement.results", {"session_id": state.session_id, "lobby_id": state.lobby_id, **entry}),
    ]
    if last:
        completed = {"session_id": state.session_id, "lobby_id": state.lobby_id, "job_id": state.job_id, "results": list(results)}
        effects += [Push("measurement.session_completed", completed), Ended(SessionStep.COMPLETED)]
    return Transition(moved, effects)


def handle_timeout(state: SessionState, *, now_s: float, timeouts: StepTimeouts) -> Transition:
    """Fail the current step if its deadline has passed; otherwise nothing happens."""
    if state.finished or state.deadline_s is None or now_s < state.deadline_s:
        return Transition(state)
    waiting = state.waiting_for()
    reason = f"step {state.step.value} timed out"
    if waiting:
        reason += f" waiting for {', '.join(waiting)}"
    return _fail(state, reason, now_s, timeouts, code="step_timeout")


def handle_device_left(state: SessionState, device_id: str, *, now_s: float, timeouts: StepTimeouts) -> Transition:
    """A speaker or microphone of a running session left the lobby: the session cannot go on."""
    if state.finished or device_id not in state.devices:
        return Transition(state)
    return _fail(state, f"device {device_id} left the lobby", now_s, timeouts, code="device_left", device_id=device_id)
