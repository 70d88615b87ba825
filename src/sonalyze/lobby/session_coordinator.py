"""The shell around the pure session machine: load, apply, save (optimistic version), run the effects.

* Each signal is one transaction: read the session row, apply :mod:`sonalyze.lobby.session_machine`, write it
  back only if its ``version`` did not move (else retry), and collect the pushes.
* ``Analyze`` effects run in background tasks after the commit; their answer is fed back in. The replica
  awaiting an analysis holds a lease on the session (``runner``, ``lease_until_s``, taken in the
  transaction that moved it to ``analyzing``) and renews it on every timer tick; when it dies, the lease
  lapses and another replica claims the session and awaits the analysis instead (:meth:`keep_analyses`;
  asking the measurement service again is safe: an analysis already running is awaited, not repeated).
* A timer loop fails sessions whose step deadline passed. Deadlines, the ``analyzing`` step and its lease
  live in the database, so every replica picks every session up where it was.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from sonalyze.common.errors import SonalyzeError
from sonalyze.lobby import store
from sonalyze.lobby.errors import Conflict, Forbidden, NotFound, SessionMismatch
from sonalyze.lobby.lifecycle import LobbyStatus, Role, check_transition
from sonalyze.lobby.measurement_client import MeasurementClient
from sonalyze.lobby.schemas import CreateSession, SessionRef, SessionSignal
from sonalyze.lobby.service import LobbyService, Pushes, record
from sonalyze.lobby.session_machine import (
    Analyze,
    Ended,
    Push,
    SessionState,
    Signal,
    StepTimeouts,
    Transition,
    analyze_command,
    handle_analysis,
    handle_device_left,
    handle_signal,
    handle_timeout,
    new_session,
    session_view,
)
from sonalyze.lobby.rows import LobbyRow, ParticipantRow

log = logging.getLogger("sonalyze.lobby.session_coordinator")

_SAVE_ATTEMPTS = 5


class _VersionMoved(Exception):
    """Another writer saved the session first: roll back and apply the input again."""


class SessionCoordinator:
    def __init__(
        self,
        lobbies: LobbyService,
        measurement: MeasurementClient,
        *,
        timeouts: StepTimeouts,
        sample_rate_hz: int,
        sweep_duration_s: float,
        sweep_count: int = 1,
        runner: str | None = None,
        analysis_lease_s: float = 15.0,
    ) -> None:
        """``runner`` names this replica in the sessions whose analysis it awaits (default: a fresh id per
        process); ``analysis_lease_s``: how long a lease lasts unless renewed."""
        self.lobbies = lobbies
        self.db = lobbies.db
        self.measurement = measurement
        self.timeouts = timeouts
        self.sample_rate_hz = sample_rate_hz
        self.sweep_duration_s = sweep_duration_s
        self.sweep_count = sweep_count
        self.runner = runner or f"lobby-{uuid.uuid4().hex[:12]}"
        self.analysis_lease_s = analysis_lease_s
        self._awaiting: dict[str, asyncio.Task] = {}
        """Session id to the task awaiting its analysis here (its lease is renewed while it runs)."""
        lobbies.on_device_left = self._device_left

    # ------------------------------------------------------------------------------------------- requests

    async def create(self, device_id: str, body: CreateSession) -> dict[str, Any]:
        """Host only, lobby ``measuring``, no session running: ask for a job (``body.sweep_count`` sweeps, else
        the lobby's), fix speakers and microphones."""

        def check(conn: Connection) -> None:
            self._check_can_create(conn, *_lobby(conn, body.lobby_id), device_id)

        await self.db.read(check)
        job = await self.measurement.create_job(
            sample_rate_hz=self.sample_rate_hz,
            sweep_duration_s=self.sweep_duration_s,
            sweep_count=body.sweep_count or self.sweep_count,
            lobby_id=body.lobby_id,
        )

        def work(conn: Connection, pushes: Pushes, now_s: float) -> dict[str, Any]:
            lobby, members = _lobby(conn, body.lobby_id, lock=True)
            self._check_can_create(conn, lobby, members, device_id)
            transition = new_session(
                session_id=uuid.uuid4().hex,
                lobby_id=lobby.id,
                job_id=str(job["job_id"]),
                speakers=[m.device_id for m in members if m.role == Role.SPEAKER.value],
                microphones=[m.device_id for m in members if m.role == Role.MICROPHONE.value],
                now_s=now_s,
                timeouts=self.timeouts,
            )
            state = transition.state
            store.insert_session(conn, state, now_s=now_s)
            store.update_lobby(conn, lobby.id, session_id=state.session_id)
            lobby = store.get_lobby(conn, lobby.id)
            payload = {"session_id": state.session_id, "job_id": state.job_id}
            record(conn, pushes, lobby, members, "session_created", payload, device_id=device_id, now_s=now_s)
            _collect(pushes, transition, members)
            return session_view(state)

        return await self.lobbies.write(work)

    @staticmethod
    def _check_can_create(conn: Connection, lobby: LobbyRow, members: list[ParticipantRow], device_id: str) -> None:
        _require_member(members, device_id)
        if lobby.host_device_id != device_id:
            raise Forbidden("only the host can create a measurement session")
        if lobby.status is not LobbyStatus.MEASURING:
            raise Conflict(f"the lobby is {lobby.status.value}: start it (lobby.start) first", details={"status": lobby.status.value})
        if lobby.session_id is not None:
            current = store.get_session(conn, lobby.session_id)
            if current is not None and not current.state.finished:
                raise Conflict("a measurement session is already running", details={"session_id": lobby.session_id})

    async def status(self, device_id: str, body: SessionRef) -> dict[str, Any]:
        def work(conn: Connection) -> dict[str, Any]:
            session_id = body.session_id
            if session_id is None:
                lobby, members = _lobby(conn, body.lobby_id)
                _require_member(members, device_id)
                if lobby.session_id is None:
                    raise NotFound("this lobby has no measurement session")
                session_id = lobby.session_id
            row = store.get_session(conn, session_id)
            if row is None:
                raise NotFound(f"session {session_id} does not exist")
            if body.lobby_id is not None and body.lobby_id != row.lobby_id:
                raise SessionMismatch("the session belongs to another lobby", details={"lobby_id": row.lobby_id})
            _require_member(store.list_participants(conn, row.lobby_id), device_id)
            return session_view(row.state)

        return await self.db.read(work)

    async def signal(self, signal: Signal, device_id: str, body: SessionSignal) -> dict[str, Any]:
        """Apply one device signal."""

        def apply(state: SessionState, lobby: LobbyRow, members: list[ParticipantRow], now_s: float) -> Transition:
            _require_member(members, device_id)
            return handle_signal(
                state,
                signal,
                device_id,
                host_device_id=lobby.host_device_id or "",
                now_s=now_s,
                timeouts=self.timeouts,
                speaker_index=body.speaker_index,
                upload_name=body.upload_name,
                reason=body.reason,
            )

        return session_view(await self._update(body.session_id, apply, lobby_id=body.lobby_id))

    # ------------------------------------------------------------------------------------------- the shell

    async def _update(
        self, session_id: str, apply: Callable[..., Transition], *, lobby_id: str | None = None, skip_locked: bool = False
    ) -> SessionState:
        """Load, apply, save if the version did not move (else apply again), then push and analyze.

        ``skip_locked`` (the deadline timer): when another transaction holds the lobby (another replica's
        timer or a signal), change nothing now; the next tick looks at the session again.
        """

        def work(conn: Connection, pushes: Pushes, now_s: float) -> tuple[SessionState, list[Analyze]]:
            row = store.get_session(conn, session_id)
            if row is None:
                raise NotFound(f"session {session_id} does not exist")
            if lobby_id is not None and lobby_id != row.lobby_id:
                raise SessionMismatch("the session belongs to another lobby", details={"lobby_id": row.lobby_id})
            # Lock the lobby row (as every lobby operation does: one lock order, no deadlock), then read
            # the session again: signals of one lobby take turns instead of retrying on the version.
            if skip_locked:
                if store.claim_lobby(conn, row.lobby_id) is None:
                    return row.state, []
                lobby, members = _lobby(conn, row.lobby_id)
            else:
                lobby, members = _lobby(conn, row.lobby_id, lock=True)
            row = store.get_session(conn, session_id)
            transition = apply(row.state, lobby, members, now_s)
            if not transition.changed:
                return transition.state, []
            if not store.save_session(conn, transition.state, version=row.version, now_s=now_s):
                raise _VersionMoved
            analyses = self._effects_in_tx(conn, pushes, transition, lobby, members, now_s)
            if analyses:
                store.lease_analysis(conn, session_id, runner=self.runner, until_s=now_s + self.analysis_lease_s)
            return transition.state, analyses

        for _ in range(_SAVE_ATTEMPTS):
            try:
                state, analyses = await self.lobbies.write(work)
            except _VersionMoved:
                continue
            for command in analyses:
                self._spawn_analysis(session_id, command)
            return state
        raise Conflict("the session changed too often while applying this signal; try again")

    @staticmethod
    def _effects_in_tx(
        conn: Connection, pushes: Pushes, transition: Transition, lobby: LobbyRow, members: list[ParticipantRow], now_s: float
    ) -> list[Analyze]:
        _collect(pushes, transition, members)
        for effect in transition.effects:
            if isinstance(effect, Ended) and lobby.status is LobbyStatus.MEASURING:
                store.update_lobby(conn, lobby.id, status=check_transition(lobby.status, LobbyStatus.OPEN))
                lobby = store.get_lobby(conn, lobby.id)
                payload = {"session_id": transition.state.session_id, "step": effect.step.value}
                record(conn, pushes, lobby, members, "session_ended", payload, device_id=None, now_s=now_s)
        return [e for e in transition.effects if isinstance(e, Analyze)]

    def _device_left(
        self, conn: Connection, pushes: Pushes, lobby: LobbyRow, members: list[ParticipantRow], device_id: str, now_s: float
    ) -> None:
        """Inside the leave transaction (the lobby row is locked): fail a running session the device was in."""
        if lobby.session_id is None:
            return
        row = store.get_session(conn, lobby.session_id)
        transition = handle_device_left(row.state, device_id, now_s=now_s, timeouts=self.timeouts)
        if transition.changed and store.save_session(conn, transition.state, version=row.version, now_s=now_s):
            self._effects_in_tx(conn, pushes, transition, lobby, members, now_s)

    def _spawn_analysis(self, session_id: str, command: Analyze) -> None:
        log.info(
            "awaiting the analysis of session %s (speaker %d)", session_id, command.speaker_index,
            extra={"session_id": session_id, "runner": self.runner},
        )
        task = asyncio.create_task(self._analyze(session_id, command), name=f"lobby-analyze-{session_id}")
        self._awaiting[session_id] = task
        task.add_done_callback(lambda done: self._awaiting.get(session_id) is done and self._awaiting.pop(session_id))

    async def _analyze(self, session_id: str, command: Analyze) -> None:
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            job = await self.measurement.analyze(command.job_id, list(command.uploads), timeout_s=self.timeouts.analysis_s)
            results = job.get("results") or {}
            result = {"job_id": command.job_id, "results": {name: results.get(name) for name in command.uploads}}
        except SonalyzeError as exc:
            error = f"{exc.code}: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - any failure of the call fails the step with its reason
            log.exception("analysis of session %s failed", session_id)
            error = f"analysis failed: {exc!r}"

        def apply(state: SessionState, _lobby: LobbyRow, _members: list[ParticipantRow], now_s: float) -> Transition:
            return handle_analysis(state, command.speaker_index, result=result, error=error, now_s=now_s, timeouts=self.timeouts)

        try:
            await self._update(session_id, apply)
        except Exception:  # noqa: BLE001 - a background task: log, the step timeout still guards the session
            log.exception("could not record the analysis of session %s", session_id)

    async def check_deadlines(self) -> int:
        """Fail every session whose step deadline has passed; returns how many were due.

        Several replicas run this on one database: each session is failed once (its lobby row is claimed
        with ``SKIP LOCKED``, then the session is read again, and a finished step does not time out).
        """
        due = await self.db.read(lambda conn: store.due_sessions(conn, now_s=self.lobbies.clock()))

        def apply(state: SessionState, _lobby: LobbyRow, _members: list[ParticipantRow], now_s: float) -> Transition:
            return handle_timeout(state, now_s=now_s, timeouts=self.timeouts)

        for session_id in due:
            await self._update(session_id, apply, skip_locked=True)
        return len(due)

    async def keep_analyses(self) -> int:
        """Renew the leases of the analyses awaited here, then await those whose replica stopped renewing
        (killed; at start-up also those of a replica that stopped); returns how many were taken over.

        Runs at start-up and on every timer tick of every replica."""
        now_s = self.lobbies.clock()
        awaited = sorted(self._awaiting)
        if awaited:
            until_s = now_s + self.analysis_lease_s
            await self.db.write(lambda conn: store.renew_analyses(conn, awaited, runner=self.runner, until_s=until_s))
        claimed = await self.db.write(
            lambda conn: store.claim_lapsed_analyses(
                conn, runner=self.runner, now_s=now_s, until_s=now_s + self.analysis_lease_s, exclude=set(awaited)
            )
        )
        for state in claimed:
            log.warning("taking over the analysis of session %s (speaker %d)", state.session_id, state.speaker_index)
            self._spawn_analysis(state.session_id, analyze_command(state))
        return len(claimed)

    async def stop(self) -> None:
        """Hand the analyses awaited here over at once (their leases end), then stop awaiting them."""
        awaited = sorted(self._awaiting)
        if awaited:
            try:
                await self.db.write(lambda conn: store.renew_analyses(conn, awaited, runner=self.runner, until_s=None))
            except Exception:  # noqa: BLE001 - the leases then lapse by themselves
                log.warning("could not hand over the analyses of %d sessions", len(awaited), exc_info=True)
        tasks = list(self._awaiting.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _collect(pushes: Pushes, transition: Transition, members: list[ParticipantRow]) -> None:
    everyone = [m.device_id for m in members]
    for effect in transition.effects:
        if isinstance(effect, Push):
            targets = list(effect.targets) if effect.targets is not None else everyone
            pushes.add(transition.state.lobby_id, effect.event, effect.data, targets)


def _lobby(conn: Connection, lobby_id: str, *, lock: bool = False) -> tuple[LobbyRow, list[ParticipantRow]]:
    lobby = store.get_lobby(conn, lobby_id, lock=lock)
    if lobby is None:
        raise NotFound(f"lobby {lobby_id} does not exist")
    return lobby, store.list_participants(conn, lobby_id)


def _require_member(members: list[ParticipantRow], device_id: str) -> None:
    if all(m.device_id != device_id for m in members):
        raise Forbidden("only participants of the lobby can do this")
