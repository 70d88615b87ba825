"""Voice example (seed 002): the seed's whole gateway role, as configuration of the Sonalyze gateway.

    python -m examples.voice.run --port 8000 [--algorithm HS256|RS256]   # REDIS_URL, default redis://127.0.0.1:6379/0

Starts the call service (``call_service.py``: ``/auth/token``, ``/call/...``, ``/handoff``, ``/rag/query``,
``/ingest``, ``/health``), the worker (``worker.py``) and a gateway on ``--port`` whose profiles document
(``GATEWAY_PROFILES``, printed by :func:`profiles_document`) proxies those paths to the call service and
serves ``WS /ws/{call_id}`` with seed 002's ``type``-keyed JSON. The API key of ``tenant_123`` is
``secret`` unless ``API_KEYS`` says otherwise (as in the seed's own client).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from examples._launch import Process, free_port, gateway, python_app, stop_all, wait_forever

HERE = Path(__file__).resolve().parent
DEFAULT_API_KEYS = {"tenant_123": "secret"}


def profiles_document(redis_url: str, call_service_url: str) -> dict[str, Any]:
    """The gateway's data for seed 002: one WebSocket profile and the proxy table."""
    return {
        "websocket": [{
            "path": "/ws/{call_id}", "protocol": "typed_json", "redis_url": redis_url,
            "token": "optional", "require_key": "call:{call_id}:active", "events_channel": "call_events:{call_id}",
            "binary": "audio", "end": {"channel": "call.ended", "field": "call_id", "reason": "call ended"},
            "messages": {
                "audio": {"publish": "audio:{call_id}", "base64_field": "data"},
                "barge_in": {"publish": "barge_in:{call_id}", "count_event": "barge_in"},
            },
        }],
        "http": [
            {"prefix": "/auth", "upstream": call_service_url},
            {"prefix": "/call", "upstream": call_service_url, "count": [
                {"method": "POST", "path": "/call/start", "event_type": "started"},
                {"method": "POST", "path": "/call/{call_id}/end", "event_type": "ended"},
            ]},
            {"prefix": "/handoff", "upstream": call_service_url, "count": [{"method": "POST", "path": "/handoff", "event_type": "handoff"}]},
            {"prefix": "/rag", "upstream": call_service_url},
            {"prefix": "/ingest", "upstream": call_service_url},
            {"prefix": "/health", "upstream": call_service_url},
        ],
    }


def jwt_keys(algorithm: str) -> tuple[dict[str, str], dict[str, str]]:
    """(the call service's signing settings, the gateway's verifying settings) for HS256 or RS256."""
    if algorithm == "HS256":
        secret = secrets.token_hex(32)
        return {"JWT_ALGORITHM": "HS256", "JWT_SECRET": secret}, {"JWT_ALGORITHMS": "HS256", "JWT_SECRET": secret}
    if algorithm == "RS256":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return (
            {"JWT_ALGORITHM": "RS256", "JWT_PRIVATE_KEY": private_pem, "JWT_PUBLIC_KEY": public_pem},
            {"JWT_ALGORITHMS": "RS256", "JWT_PUBLIC_KEY": public_pem},
        )
    raise ValueError(f"algorithm {algorithm!r}: HS256 or RS256")


@dataclass
class VoiceStack:
    gateway: Process
    call_service: Process
    worker: Process
    internal_token: str

    def stop(self) -> None:
        stop_all([self.worker, self.gateway, self.call_service])


def start(redis_url: str, port: int | None = None, algorithm: str = "HS256", api_keys: dict[str, str] | None = None) -> VoiceStack:
    port = port or free_port()
    token = secrets.token_hex(16)
    signing, verifying = jwt_keys(algorithm)
    call_service = python_app("call-service", HERE / "call_service.py", {
        **signing, "REDIS_URL": redis_url, "API_KEYS": json.dumps(api_keys or DEFAULT_API_KEYS),
        "PUBLIC_WS_URL": f"ws://localhost:{port}", "INTERNAL_AUTH_TOKEN": token, "CORS_ORIGINS": os.environ.get("CORS_ORIGINS", "*"),
    }, "/health")
    ready_key = f"voice-worker-ready:{token}"
    worker = python_app("worker", HERE / "worker.py", {"REDIS_URL": redis_url, "READY_KEY": ready_key}, None)
    node = gateway("gateway", {
        **verifying, "INTERNAL_AUTH_TOKEN": token, "JWT_TENANT_CLAIM": "tenant_id",
        "GATEWAY_PROFILES": json.dumps(profiles_document(redis_url, call_service.url)),
        # the call service enforces the seed's per-tenant limit; the gateway's per-address buckets stay out of its way
        "RATE_LIMIT_RPS": "500", "RATE_LIMIT_BURST": "500",
    }, port)
    started: list[Process] = []
    try:
        started.append(call_service.start())
        started.append(worker.start())
        bus = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 30
        while not bus.delete(ready_key):  # the worker has subscribed to audio:* and barge_in:*
            if time.monotonic() > deadline or worker.popen is None or worker.popen.poll() is not None:
                raise RuntimeError("the voice worker did not subscribe to audio:* and barge_in:*")
            time.sleep(0.05)
        bus.close()
        started.append(node.start())
    except Exception:
        stop_all(started)
        raise
    return VoiceStack(node, call_service, worker, token)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="the gateway's port (default 8000)")
    parser.add_argument("--algorithm", choices=["HS256", "RS256"], default="HS256", help="JWT signing algorithm")
    args = parser.parse_args()
    stack = start(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), args.port, args.algorithm)
    print(f"gateway: {stack.gateway.url}   POST /auth/token {{\"tenant_id\": \"tenant_123\", \"api_key\": \"secret\"}}, "
          f"POST /call/start, then {stack.gateway.ws_url}/ws/{{call_id}}?token=<session_token>")
    print(f"call service: {stack.call_service.url}   (Ctrl-C stops everything)")
    wait_forever([stack.gateway, stack.call_service, stack.worker])


if __name__ == "__main__":
    main()
