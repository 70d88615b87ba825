"""The voice example's worker (seed 002): audio frames from the bus, transcripts back through the gateway.

Subscribes to ``audio:*`` on Redis, where the gateway publishes each binary WebSocket frame of a call
(``BINARY_RELAY_CHANNEL=audio:{device_id}``, the device being the token's ``call_id``). Frames are 16-bit
little-endian mono PCM at ``SAMPLE_RATE_HZ``. A real deployment would run speech recognition here; this
worker "transcribes" what it can measure without a model: the duration and level of each frame
(RMS in dBFS, 0 dBFS = a full-scale sine's RMS × √2, i.e. full-scale square wave), and pushes it as a
``transcript`` event to the call through ``POST /internal/broadcast``.

Run: ``REDIS_URL=redis://127.0.0.1:6379/0 GATEWAY_URL=http://127.0.0.1:8000 INTERNAL_AUTH_TOKEN=... python examples/voice/worker.py``
"""

from __future__ import annotations

import asyncio
import os

import httpx
import numpy as np
import redis.asyncio as redis

SAMPLE_RATE_HZ = 16_000
CHANNEL_PATTERN = "audio:*"
SILENCE_DBFS = -120.0


def describe_frame(frame: bytes, fs_hz: int = SAMPLE_RATE_HZ) -> dict[str, float]:
    """Duration and RMS level (dBFS re full scale 32768) of one PCM16 frame."""
    samples = np.frombuffer(frame[: len(frame) - len(frame) % 2], dtype="<i2").astype(np.float64) / 32768.0
    duration_s = samples.size / fs_hz
    rms = float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
    level_dbfs = 20.0 * np.log10(rms) if rms > 0 else SILENCE_DBFS
    return {"duration_s": round(duration_s, 4), "level_dbfs": round(float(level_dbfs), 1)}


async def run(redis_url: str, gateway_url: str, internal_token: str) -> None:
    bus = redis.Redis.from_url(redis_url)
    pubsub = bus.pubsub(ignore_subscribe_messages=True)
    await pubsub.psubscribe(CHANNEL_PATTERN)
    received_s: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=gateway_url, headers={"X-Internal-Token": internal_token}, timeout=5.0) as gateway:
        async for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            call_id = message["channel"].decode().split(":", 1)[1]
            frame = describe_frame(message["data"])
            received_s[call_id] = received_s.get(call_id, 0.0) + frame["duration_s"]
            text = f"[{frame['duration_s']:.2f} s of audio at {frame['level_dbfs']:.1f} dBFS]"
            data = {"call_id": call_id, "text": text, "audio_s": round(received_s[call_id], 4), **frame}
            body = {"event": "transcript", "data": data, "targets": {"device_ids": [call_id]}}
            await gateway.post("/internal/broadcast", json=body)


if __name__ == "__main__":
    asyncio.run(run(os.environ["REDIS_URL"], os.environ["GATEWAY_URL"], os.environ["INTERNAL_AUTH_TOKEN"]))
