"""Chat example (seed 001): two gateway instances over Redis in front of a tiny chat service.

    python -m examples.chat.run            # REDIS_URL defaults to redis://127.0.0.1:6379/0

Then connect WebSocket clients to either gateway (``/ws?device_id=alice``), send
``{"event": "subscribe", "data": {"channel": "room:lobby"}}`` to join, ``{"event": "chat.send",
"data": {"room_id": "lobby", "text": "hi"}}`` to talk: members on both instances get ``room.message``.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from examples._launch import Process, free_port, gateway, python_app, stop_all, wait_forever

HERE = Path(__file__).resolve().parent


@dataclass
class ChatCluster:
    chat: Process
    gateways: list[Process]

    def stop(self) -> None:
        stop_all([*self.gateways, self.chat])


def start(redis_url: str, prefix: str | None = None, instances: int = 2) -> ChatCluster:
    token = secrets.token_hex(16)
    prefix = prefix or f"chat-{uuid.uuid4().hex[:8]}:"
    gateway_ports = [free_port() for _ in range(instances)]
    chat = python_app("chat", HERE / "chat_upstream.py", {
        "CHAT_GATEWAY_URL": f"http://127.0.0.1:{gateway_ports[0]}", "INTERNAL_AUTH_TOKEN": token,
    })
    routes = {
        "routes": [{"events": ["chat.*"], "upstream": chat.url}],
        "channels": [{"channels": ["room:*"], "authorize": chat.url}],
    }
    env = {
        "BROKER_URL": redis_url, "GATEWAY_BROKER_PREFIX": prefix, "INTERNAL_AUTH_TOKEN": token, "GATEWAY_ROUTES": json.dumps(routes),
        "ALLOW_INSECURE_DEVICE_IDS": "true",  # a local example: users connect as ?device_id=alice (no device tokens)
    }
    gateways = [gateway(f"gateway-{n + 1}", env, port) for n, port in enumerate(gateway_ports)]
    started: list[Process] = []
    try:
        for process in (chat, *gateways):
            started.append(process.start())
    except Exception:
        stop_all(started)
        raise
    return ChatCluster(chat, gateways)


if __name__ == "__main__":
    cluster = start(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    for process in cluster.gateways:
        print(f"{process.name}: {process.ws_url}/ws?device_id=...")
    print(f"chat service: {cluster.chat.url}   (Ctrl-C stops everything)")
    wait_forever([cluster.chat, *cluster.gateways])
