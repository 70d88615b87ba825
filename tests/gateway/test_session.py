"""The per-connection protocol core, driven with plain data: no sockets, an explicit clock."""

from __future__ import annotations

import orjson
import pytest

from sonalyze.gateway.device_tokens import DeviceTokens
from sonalyze.gateway.frames import text_frame
from sonalyze.gateway.rate_limit import TokenBucket
from sonalyze.gateway.router import DEFAULT_ROUTES, RoutingTable
from sonalyze.gateway.session import Forward, Identified, Reply, Session

URLS = {"lobby": "http://lobby", "measurement": "http://measurement", "simulation": "http://simulation"}


def make_session(
    device_id: str | None = "dev-1", rps: float = 1000.0, burst: int = 1000, max_bytes: int = 1024, insecure_ids: bool = True
) -> Session:
    """A session in development mode by default (identity itself: tests/gateway/test_device_identity.py)."""
    return Session(
        "conn-1", RoutingTable(DEFAULT_ROUTES, URLS), TokenBucket(rps, burst, 0.0), max_bytes, device_id,
        tokens=DeviceTokens("session-test-secret"), insecure_ids=insecure_ids,
    )


def send(session: Session, message: object, now_s: float = 0.0):
    raw = message if isinstance(message, (str, bytes)) else orjson.dumps(message)
    return session.receive(raw, now_s)


def error_of(outcome) -> dict:
    assert isinstance(outcome, Reply), outcome
    assert outcome.envelope["type"] == "error"
    assert outcome.envelope["error"]["message"]
    return outcome.envelope["error"]


def test_a_routed_event_becomes_a_forward_with_its_data_and_request_id() -> None:
    outcome = send(make_session(), {"event": "lobby.create", "request_id": "r-1", "data": {"name": "x"}})
    assert outcome == Forward("http://lobby", "lobby.create", {"name": "x"}, "r-1")


def test_missing_data_is_an_empty_object_and_integer_request_ids_are_echoed() -> None:
    assert send(make_session(), {"event": "simulation.run", "request_id": 7}) == Forward("http://simulation", "simulation.run", {}, 7)


@pytest.mark.parametrize(
    ("message", "code", "event", "request_id"),
    [
        ("{oops", "invalid_json", None, None),
        (b"\xff\xfe", "invalid_json", None, None),
        ("[1, 2]", "invalid_json", None, None),
        ({"request_id": "r"}, "missing_event", None, "r"),
        ({"event": "", "request_id": "r"}, "missing_event", None, "r"),
        ({"event": 5, "request_id": "r"}, "missing_event", None, "r"),
        ({"event": "lobby.get", "request_id": "r", "data": [1]}, "invalid_data", "lobby.get", "r"),
        ({"event": "lobby.get", "request_id": "r", "data": "x"}, "invalid_data", "lobby.get", "r"),
        ({"event": "lobby.get", "request_id": {"a": 1}}, "invalid_request_id", "lobby.get", None),
        ({"event": "lobby.get", "request_id": True}, "invalid_request_id", "lobby.get", None),
        ({"event": "chat.send", "request_id": "r"}, "unknown_event", "chat.send", "r"),
        ({"event": "measurement.nothing", "request_id": "r"}, "unknown_event", "measurement.nothing", "r"),
    ],
)
def test_bad_messages_get_their_own_code_and_echo_what_is_known(message, code, event, request_id) -> None:
    envelope = send(make_session(), message).envelope
    assert envelope["error"]["code"] == code
    assert (envelope["event"], envelope["request_id"]) == (event, request_id)


def test_a_message_over_the_limit_is_refused_before_parsing() -> None:
    error = error_of(send(make_session(max_bytes=100), '{"event": "lobby.get", "data": {"x": "' + "a" * 200 + '"}}'))
    assert error["code"] == "message_too_large"
    assert error["details"] == {"max_bytes": 100}


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    message = '{"event":"lobby.get","data":{"x":"' + "é" * 40 + '"}}'
    assert len(message) < 100 < len(message.encode())
    assert error_of(send(make_session(max_bytes=100), message))["code"] == "message_too_large"


def test_events_before_identification_are_refused_but_ping_and_identify_work() -> None:
    session = make_session(device_id=None)
    refused = send(session, {"event": "lobby.create", "request_id": "a"})
    assert error_of(refused)["code"] == "not_identified"
    assert send(session, {"event": "ping", "request_id": "p"}).envelope == {
        "type": "response", "event": "pong", "request_id": "p", "data": {},
    }
    identified = send(session, {"event": "identify", "request_id": "i", "data": {"device_id": "phone-9"}})
    assert identified == Identified("phone-9", {
        "type": "response", "event": "identify", "request_id": "i", "data": {"device_id": "phone-9", "connection_id": "conn-1"},
    })
    assert session.device_id == "phone-9"
    assert isinstance(send(session, {"event": "lobby.create"}), Forward)


@pytest.mark.parametrize("data", [{"device_id": ""}, {"device_id": "  "}, {"device_id": 3}, {"device_id": "x" * 129}])
def test_identify_needs_a_usable_device_id(data) -> None:
    session = make_session(device_id=None)
    assert error_of(send(session, {"event": "identify", "data": data}))["code"] == "invalid_data"
    assert session.device_id is None


def test_identify_again_as_another_device_is_refused() -> None:
    session = make_session(device_id="a")
    assert isinstance(send(session, {"event": "identify", "data": {"device_id": "a"}}), Identified)
    assert error_of(send(session, {"event": "identify", "data": {"device_id": "b"}}))["code"] == "already_identified"
    assert session.device_id == "a"


def test_rate_limit_refuses_with_a_retry_hint_then_refills() -> None:
    session = make_session(rps=2.0, burst=2)
    message = {"event": "lobby.get", "request_id": "r"}
    assert isinstance(send(session, message, 0.0), Forward)
    assert isinstance(send(session, message, 0.0), Forward)
    limited = send(session, message, 0.0).envelope
    assert limited["error"]["code"] == "rate_limited"
    assert limited["request_id"] == "r" and limited["event"] == "lobby.get"
    assert limited["error"]["details"]["retry_after_s"] == pytest.approx(0.5)
    assert isinstance(send(session, message, 0.5), Forward)


def test_bad_messages_spend_tokens_too() -> None:
    session = make_session(rps=1.0, burst=1)
    assert error_of(send(session, "not json"))["code"] == "invalid_json"
    assert error_of(send(session, {"event": "lobby.get"}))["code"] == "rate_limited"


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_text_frames_follow_rfc6455_length_encoding(size: int) -> None:
    from websockets.frames import Frame, Opcode

    payload = b"x" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
