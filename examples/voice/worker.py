"""The voice example's worker (seed 002): audio from Redis, every server message type back to the call.

Subscribes to ``audio:*`` (raw PCM16 little-endian mono at ``SAMPLE_RATE_HZ``, published by the gateway
from each ``{"type": "audio", "data": <base64>}`` message) and ``barge_in:*``. There is no speech model:
the "transcripts" say what can be measured without one, each chunk's duration and RMS level (dBFS re full
scale 32768: a full-scale square wave is 0 dBFS, a full-scale sine −3.0 dBFS). Published on
``call_events:{call_id}``, which the gateway writes byte for byte to the call's sockets:

- per chunk, ``{"type": "transcript_interim", "text", "timestamp"}``;
- when no audio came for ``UTTERANCE_GAP_S`` (end of utterance), ``transcript_final`` (the utterance's
  duration and level; also appended to ``call:{call_id}:transcript`` for handoff) then ``response`` with
  ``text`` and ``audio`` (base64 PCM16: ``REPLY_S`` of a 440 Hz tone at half scale);
- a chunk that is not whole PCM16 samples: ``{"type": "error", "code": "AUDIO_FORMAT", "message", "timestamp"}``.

``barge_in`` (the caller interrupts): the pending answer of the current utterance is dropped.

Run: ``REDIS_URL=redis://127.0.0.1:6379/0 python examples/voice/worker.py`` (``READY_KEY``: a Redis key set
once it listens).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import dataclass, field

import numpy as np
import orjson
import redis.asyncio as redis

SAMPLE_RATE_HZ = 16_000
AUDIO_PATTERN, BARGE_IN_PATTERN = "audio:*", "barge_in:*"
EVENTS_CHANNEL = "call_events:{call_id}"
TRANSCRIPT_KEY = "call:{call_id}:transcript"
TRANSCRIPT_TTL_S = 3600
UTTERANCE_GAP_S = 0.3
REPLY_S, REPLY_F_HZ, REPLY_AMPLITUDE = 0.25, 440.0, 0.5
SILENCE_DBFS = -120.0


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of samples in [-1, 1) in dBFS (``SILENCE_DBFS`` for silence or no samples)."""
    rms = float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
    return round(20.0 * np.log10(rms), 1) if rms > 0 else SILENCE_DBFS


def pcm16(frame: bytes) -> np.ndarray:
    return np.frombuffer(frame, dtype="<i2").astype(np.float64) / 32768.0


def describe_frame(frame: bytes, fs_hz: int = SAMPLE_RATE_HZ) -> dict[str, float]:
    """Duration and RMS level of one whole-sample PCM16 chunk."""
    samples = pcm16(frame)
    return {"duration_s": round(samples.size / fs_hz, 4), "level_dbfs": level_dbfs(samples)}


def reply_audio() -> str:
    t_s = np.arange(int(SAMPLE_RATE_HZ * REPLY_S)) / SAMPLE_RATE_HZ
    tone = (REPLY_AMPLITUDE * 32767 * np.sin(2 * np.pi * REPLY_F_HZ * t_s)).astype("<i2")
    return base64.b64encode(tone.tobytes()).decode()


@dataclass
class Utterance:
    chunks: list[bytes] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Worker:
    def __init__(self, bus: redis.Redis) -> None:
        self.bus = bus
        self.utterances: dict[str, Utterance] = {}
        self.reply = reply_audio()

    async def send(self, call_id: str, message: dict[str, object]) -> None:
        await self.bus.publish(EVENTS_CHANNEL.format(call_id=call_id), orjson.dumps({**message, "timestamp": time.time()}))

    async def audio(self, call_id: str, frame: bytes) -> None:
        if len(frame) % 2:
            await self.send(call_id, {"type": "error", "code": "AUDIO_FORMAT", "message": f"PCM16 audio needs whole 2-byte samples; got {len(frame)} bytes"})
            return
        described = describe_frame(frame)
        await self.send(call_id, {"type": "transcript_interim", "text": f"[{described['duration_s']:.3f} s of audio at {described['level_dbfs']:.1f} dBFS]"})
        utterance = self.utterances.setdefault(call_id, Utterance())
        utterance.chunks.append(frame)
        if utterance.timer is not None:
            utterance.timer.cancel()
        loop = asyncio.get_running_loop()
        utterance.timer = loop.call_later(UTTERANCE_GAP_S, lambda: loop.create_task(self.finish(call_id)))

    async def finish(self, call_id: str) -> None:
        utterance = self.utterances.pop(call_id, None)
        if utterance is None:
            return
        described = describe_frame(b"".join(utterance.chunks))
        text = f"[utterance of {described['duration_s']:.3f} s at {described['level_dbfs']:.1f} dBFS]"
        key = TRANSCRIPT_KEY.format(call_id=call_id)
        pipe = self.bus.pipeline(transaction=False)
        pipe.rpush(key, text)
        pipe.expire(key, TRANSCRIPT_TTL_S)
        await pipe.execute()
        await self.send(call_id, {"type": "transcript_final", "text": text})
        await self.send(call_id, {"type": "response", "text": f"I heard {described['duration_s']:.3f} s of speech.", "audio": self.reply})

    def barge_in(self, call_id: str) -> None:
        utterance = self.utterances.pop(call_id, None)
        if utterance is not None and utterance.timer is not None:
            utterance.timer.cancel()


async def run(redis_url: str, ready_key: str | None) -> None:
    bus = redis.Redis.from_url(redis_url)
    worker = Worker(bus)
    pubsub = bus.pubsub(ignore_subscribe_messages=True)
    await pubsub.psubscribe(AUDIO_PATTERN, BARGE_IN_PATTERN)
    if ready_key:  # tells whoever started us that we listen (``run.start`` waits for it)
        await bus.set(ready_key, b"1", ex=60)
    async for message in pubsub.listen():
        if message["type"] != "pmessage":
            continue
        kind, call_id = message["channel"].decode().split(":", 1)
        if kind == "audio":
            await worker.audio(call_id, message["data"])
        else:
            worker.barge_in(call_id)


if __name__ == "__main__":
    asyncio.run(run(os.environ["REDIS_URL"], os.environ.get("READY_KEY")))
