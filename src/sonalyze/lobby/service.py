"""Lobby operations: one database transaction each, then the pushes that announce the change.

Pushes are collected in a :class:`Pushes` during the transaction and handed to the broadcaster only
after the commit, so a device is never told about a state that was rolled back. So are the changes of
the lobby's gateway channel ``lobby:{lobby_id}``: a device is subscribed when it creates or joins the
lobby and unsubscribed when it leaves or the lobby closes, each time before the push that announces it.
Pushes themselves target the participants' device ids, not the channel: a phone that reconnected gets
them even before it is in the channel again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy import Connection

from sonalyze.lobby import store
from sonalyze.lobby.broadcast import Broadcaster
from sonalyze.lobby.codes import new_code
from sonalyze.lobby.errors import BadRequest, Conflict, Forbidden, NotFound
from sonalyze.lobby.lifecycle import LobbyStatus, Role, check_transition
from sonalyze.lobby.schemas import AssignRole, AuthorizeSubscribe, CreateLobby, GetLobby, JoinLobby, ListEvents, LobbyRef, ShareRoom
from sonalyze.lobby.store import Database, LobbyRow, ParticipantRow

Clock = Callable[[], float]

_CODE_ATTEMPTS = 20

CHANNEL_PREFIX = "lobby:"


def lobby_channel(lobby_id: str) -> str:
    """The gateway channel of a lobby's participants."""
    return CHANNEL_PREFIX + lobby_id


class Pushes:
    """Pushes and channel changes decided inside a transaction, sent in that order after it commits."""

    def __init__(self) -> None:
        self.items: list[Callable[[Broadcaster], None]] = []

    def add(self, lobby_id: str, event: str, data: dict[str, Any], device_ids: list[str]) -> None:
        self.items.append(lambda broadcaster: broadcaster.send(event, data, device_ids, order_key=lobby_id))

    def channel(self, lobby_id: str, action: Literal["subscribe", "unsubscribe"], device_ids: list[str]) -> None:
        """Put the devices into the lobby's channel (``subscribe``) or take them out."""
        channel = lobby_channel(lobby_id)
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
        "participants": [{"device_id": m.device_id, "role": m.role} for m in members],
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

    def __init__(self, db: Database, broadcaster: Broadcaster, *, clock: Clock = time.time) -> None:
        self.db = db
        self.broadcaster = broadcaster
        self.clock = clock
        self.on_device_left: Callable[[Connection, Pushes, LobbyRow, list[ParticipantRow], str, float], None] | None = None
        """Set by the session coordinator: a session device leaving fails the running session."""

    async def write(self, work: Callable[[Connection, Pushes, float], dict[str, Any]]) -> dict[str, Any]:
        pushes = Pushes()
        result = await self.db.write(work, pushes, self.clock())
        pushes.send(self.broadcaster)
        return result

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
            store.add_participant(conn, lobby_id=lobby_id, device_id=device_id, joined_seq=seq, now_s=now_s)
            pushes.channel(lobby_id, "subscribe", [device_id])
            return lobby_view(lobby, [ParticipantRow(device_id, None, seq)])

        for _ in range(_CODE_ATTEMPTS):
            try:
                return await self.write(work)
            except IntegrityError:
                continue  # the code is taken by an open lobby: draw another
        raise Conflict("could not find a free join code; try again")

    async def join(self, device_id: str, body: JoinLobby) -> dict[str, Any]:
        def work(conn: Connection, pushes: Pushes, now_s: float) -> dict[str, Any]:
            lobby = store.get_lobby_by_code(conn, body.code, lock=True)
            if lobby is None:
                raise NotFound(f"no open lobby has the code {body.code}")
            members = store.list_participants(conn, lobby.id)
            # Joining again subscribes again: the way back into the channel for a phone that reconnected.
            pushes.channel(lobby.id, "subscribe", [device_id])
            if _member(members, device_id) is None:
                members.append(ParticipantRow(device_id, None, lobby.last_seq + 1))
                seq = record(conn, pushes, lobby, members, "participant_joined", {}, device_id=device_id, now_s=now_s)
                store.add_participant(conn, lobby_id=lobby.id, device_id=device_id, joined_seq=seq, now_s=now_s)
            return lobby_view(lobby, members)

        return await self.write(work)

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
        def work(conn: Connection) -> dict[str, Any]:
            lobby = store.get_lobby(conn, body.lobby_id) if body.lobby_id else store.get_lobby_by_code(conn, body.code)
            if lobby is None:
                raise NotFound("no such lobby" if body.lobby_id else f"no open lobby has the code {body.code}")
            members = store.list_participants(conn, lobby.id)
            self._require_member(lobby, members, device_id)
            return lobby_view(lobby, members)

        return await self.db.read(work)

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
                members = [ParticipantRow(m.device_id, role, m.joined_seq) if m is target else m for m in members]
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
