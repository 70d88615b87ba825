"""Lobby operations: one database transaction each, then the pushes that announce the change.

Pushes are collected in a :class:`Pushes` during the transaction and handed to the broadcaster only
after the commit, so a device is never told about a state that was rolled back. So are the changes of
the lobby's gateway channel ``lobby:{lobby_id}``: a device is subscribed when it creates or joins the
lobby and unsubscribed when it leaves or the lobby closes, each time before the push that announces it.
Pushes themselves target the participants' device ids, not the channel: a phone that reconnected gets
them even before it is in the channel again.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy import Connection

from sonalyze.lobby import store
from sonalyze.lobby.broadcast import Broadcaster
from sonalyze.lobby.codes import new_code
from sonalyze.common.errors import RateLimited, SonalyzeError
from sonalyze.lobby.errors import BadRequest, Conflict, Forbidden, NotFound
from sonalyze.lobby.lifecycle import LobbyStatus, Role, check_transition
from sonalyze.lobby.schemas import AssignRole, AuthorizeSubscribe, CreateLobby, GetLobby, JoinLobby, ListEvents, LobbyRef, ShareRoom
from sonalyze.lobby.store import Database, LobbyRow, ParticipantRow

Clock = Callable[[], float]

_CODE_ATTEMPTS = 20

CHANNEL_PREFIX = "lobby:"


@dataclasses.dataclass(frozen=True, slots=True)
class JoinLimit:
    """Failed lookups by join code (``lobby.join``, ``lobby.get {"code"}``) a device may make per window.

    A fixed window per device, kept in the database so every replica counts against the same number:
    the first failure opens a window of ``window_s``; once ``failures`` failed in it, every lookup by
    code of that device is refused (``rate_limited``, hit or miss alike) until the window is over.
    The arithmetic of what this buys is in docs/security.md ("Join codes")."""

    failures: int = 10
    window_s: float = 600.0

    def refusal(self, window_start_s: float, failures: int, now_s: float, *, counted: bool) -> RateLimited | None:
        """The refusal when ``failures`` in the window starting at ``window_start_s`` are too many; a
        ``counted`` failure (this attempt included) may reach the limit, an attempt not yet made may not."""
        end_s = window_start_s + self.window_s
        if now_s >= end_s or failures < self.failures + counted:
            return None
        retry_after_s = max(1, math.ceil(end_s - now_s))
        return RateLimited(
            f"too many lobbies not found by code from this device; try again in {retry_after_s} s",
            details={"retry_after_s": retry_after_s, "max_failures": self.failures, "window_s": self.window_s},
            headers={"Retry-After": str(retry_after_s)},
        )


def lobby_channel(lobby_id: str) -> str:
    """The gateway channel of a lobby's participants."""
    return CHANNEL_PREFIX + lobby_id


class Pushes:
    """Pushes and channel changes decided inside a transaction, sent in that order after it commits."""

    def __init__(self) -> None:
        self.items: list[Callable[[Broadcaster], None]] = []
        self.lobby_ids: set[str] = set()

    def add(self, lobby_id: str, event: str, data: dict[str, Any], device_ids: list[str]) -> None:
        self.lobby_ids.add(lobby_id)
        self.items.append(lambda broadcaster: broadcaster.send(event, data, device_ids, order_key=lobby_id))

    def channel(self, lobby_id: str, action: Literal["subscribe", "unsubscribe"], device_ids: list[str]) -> None:
        """Put the devices into the lobby's channel (``subscribe``) or take them out."""
        channel = lobby_channel(lobby_id)
        self.lobby_ids.add(lobby_id)
        self.items.append(lambda broadcaster: broadcaster.subscription(action, channel, device_ids, order_key=lobby_id))

    def send(self, broadcaster: Broadcaster) -> None:
        for item in self.items:
            item(broadcaster)


def lobby_view(lobby: LobbyRow, members: list[ParticipantRow], *, status: LobbyStatus | None = None) -> dict[str, Any]:
    """The lobby as ``lobby.get`` returns it."""
    return {
        "lobby_id": lobby.id,
        "code": lobby.code,
        "name": lobby.name,
        "status": (status or lobby.status).value,
        "host_device_id": lobby.host_device_id,
        "participants": [{"device_id": m.device_id, "role": m.role, "name": m.name} for m in members],
        "room": lobby.room,
        "session_id": lobby.session_id,
    }


