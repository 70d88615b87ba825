"""Profiles documents: path templates, validation of the data, the proxy table's refusals; an end during an upgrade."""

from __future__ import annotations

import asyncio
import json

import pytest

from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.profiles import PathTemplate, ProfilesDocument, load_profiles, seed_error
from sonalyze.gateway.router import RoutingError

TYPED = {"path": "/ws/{call_id}", "protocol": "typed_json", "redis_url": "redis://127.0.0.1:6379/0"}


def test_a_template_matches_whole_segments_of_safe_characters() -> None:
    template = PathTemplate("/ws/{call_id}")
    assert template.match("/ws/call_ab12") == {"call_id": "call_ab12"}
    for path in ("/ws", "/ws/", "/ws/a/b", "/wss/x", "/ws/a:b", "/ws/a*", "/ws/" + "x" * 129, "/ws/a b"):
        assert template.match(path) is None, path
    assert PathTemplate("/call/{call_id}/end").match("/call/c1/end") == {"call_id": "c1"}
    assert PathTemplate("/call/{call_id}/end").match("/call/c1/start") is None
    for bad in ("ws/{x}", "/ws/{x}/", "/ws/x{y}", "/ws/{x}/{x}", "/ws//x"):
        with pytest.raises(ValueError):
            PathTemplate(bad)


@pytest.mark.parametrize(
    ("websocket", "reason"),
    [
        ({**TYPED, "path": "/ws/stream"}, "served by the gateway itself"),
        ({**TYPED, "path": "/ws/fixed"}, "needs a parameter"),
        ({**TYPED, "path": "/ws/{a}/{b}"}, "say which one is the identity"),
        ({**TYPED, "identity": "other"}, "is not a parameter"),
        ({**TYPED, "events_channel": "events:{tenant}"}, "not a path parameter"),
        ({**TYPED, "messages": {"audio": {"publish": "audio:{x}"}}}, "not a path parameter"),
        ({**TYPED, "messages": {"ping": {"publish": "p:{call_id}"}}}, "ping is answered by the gateway"),
        ({**TYPED, "binary": "audio", "messages": {"audio": {"publish": "a:{call_id}"}}}, "base64_field"),
        ({**TYPED, "protocol": "soap"}, "typed_json"),
        ({**TYPED, "token": "maybe"}, "required"),
        ({**TYPED, "end": {"channel": "call_ended:{call_id}", "field": "call_id"}}, r"end\.channel"),  # one channel for all
        ({**TYPED, "end": {"channel": "call.ended"}}, r"end\.field"),
    ],
)
def test_unusable_websocket_profiles_are_refused_with_the_reason(websocket: dict, reason: str) -> None:
    settings = GatewaySettings(gateway_profiles=json.dumps({"websocket": [websocket]}))
    with pytest.raises(RoutingError, match=reason):
        load_profiles(settings)


@pytest.mark.parametrize(
    ("http", "reason"),
    [
        ([{"prefix": "/call/", "upstream": "lobby"}], "literal path"),
        ([{"prefix": "/ws/x", "upstream": "lobby"}], "the gateway's own"),
        ([{"prefix": "/internal", "upstream": "lobby"}], "the gateway's own"),
        ([{"prefix": "/a", "upstream": "lobby"}, {"prefix": "/a", "upstream": "lobby"}], "appears twice"),
        ([{"prefix": "/a", "upstream": "lobby", "count": [{"method": "POST", "path": "a", "event_type": "x"}]}], "must start with /"),
    ],
)
def test_unusable_proxy_rows_are_refused_with_the_reason(http: list, reason: str) -> None:
    with pytest.raises(RoutingError, match=reason):
        load_profiles(GatewaySettings(gateway_profiles=json.dumps({"http": http})))


def test_without_a_document_there_are_no_profiles_and_a_file_wins_over_the_environment(tmp_path) -> None:
    assert load_profiles(GatewaySettings()) is None
    path = tmp_path / "profiles.yaml"
    path.write_text("http:\n  - prefix: /auth\n    upstream: http://127.0.0.1:9\n")
    document = load_profiles(GatewaySettings(gateway_profiles_file=path, gateway_profiles=json.dumps({"websocket": [TYPED]})))
    assert isinstance(document, ProfilesDocument)
    assert [row.prefix for row in document.http] == ["/auth"] and document.websocket == []
    typed = load_profiles(GatewaySettings(gateway_profiles=json.dumps({"websocket": [TYPED]})))
    assert typed is not None and typed.websocket[0].identity == "call_id"


