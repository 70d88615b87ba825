"""Voice example (seed 002): a JWT-authenticated WebSocket per call, audio frames relayed over Redis.

    python -m examples.voice.run        # REDIS_URL defaults to redis://127.0.0.1:6379/0

It prints a gateway URL and a token for a call; a client connects with ``/ws?token=...``, sends binary
PCM16 frames (16 kHz mono) and gets ``transcript`` events back, and ``{"event": "ping"}`` → ``pong``.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import redis

from examples._launch import Process, gateway, python_app, stop_all, wait_forever

HERE = Path(__file__).resolve().parent
ISSUER, AUDIENCE = "voice-example", "sonalyze-gateway"


@dataclass
class VoiceStack:
    gateway: Process
    worker: Process
    jwt_secret: str

    def token(self, call_id: str, tenant_id: str = "tenant_123", ttl_s: float = 3600) -> str:
        """What an auth service would hand a client for one call (seed 002's claims, plus ``call_id``)."""
        claims = {"call_id": call_id, "tenant_id": tenant_id, "sub": tenant_id, "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time() + ttl_s)}
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")

    def stop(self) -> None:
        stop_all([self.worker, self.gateway])


def start(redis_url: str) -> VoiceStack:
    secret, token = secrets.token_hex(32), secrets.token_hex(16)
    node = gateway("gateway", {
        "INTERNAL_AUTH_TOKEN": token, "AUTH_REQUIRED": "true", "JWT_ALGORITHMS": "HS256", "JWT_SECRET": secret,
        "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE, "JWT_DEVICE_CLAIM": "call_id",
        "BINARY_RELAY_URL": redis_url, "BINARY_RELAY_CHANNEL": "audio:{device_id}",
    })
    worker = python_app("worker", HERE / "worker.py", {"REDIS_URL": redis_url, "GATEWAY_URL": node.url, "INTERNAL_AUTH_TOKEN": token}, None)
    node.start()
    try:
        bus = redis.Redis.from_url(redis_url)
        patterns_before = bus.pubsub_numpat()
        worker.start()
        deadline = time.monotonic() + 30
        while bus.pubsub_numpat() <= patterns_before:  # the worker has subscribed to audio:*
            if time.monotonic() > deadline or worker.popen is None or worker.popen.poll() is not None:
                raise RuntimeError("the voice worker did not subscribe to audio:*")
            time.sleep(0.05)
        bus.close()
    except Exception:
        stop_all([worker, node])
        raise
    return VoiceStack(node, worker, secret)


if __name__ == "__main__":
    stack = start(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    print(f"connect: {stack.gateway.ws_url}/ws?token={stack.token('call-1')}")
    print("send binary PCM16 frames (16 kHz mono); Ctrl-C stops everything")
    wait_forever([stack.gateway, stack.worker])