def record(
    conn: Connection,
    pushes: Pushes,
    lobby: LobbyRow,
    members: list[ParticipantRow],
    type_: str,
    payload: dict[str, Any],
    *,
    device_id: str | None,
    now_s: float,
    also_notify: tuple[str, ...] = (),
) -> int:
    """Append ``type_`` to the lobby's log and push ``lobby.updated`` to its participants (after commit)."""
    seq = store.append_event(conn, lobby_id=lobby.id, type_=type_, device_id=device_id, data=payload, now_s=now_s)
    data = {"type": type_, "lobby_id": lobby.id, "seq": seq, "device_id": device_id, **payload, "lobby": lobby_view(lobby, members)}
    pushes.add(lobby.id, "lobby.updated", data, [m.device_id for m in members] + list(also_notify))
    return seq


def _member(members: list[ParticipantRow], device_id: str) -> ParticipantRow | None:
    return next((m for m in members if m.device_id == device_id), None)


class LobbyService:
    """Each operation is a plain function over one transaction (run by :class:`Database`), then pushes."""

    def __init__(self, db: Database, broadcaster: Broadcaster, *, clock: Clock = time.time, join_limit: JoinLimit = JoinLimit()) -> None:
        self.db = db
        self.broadcaster = broadcaster
        self.clock = clock
        self.join_limit = join_limit
        self.on_device_left: Callable[[Connection, Pushes, LobbyRow, list[ParticipantRow], str, float], None] | None = None
        """Set by the session coordinator: a session device leaving fails the running session."""

    async def write(self, work: Callable[[Connection, Pushes, float], dict[str, Any]]) -> dict[str, Any]:
        """``work`` in one transaction, then its pushes; the lobby's turn is held until the gateway answered
        them, so replicas push one lobby's changes in ``seq`` order (:meth:`Database.write_in_turn`)."""
        pushes = Pushes()

        async def announce() -> None:
            pushes.send(self.broadcaster)
            if not self.db.is_sqlite and pushes.lobby_ids:  # one process on SQLite: its queues keep the order
                await self.broadcaster.sent(tuple(pushes.lobby_ids))

        return await self.db.write_in_turn(work, pushes, self.clock(), turns=lambda: pushes.lobby_ids, after=announce)

    @staticmethod
    def _locked(conn: Connection, lobby_id: str) -> tuple[LobbyRow, list[ParticipantRow]]:
        lobby = store.get_lobby(conn, lobby_id, lock=True)
        if lobby is None:
            raise NotFound(f"lobby {lobby_id} does not exist")
        return lobby, store.list_participants(conn, lobby_id)

    @staticmethod
    def _require_member(lobby: LobbyRow, members: list[ParticipantRow], device_id: str) -> None:
        if _member(members, device_id) is None:
            raise Forbidden("only participants of the lobby can do this", details={"lobby_id": lobby.id})

    def _check_join_limit(self, conn: Connection, device_id: str, now_s: float) -> None:
        """Refuse a lookup by code before it is made if the device failed too often (a hit is refused too:
        the answer must not tell whether the code exists)."""
        row = store.join_failures_of(conn, device_id)
        refusal = row and self.join_limit.refusal(*row, now_s, counted=False)
        if refusal:
            raise refusal

    def _failed_lookup(self, conn: Connection, device_id: str, code: str, now_s: float) -> SonalyzeError:
        """Count a lookup by code that found nothing; the error to answer once that count is committed
        (``rate_limited`` when concurrent attempts of the device went past the limit together)."""
        window = store.count_join_failure(conn, device_id, now_s=now_s, window_s=self.join_limit.window_s)
        return self.join_limit.refusal(*window, now_s, counted=True) or NotFound(f"no open lobby has the code {code}")

    async def _by_code(self, work: Callable[[Connection, Pushes, float], dict[str, Any] | SonalyzeError]) -> dict[str, Any]:
        """A write whose ``work`` returns the error of a failed lookup instead of raising it, so the
        failure it counted commits."""
        result = await self.write(work)
        if isinstance(result, SonalyzeError):
            raise result
        return result

    @staticmethod
    def _require_host(lobby: LobbyRow, device_id: str, action: str) -> None:
        if lobby.host_device_id != device_id:
            raise Forbidden(f"only the host can {action}", details={"host_device_id": lobby.host_device_id})

    # ------------------------------------------------------------------------------------------- operations

    async def create(self, device_id: str, body: CreateLobby) -> dict[str, Any]:
        def work(conn: Connection, pushes: Pushes, now_s: float) -> dict[str, Any]:
            lobby_id = uuid.uuid4().hex
            lobby = store.insert_lobby(conn, lobby_id=lobby_id, code=new_code(), name=body.name, host_device_id=device_id, now_s=now_s)
            seq = store.append_event(conn, lobby_id=lobby_id, type_="created", device_id=device_id, data={"name": body.name}, now_s=now_s)
            name = body.device_name
            store.add_participant(conn, lobby_id=lobby_id, device_id=device_id, joined_seq=seq, now_s=now_s, name=name)
            pushes.channel(lobby_id, "subscribe", [device_id])
            return lobby_view(lobby, [ParticipantRow(device_id, None, seq, name)])

        for _ in range(_CODE_ATTEMPTS):
            try:
                return await self.write(work)
            except IntegrityError:
                continue  # the code is taken by an open lobby: draw another
        raise Conflict("could not find a free join code; try again")

    async def join(self, device_id: str, body: JoinLobby) -> dict[str, Any]:
        """Joining again changes nothing but the device's name, when it gives a new one."""
        name = body.device_name

        def work(conn: Connection, pushes: Pushes, now_s: float) -> dict[str, Any] | SonalyzeError:
            self._check_join_limit(conn, device_id, now_s)
            lobby = store.get_lobby_by_code(conn, body.code, lock=True)
            if lobby is None:
                return self._failed_lookup(conn, device_id, body.code, now_s)
            members = store.list_participants(conn, lobby.id)
            # Joining again subscribes again: the way back into the channel for a phone that reconnected.
            pushes.channel(lobby.id, "subscribe", [device_id])
            member = _member(members, device_id)
            if member is None:
                members.append(ParticipantRow(device_id, None, lobby.last_seq + 1, name))
                seq = record(conn, pushes, lobby, members, "participant_joined", {}, device_id=device_id, now_s=now_s)
                store.add_participant(conn, lobby_id=lobby.id, device_id=device_id, joined_seq=seq, now_s=now_s, name=name)
            elif name is not None and name != member.name:
                members = [dataclasses.replace(m, name=name) if m is member else m for m in members]
                store.set_name(conn, lobby_id=lobby.id, device_id=device_id, name=name)
                record(conn, pushes, lobby, members, "participant_renamed", {"name": name}, device_id=device_id, now_s=now_s)
            return lobby_view(lobby, members)

        return await self._by_code(work)

    async def leave(self, device_id: str, body: LobbyRef) -> dict[str, Any]:
        """Leaving twice is harmless; the host's role passes to the earliest joiner, or the lobby closes."""

        def work(conn: Connection, pushes: Pushes, now_s: float) -> dict[str, Any]:
            lobby, members = self._locked(conn, body.lobby_id)
            if _member(members, device_id) is None or lobby.status is LobbyStatus.CLOSED:
                return {**lobby_view(lobby, members), "left": False}
            members = [m for m in members if m.device_id != device_id]
            store.remove_participant(conn, lobby_id=lobby.id, device_id=device_id)
            pushes.channel(lobby.id, "unsubscribe", [device_id])
            record(conn, pushes, lobby, members, "participant_left", {}, device_id=device_id, now_s=now_s, also_notify=(device_id,))
            if self.on_device_left is not None:
                self.on_device_left(conn, pushes, lobby, members, device_id, now_s)
                lobby = store.get_lobby(conn, lobby.id)
            if lobby.host_device_id == device_id:
                lobby = self._pass_host(conn, pushes, lobby, members, device_id, now_s)
            return {**lobby_view(lobby, members), "left": True}

        return await self.write(work)

    def _pass_host(
        self, conn: Connection, pushes: Pushes, lobby: LobbyRow, members: list[ParticipantRow], old_host: str, now_s: float
    ) -> LobbyRow:
        if not members:
            return self.close(conn, pushes, lobby, members, reason="the last participant left", now_s=now_s)
        new_host = members[0].device_id
        store.update_lobby(conn, lobby.id, host_device_id=new_host)
        lobby = store.get_lobby(conn, lobby.id)
        payload = {"host_device_id": new_host, "previous_host_device_id": old_host}
        record(conn, pushes, lobby, members, "host_changed", payload, device_id=old_host, now_s=now_s)
        return lobby

    @staticmethod
    def close(conn: Connection, pushes: Pushes, lobby: LobbyRow, members: list[ParticipantRow], *, reason: str, now_s: float) -> LobbyRow:
        check_transition(lobby.status, LobbyStatus.CLOSED)
        store.update_lobby(conn, lobby.id, status=LobbyStatus.CLOSED, host_device_id=lobby.host_device_id if members else None)
        lobby = store.get_lobby(conn, lobby.id)
        pushes.channel(lobby.id, "unsubscribe", [m.device_id for m in members])
        record(conn, pushes, lobby, members, "closed", {"reason": reason}, device_id=None, now_s=now_s)
        return lobby

    async def get(self, device_id: str, body: GetLobby) -> dict[str, Any]:
        """By id (a read), or by code: a lookup by code counts against the device's join limit like a join."""

        def work(conn: Connection) -> dict[str, Any]:
            lobby = store.get_lobby(conn, body.lobby_id)
            if lobby is None:
                raise NotFound("no such lobby")
            return self._member_view(conn, lobby, device_id)

        def by_code(conn: Connection, _pushes: Pushes, now_s: float) -> dict[str, Any] | SonalyzeError:
            self._check_join_limit(conn, device_id, now_s)
            lobby = store.get_lobby_by_code(conn, body.code)
            if lobby is None:
                return self._failed_lookup(conn, device_id, body.code, now_s)
            return self._member_view(conn, lobby, device_id)

        if body.code is not None:
            return await self._by_code(by_code)
        return await self.db.read(work)

    def _member_view(self, conn: Connection, lobby: LobbyRow, device_id: str) -> dict[str, Any]:
        members = store.list_participants(conn, lobby.id)
        self._require_member(lobby, members, device_id)
        return lobby_view(lobby, members)

    async def assign_role(self, device_id: str, body: AssignRole) -> dict[str, Any]:
        def work(conn: Connection, pushes: Pushes, now_s: float) -> dict[str, Any]:
            lobby, members = self._locked(conn, body.lobby_id)
            self._require_member(lobby, members, device_id)
            self._require_host(lobby, device_id, "assign roles")
            if lobby.status is not LobbyStatus.OPEN:
                raise Conflict(f"roles are fixed while the lobby is {lobby.status.value}", details={"status": lobby.status.value})
            target = _member(members, body.device_id)
            if target is None:
                raise NotFound(f"device {body.device_id} is not in this lobby")
            role = body.role.value if body.role else None
            if target.role != role:
                members = [dataclasses.replace(m, role=role) if m is target else m for m in members]
                store.set_role(conn, lobby_id=lobby.id, device_id=body.device_id, role=role)
                payload = {"target_device_id": body.device_id, "role": role}
                record(conn, pushes, lobby, members, "role_assigned", payload, device_id=device_id, now_s=now_s)
            return lobby_view(lobby, members)

        return await self.write(work)

    async def start(self, device_id: str, body: LobbyRef) -> dict[str, Any]:
        """``open → measuring``: roles are fixed; the host can now create a measurement session."""

        def work(conn: Connection, pushes: Pushes, now_s: float) -> dict[str, Any]:
            lobby, members = self._locked(conn, body.lobby_id)
            self._require_member(lobby, members, device_id)
            self._require_host(lobby, device_id, "start the measurement")
            status = check_transition(lobby.status, LobbyStatus.MEASURING)
            roles = {m.role for m in members}
            if Role.SPEAKER.value not in roles or Role.MICROPHONE.value not in roles:
                raise Conflict("a measurement needs at least one speaker and one microphone")
            store.update_lobby(conn, lobby.id, status=status)
            lobby = store.get_lobby(conn, lobby.id)
            record(conn, pushes, lobby, members, "started", {}, device_id=device_id, now_s=now_s)
            return lobby_view(lobby, members)

        return await self.write(work)

    async def share_room(self, device_id: str, body: ShareRoom) -> dict[str, Any]:
        room = body.room.model_dump(mode="json")

        def work(conn: Connection, pushes: Pushes, now_s: float) -> dict[str, Any]:
            lobby, members = self._locked(conn, body.lobby_id)
            self._require_member(lobby, members, device_id)
            if lobby.status is LobbyStatus.CLOSED:
                raise Conflict("the lobby is closed")
            strangers = sorted(set(body.room.devices) - {m.device_id for m in members})
            if strangers:
                raise BadRequest("device positions name devices that are not in the lobby", details={"device_ids": strangers})
            store.update_lobby(conn, lobby.id, room=room)
            lobby = store.get_lobby(conn, lobby.id)
            record(conn, pushes, lobby, members, "room_snapshot", {"room": room}, device_id=device_id, now_s=now_s)
            return lobby_view(lobby, members)

        return await self.write(work)

    async def authorize_subscribe(self, device_id: str, body: AuthorizeSubscribe) -> dict[str, Any]:
        """``gateway.authorize_subscribe``: a device may join ``lobby:{lobby_id}`` while it is a participant
        of that lobby and the lobby is not closed."""
        if not body.channel.startswith(CHANNEL_PREFIX):
            return {"allowed": False, "reason": f"the lobby service only authorizes {CHANNEL_PREFIX}{{lobby_id}} channels"}
        lobby_id = body.channel.removeprefix(CHANNEL_PREFIX)

        def work(conn: Connection) -> dict[str, Any]:
            lobby = store.get_lobby(conn, lobby_id)
            if lobby is None:
                return {"allowed": False, "reason": f"lobby {lobby_id} does not exist"}
            if lobby.status is LobbyStatus.CLOSED:
                return {"allowed": False, "reason": "the lobby is closed"}
            if _member(store.list_participants(conn, lobby_id), device_id) is None:
                return {"allowed": False, "reason": "not a participant of this lobby"}
            return {"allowed": True}

        return await self.db.read(work)

    async def job_access(self, lobby_id: str, job_id: str) -> dict[str, Any]:
        """Who may reach the measurement job of one of the lobby's sessions (asked by the measurement
        service): the lobby's participants now (a device that left is no longer one), when the lobby
        closed (``closed_at_s``, null while open) and which device uploads each file of the session."""

        def work(conn: Connection) -> dict[str, Any]:
            lobby = store.get_lobby(conn, lobby_id)
            state = store.session_of_job(conn, lobby_id, job_id) if lobby is not None else None
            if state is None:
                raise NotFound(f"lobby {lobby_id} has no session measuring into job {job_id}")
            uploads = {state.upload_name(mic, index): mic for index in range(len(state.speakers)) for mic in state.microphones}
            return {
                "lobby_id": lobby_id,
                "job_id": job_id,
                "devices": [m.device_id for m in store.list_participants(conn, lobby_id)],
                "closed_at_s": lobby.updated_s if lobby.status is LobbyStatus.CLOSED else None,
                "uploads": uploads,
            }

        return await self.db.read(work)

    async def events(self, device_id: str, body: ListEvents) -> dict[str, Any]:
        def work(conn: Connection) -> dict[str, Any]:
            lobby = store.get_lobby(conn, body.lobby_id)
            if lobby is None:
                raise NotFound(f"lobby {body.lobby_id} does not exist")
            self._require_member(lobby, store.list_participants(conn, lobby.id), device_id)
            rows = store.list_events(conn, lobby.id, since=body.since, limit=body.limit)
            next_since = rows[-1]["seq"] if rows else body.since
            return {"lobby_id": lobby.id, "events": rows, "next_since": next_since, "last_seq": lobby.last_seq}

        return await self.db.read(work)

    async def prune_join_failures(self) -> int:
        """Forget failed lookups whose window is over; returns how many devices were forgotten."""
        before_s = self.clock() - self.join_limit.window_s
        return await self.db.write(lambda conn: store.prune_join_failures(conn, before_s=before_s))

    async def expire_idle(self, *, idle_timeout_s: float) -> int:
        """Close every lobby idle for longer than ``idle_timeout_s``; returns how many closed."""
        idle = await self.db.read(lambda conn: store.idle_lobbies(conn, updated_before_s=self.clock() - idle_timeout_s))
        closed = 0
        for lobby_id in idle:

            def work(conn: Connection, pushes: Pushes, now_s: float, lobby_id: str = lobby_id) -> bool:
                lobby, members = self._locked(conn, lobby_id)
                if lobby.status is LobbyStatus.CLOSED or lobby.updated_s >= now_s - idle_timeout_s:
                    return False
                self.close(conn, pushes, lobby, members, reason="idle", now_s=now_s)
                return True

            closed += await self.write(work)
        return closed
