"""A tiny chat service behind the gateway (seed 001's rooms): membership, history, room events.

- ``gateway.authorize_subscribe`` (the gateway's channel hook for ``room:*``): joining a room. Rooms are
  open: the device becomes a member, the others get ``room.joined``.
- ``chat.send`` ``{"room_id", "text"}``: members only; kept in the room's history (the last
  ``HISTORY_SIZE``) and broadcast as ``room.message`` to the room's channel, across every gateway instance.
- ``chat.history`` ``{"room_id"}``: the kept messages.
- ``chat.leave`` ``{"room_id"}``: no longer a member; the others get ``room.left``.

Pushes go through ``POST {CHAT_GATEWAY_URL}/internal/broadcast`` with ``targets.channels``.
Run: ``PORT=9100 CHAT_GATEWAY_URL=http://127.0.0.1:8000 INTERNAL_AUTH_TOKEN=... python examples/chat/chat_upstream.py``
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

from sonalyze.common.errors import Forbidden
from sonalyze.common.handle import EventContext, EventHandlers

HISTORY_SIZE = 100
ROOM_PREFIX = "room:"


class RoomRef(BaseModel):
    room_id: str = Field(min_length=1, max_length=100)


class SendMessage(RoomRef):
    text: str = Field(min_length=1, max_length=4000)


class Room:
    def __init__(self) -> None:
        self.members: set[str] = set()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SIZE)
        self.seq = 0


def create_app(gateway_url: str, internal_token: str) -> FastAPI:
    rooms: dict[str, Room] = {}
    handlers = EventHandlers()
    client = httpx.AsyncClient(base_url=gateway_url, headers={"X-Internal-Token": internal_token}, timeout=5.0)

    async def push(room_id: str, event: str, data: dict[str, Any]) -> None:
        body = {"event": event, "data": data, "targets": {"channels": [ROOM_PREFIX + room_id]}}
        (await client.post("/internal/broadcast", json=body)).raise_for_status()

    def member_room(context: EventContext, room_id: str) -> Room:
        room = rooms.get(room_id)
        if room is None or context.require_device() not in room.members:
            raise Forbidden(f"join room {room_id!r} first (subscribe to {ROOM_PREFIX}{room_id})")
        return room

    @handlers.on("gateway.authorize_subscribe")
    async def join(context: EventContext) -> dict[str, Any]:
        channel = str(context.data.get("channel", ""))
        if not channel.startswith(ROOM_PREFIX) or len(channel) == len(ROOM_PREFIX):
            return {"allowed": False, "reason": "only room:{room_id} channels"}
        device_id = context.require_device()
        room_id = channel[len(ROOM_PREFIX):]
        room = rooms.setdefault(room_id, Room())
        if device_id not in room.members:
            room.members.add(device_id)
            await push(room_id, "room.joined", {"room_id": room_id, "device_id": device_id, "members": len(room.members)})
        return {"allowed": True}

    @handlers.on("chat.send")
    async def send(context: EventContext) -> dict[str, Any]:
        request = context.parse(SendMessage)
        room = member_room(context, request.room_id)
        room.seq += 1
        message = {"room_id": request.room_id, "seq": room.seq, "device_id": context.device_id, "text": request.text}
        room.history.append(message)
        await push(request.room_id, "room.message", message)
        return {"seq": room.seq}

    @handlers.on("chat.history")
    async def history(context: EventContext) -> dict[str, Any]:
        room = member_room(context, context.parse(RoomRef).room_id)
        return {"messages": list(room.history)}

    @handlers.on("chat.leave")
    async def leave(context: EventContext) -> dict[str, Any]:
        request = context.parse(RoomRef)
        room = member_room(context, request.room_id)
        room.members.discard(context.device_id or "")
        await push(request.room_id, "room.left", {"room_id": request.room_id, "device_id": context.device_id, "members": len(room.members)})
        return {"left": request.room_id}

    app = FastAPI(title="chat example")
    app.include_router(handlers.router())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    app = create_app(os.environ["CHAT_GATEWAY_URL"], os.environ["INTERNAL_AUTH_TOKEN"])
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "9100")), log_level="warning")
