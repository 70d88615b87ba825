"""The voice example: JWT per call, binary audio frames over Redis to a worker, transcripts pushed back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from examples.voice import run as voice
from examples.voice.worker import SAMPLE_RATE_HZ, describe_frame
from tests.support import infra


@pytest.fixture(scope="module")
def stack() -> Iterator[voice.VoiceStack]:
    started = voice.start(infra.require(infra.REDIS_URL, 6379, "Redis"))
    yield started
    started.stop()


def sine_frame(amplitude: float, duration_s: float = 0.02, f_hz: float = 440.0) -> bytes:
    t_s = np.arange(int(SAMPLE_RATE_HZ * duration_s)) / SAMPLE_RATE_HZ
    return (amplitude * 32767 * np.sin(2 * np.pi * f_hz * t_s)).astype("<i2").tobytes()


def test_a_frame_is_described_by_its_duration_and_level() -> None:
    described = describe_frame(sine_frame(0.5, 0.1))
    assert described["duration_s"] == 0.1
    assert described["level_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.1)  # a sine's RMS is A/√2
    assert describe_frame(bytes(640))["level_dbfs"] == -120.0


async def test_audio_frames_of_a_call_come_back_as_transcripts_to_that_call_only(stack) -> None:
    call_a, call_b = f"call-{id(stack)}-a", f"call-{id(stack)}-b"
    headers_b = {"Authorization": f"Bearer {stack.token(call_b)}"}
    async with (
        connect(stack.gateway.ws_url + f"/ws?token={stack.token(call_a)}") as a,
        connect(stack.gateway.ws_url + "/ws", additional_headers=headers_b) as b,
    ):
        await a.send(json.dumps({"event": "ping", "request_id": "p"}))
        assert json.loads(await asyncio.wait_for(a.recv(), 5))["event"] == "pong"
        for amplitude in (0.5, 0.05):
            await a.send(sine_frame(amplitude))
        transcripts = [json.loads(await asyncio.wait_for(a.recv(), 10)) for _ in range(2)]
        assert [t["event"] for t in transcripts] == ["transcript", "transcript"]
        assert [t["data"]["call_id"] for t in transcripts] == [call_a, call_a]
        levels = [t["data"]["level_dbfs"] for t in transcripts]
        assert levels[0] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.2)
        assert levels[0] - levels[1] == pytest.approx(20.0, abs=0.2)  # a tenth of the amplitude
        assert transcripts[1]["data"]["audio_s"] == pytest.approx(0.04)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.recv(), 0.5)  # call b hears nothing of call a


async def test_a_call_without_a_valid_token_is_refused(stack) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(stack.gateway.ws_url + f"/ws?token={stack.token('call-x', ttl_s=-10)}"):
            pass
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["code"] == "token_expired"
