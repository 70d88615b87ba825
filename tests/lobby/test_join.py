"""Joining: participant names (contract C2) and the per-device limit on failed lookups by join code,
through the lobby's real ``POST /gateway/handle`` (and the gateway for pushes), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from sonalyze.lobby.codes import CODE_ALPHABET
from tests.lobby.clients import Handle, Phone
from tests.lobby.conftest import Stack, full_stack
from tests.support.servers import SERVICE_HEADERS

BAD_NAMES = ["", "   ", "x" * 41, "tab\there", "nul\x00", "bell\x07", "rtl\u202eevil", "line\u2028break", "del\x7f", 42]


async def _events(handle: Handle, lobby_id: str, device_id: str) -> list[str]:
    return [e["type"] for e in (await handle.call("lobby.events", {"lobby_id": lobby_id}, device_id))["events"]]


async def test_names_given_at_create_and_join_are_trimmed_and_shown_to_everyone(handle: Handle):
    lobby = await handle.call("lobby.create", {"name": "Hall", "device_name": "  Anna's phone "}, "host")
    assert lobby["participants"] == [{"device_id": "host", "role": None, "name": "Anna's phone"}]
    joined = await handle.call("lobby.join", {"code": lobby["code"], "device_name": "Bob 📱 Ünïcode"}, "guest")
    nameless = await handle.call("lobby.join", {"code": lobby["code"]}, "quiet")
    exactly_40 = "é" * 40  # characters, not bytes
    long_name = await handle.call("lobby.join", {"code": lobby["code"], "device_name": exactly_40}, "long")
    expected = [
        {"device_id": "host", "role": None, "name": "Anna's phone"},
        {"device_id": "guest", "role": None, "name": "Bob 📱 Ünïcode"},
        {"device_id": "quiet", "role": None, "name": None},
        {"device_id": "long", "role": None, "name": exactly_40},
    ]
    assert joined["participants"] == expected[:2] and nameless["participants"] == expected[:3]
    assert long_name["participants"] == expected
    assert (await handle.call("lobby.get", {"lobby_id": lobby["lobby_id"]}, "quiet"))["participants"] == expected


async def test_joining_again_is_idempotent_and_renames(handle: Handle):
    lobby = await handle.call("lobby.create", {}, "host")
    code, lobby_id = lobby["code"], lobby["lobby_id"]
    await handle.call("lobby.join", {"code": code, "device_name": "Kitchen"}, "mic")
    same = await handle.call("lobby.join", {"code": code, "device_name": " Kitchen "}, "mic")
    kept = await handle.call("lobby.join", {"code": code, "device_name": None}, "mic")
    assert same["participants"][1] == kept["participants"][1] == {"device_id": "mic", "role": None, "name": "Kitchen"}
    assert await _events(handle, lobby_id, "host") == ["created", "participant_joined"]  # nothing changed

    await handle.call("role.assign", {"lobby_id": lobby_id, "device_id": "mic", "role": "microphone"}, "host")
    renamed = await handle.call("lobby.join", {"code": code, "device_name": "Living room"}, "mic")
    assert renamed["participants"] == [
        {"device_id": "host", "role": None, "name": None},
        {"device_id": "mic", "role": "microphone", "name": "Living room"},  # the seat and its role stay
    ]
    log = (await handle.call("lobby.events", {"lobby_id": lobby_id}, "host"))["events"]
    assert [e["type"] for e in log] == ["created", "participant_joined", "role_assigned", "participant_renamed"]
    assert log[-1]["device_id"] == "mic" and log[-1]["data"] == {"name": "Living room"}


async def test_bad_names_are_refused_and_nothing_is_written(handle: Handle):
    lobby = await handle.call("lobby.create", {"device_name": "Host"}, "host")
    for bad in BAD_NAMES:
        for event, data, device in [
            ("lobby.create", {"device_name": bad}, "someone"),
            ("lobby.join", {"code": lobby["code"], "device_name": bad}, "guest"),
            ("lobby.join", {"code": lobby["code"], "device_name": bad}, "host"),  # a rename too
        ]:
            error = await handle.refused(event, {**data}, device)
            assert error["code"] == "bad_request", (bad, error)
            assert error["details"]["errors"][0]["field"] == "device_name", (bad, error)
    after = await handle.call("lobby.get", {"lobby_id": lobby["lobby_id"]}, "host")
    assert after["participants"] == [{"device_id": "host", "role": None, "name": "Host"}]
    assert await _events(handle, lobby["lobby_id"], "host") == ["created"]


async def test_a_rename_is_pushed_to_every_participant(stack: Stack):
    async with contextlib.AsyncExitStack() as exits:
        host, guest = [await exits.enter_async_context(Phone(stack.gateway.ws_url, d)) for d in ("host", "guest")]
        lobby = await host.call("lobby.create", {"device_name": "Host"})
        await guest.call("lobby.join", {"code": lobby["code"], "device_name": "Guest"})
        await guest.call("lobby.join", {"code": lobby["code"], "device_name": "Guest 2"})
        for phone in (host, guest):
            push = await phone.wait_push("lobby.updated", type="participant_renamed")
            assert push["device_id"] == "guest" and push["name"] == "Guest 2"
            assert push["lobby"]["participants"][1] == {"device_id": "guest", "role": None, "name": "Guest 2"}
        await guest.call("lobby.join", {"code": lobby["code"], "device_name": "Guest 2"})  # no change: no push
        await host.call("lobby.get", {"lobby_id": lobby["lobby_id"]})  # one round trip: pushes before it arrived
        await asyncio.sleep(0.3)
        assert host.count("lobby.updated", type="participant_renamed") == 1


# ----------------------------------------------------------------------------------------------- join limit


def _unused_code(taken: str, index: int) -> str:
    """A well-formed code that is not ``taken`` (codes are drawn at random: one collision in 31⁸)."""
    code = "".join(CODE_ALPHABET[(index // len(CODE_ALPHABET) ** k) % len(CODE_ALPHABET)] for k in range(8))
    return code if code != taken else code[::-1]


@pytest.fixture
def limited(database_url: str, tmp_path: Path):
    """Two lobby replicas on one database, 3 failed lookups per device per 3 s window."""
    overrides = {"join_failure_limit": 3, "join_failure_window_s": 3.0}
    with full_stack(database_url, tmp_path / "a", with_gateway=False, **overrides) as a:
        with full_stack(database_url, tmp_path / "b", with_gateway=False, **overrides) as b:
            yield a, b


async def test_failed_joins_are_limited_per_device_across_replicas(limited: tuple[Stack, Stack]):
    a, b = limited
    async with httpx.AsyncClient(base_url=a.lobby.url, timeout=30, headers=SERVICE_HEADERS) as http_a:
        async with httpx.AsyncClient(base_url=b.lobby.url, timeout=30, headers=SERVICE_HEADERS) as http_b:
            on_a, on_b = Handle(http_a), Handle(http_b)
            lobby = await on_a.call("lobby.create", {}, "host")
            code = lobby["code"]
            # Failures on either replica count against the same device.
            assert (await on_a.refused("lobby.join", {"code": _unused_code(code, 1)}, "guesser"))["code"] == "not_found"
            assert (await on_b.refused("lobby.get", {"code": _unused_code(code, 2)}, "guesser"))["code"] == "not_found"
            assert (await on_a.refused("lobby.join", {"code": _unused_code(code, 3)}, "guesser"))["code"] == "not_found"
            started_s = time.time()
            refusals = [
                await on_b.refused("lobby.join", {"code": _unused_code(code, 4)}, "guesser"),
                await on_a.refused("lobby.join", {"code": code}, "guesser"),  # a hit is refused alike: no oracle
                await on_b.refused("lobby.get", {"code": code}, "guesser"),
            ]
            for refusal in refusals:
                assert refusal["code"] == "rate_limited", refusal
                assert 1 <= refusal["details"]["retry_after_s"] <= 3
            # Another device is not affected, and nothing was written for the refused hit.
            joined = await on_b.call("lobby.join", {"code": code}, "friend")
            assert [p["device_id"] for p in joined["participants"]] == ["host", "friend"]
            # Once the window is over the device may try again.
            await asyncio.sleep(max(0.0, refusals[0]["details"]["retry_after_s"] - (time.time() - started_s)) + 0.3)
            joined = await on_a.call("lobby.join", {"code": code}, "guesser")
            assert [p["device_id"] for p in joined["participants"]] == ["host", "friend", "guesser"]


async def test_concurrent_failed_joins_of_one_device_are_all_counted(limited: tuple[Stack, Stack]):
    a, b = limited
    async with httpx.AsyncClient(base_url=a.lobby.url, timeout=30, headers=SERVICE_HEADERS) as http_a:
        async with httpx.AsyncClient(base_url=b.lobby.url, timeout=30, headers=SERVICE_HEADERS) as http_b:
            handles = [Handle(http_a), Handle(http_b)]
            answers = await asyncio.gather(
                *(handles[i % 2].refused("lobby.join", {"code": _unused_code("", i)}, "swarm") for i in range(24))
            )
    codes = sorted(answer["code"] for answer in answers)
    assert codes == ["not_found"] * 3 + ["rate_limited"] * 21, codes


async def test_nul_characters_are_refused_before_the_database(handle: Handle):
    """PostgreSQL cannot store U+0000; each is a bad_request naming its field (it was a 500 on PostgreSQL)."""
    for event, data, field in [
        ("lobby.create", {"name": "room\x00"}, "name"),
        ("lobby.join", {"code": "ABCD\x00EFG"}, "code"),
        ("lobby.get", {"lobby_id": "abc\x00"}, "lobby_id"),
    ]:
        error = await handle.refused(event, data, "someone")
        assert error["code"] == "bad_request" and error["details"]["errors"][0]["field"] == field, (event, error)