def test_the_seed_error_shape() -> None:
    error = json.loads(seed_error("INVALID_JSON", "message is not valid JSON"))
    assert set(error) == {"type", "code", "message", "timestamp"}
    assert (error["type"], error["code"]) == ("error", "INVALID_JSON")


def test_seed_001_names_are_accepted_as_aliases(monkeypatch) -> None:
    monkeypatch.setenv("MAX_EVENTS_PER_SECOND", "7")
    monkeypatch.setenv("CACHE_URI", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("MAX_CONNECTIONS_PER_DEVICE", "1")
    monkeypatch.setenv("CONNECTION_TIMEOUT_SEC", "300")
    monkeypatch.setenv("HEARTBEAT_INTERVAL_SEC", "30")
    settings = GatewaySettings()
    assert (settings.rate_limit_rps, settings.registry_url) == (7.0, "redis://127.0.0.1:6379/3")
    assert (settings.max_connections_per_device, settings.connection_timeout_sec, settings.heartbeat_interval_sec) == (1, 300.0, 30.0)
    monkeypatch.setenv("RATE_LIMIT_RPS", "9")  # our own name wins when both are set
    assert GatewaySettings().rate_limit_rps == 9.0


class Upgrading:
    """What a profile sees of a connection whose upgrade it is answering (``ProfileSocket``): a real
    websockets ``ServerProtocol``, before ``_accept``."""

    def __init__(self) -> None:
        from websockets.server import ServerProtocol

        self.open = False
        self.transport = self
        self.ws = ServerProtocol()
        self.session = None
        self.profile = None
        self.accepted = False

    def is_closing(self) -> bool:
        return False

    def _accept(self, request, device_id, tenant_id=None, expires_at_s=None) -> None:  # noqa: ANN001
        self.accepted = True

    def _flush(self) -> None:
        return None

    def close(self, code: int, reason: str, label: str | None = None) -> None:
        raise AssertionError("a socket still being upgraded is refused, not closed")


async def test_an_end_during_the_upgrade_refuses_the_socket_with_404() -> None:
    """The end arrives after the socket registered and before its ``require_key`` read came back: the key
    still exists, yet the upgrade is refused (404), so no socket of an ended call stays open."""
    import uuid

    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry

    from sonalyze.gateway.profiles import SeedMetrics, TypedJsonProfile, WebSocketProfileSpec
    from tests.support import infra

    redis_url = infra.require(infra.REDIS_URL, 6379, "Redis")
    call_id = f"call_{uuid.uuid4().hex}"
    spec = WebSocketProfileSpec.model_validate({
        **TYPED, "redis_url": redis_url, "token": "none", "require_key": "call:{call_id}:active",
        "end": {"channel": f"test.ended.{call_id}", "field": "call_id"},
    })
    profile = TypedJsonProfile(spec, GatewaySettings(), SeedMetrics(CollectorRegistry()))
    bus = aioredis.Redis.from_url(redis_url)
    await bus.set(f"call:{call_id}:active", b"1", ex=60)
    try:
        for ended_meanwhile, status in [(False, None), (True, 404)]:
            socket = Upgrading()
            opening = asyncio.get_running_loop().create_task(profile._open(socket, None, {"call_id": call_id}, call_id, None))
            await asyncio.sleep(0)  # registered, now waiting for Redis
            assert socket in profile.live[call_id]
            if ended_meanwhile:
                profile._ended(json.dumps({"call_id": call_id}).encode())
            await opening
            assert socket.accepted is not ended_meanwhile
            sent = b"".join(socket.ws.data_to_send())
            if status is None:
                assert sent == b""  # nothing written by the profile: the accepted socket's 101 is _accept's
            else:
                assert sent.startswith(f"HTTP/1.1 {status} ".encode()) and b'{"detail":' in sent
        assert call_id not in profile.live  # the end forgot every socket of the call
    finally:
        await bus.delete(f"call:{call_id}:active")
        await bus.aclose()
        await profile.close()
