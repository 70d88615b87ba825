"""The routing table is data: every row of the gateway README, and replacements from file or env."""

from __future__ import annotations

import json

import pytest

from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.router import DEFAULT_ROUTES, RoutingError, RoutingTable, load_routing_table

URLS = {"lobby": "http://lobby:1", "measurement": "http://measurement:2", "simulation": "http://simulation:3"}

# Every event of the README's three routing tables, with the service it must reach.
README_ROWS = [
    ("lobby.create", "lobby"), ("lobby.join", "lobby"), ("lobby.leave", "lobby"), ("lobby.get", "lobby"),
    ("lobby.start", "lobby"), ("lobby.room_snapshot", "lobby"), ("role.assign", "lobby"),
    ("measurement.create_session", "lobby"), ("measurement.start_speaker", "lobby"),
    ("measurement.session_status", "lobby"), ("measurement.cancel_session", "lobby"), ("measurement.ready", "lobby"),
    ("measurement.speaker_audio_ready", "lobby"), ("measurement.recording_started", "lobby"),
    ("measurement.playback_complete", "lobby"), ("measurement.recording_uploaded", "lobby"),
    ("measurement.error", "lobby"),
    ("measurement.create_job", "measurement"), ("measurement.get_job", "measurement"),
    ("measurement.get_audio_info", "measurement"), ("analysis.run", "measurement"),
    ("simulation.run", "simulation"), ("simulation.health", "simulation"),
]


@pytest.mark.parametrize(("event", "service"), README_ROWS)
def test_default_table_routes_every_readme_event(event: str, service: str) -> None:
    assert RoutingTable(DEFAULT_ROUTES, URLS).resolve(event) == URLS[service]


@pytest.mark.parametrize(("event", "service"), [("lobby.future_thing", "lobby"), ("role.clear", "lobby"), ("analysis.other", "measurement"), ("simulation.x", "simulation")])
def test_prefix_rows_cover_new_events(event: str, service: str) -> None:
    assert RoutingTable(DEFAULT_ROUTES, URLS).resolve(event) == URLS[service]


@pytest.mark.parametrize("event", ["measurement.unknown", "measurement", "lobby", "lobbyx.create", "chat.send", "identify2"])
def test_unrouted_events_resolve_to_none(event: str) -> None:
    assert RoutingTable(DEFAULT_ROUTES, URLS).resolve(event) is None


def test_exact_beats_longer_prefix_beats_shorter_and_fallback_comes_last() -> None:
    table = RoutingTable(
        [
            {"events": ["*"], "upstream": "http://fallback"},
            {"events": ["a.*"], "upstream": "http://short"},
            {"events": ["a.b.*"], "upstream": "http://long"},
            {"events": ["a.b.c"], "upstream": "http://exact/"},
        ],
        URLS,
    )
    assert table.resolve("a.b.c") == "http://exact"
    assert table.resolve("a.b.d") == "http://long"
    assert table.resolve("a.x") == "http://short"
    assert table.resolve("z") == "http://fallback"


@pytest.mark.parametrize(
    ("routes", "fragment"),
    [
        ([{"events": ["x.*"], "upstream": "nowhere"}], "unknown upstream"),
        ([{"events": ["x.*"], "upstream": "lobby"}, {"events": ["x.*"], "upstream": "lobby"}], "twice"),
        ([{"events": ["x*y"], "upstream": "lobby"}], "pattern"),
        ([{"events": [], "upstream": "lobby"}], "events"),
        ([], "routes"),
    ],
)
def test_bad_tables_are_refused_with_a_reason(routes: list, fragment: str) -> None:
    with pytest.raises(RoutingError, match=fragment):
        RoutingTable(routes, URLS)


def test_env_json_replaces_the_default_table() -> None:
    document = {"routes": [{"events": ["chat.*"], "upstream": "http://chat:9000"}]}
    settings = GatewaySettings(gateway_routes=json.dumps(document), **{f"{k}_url": v for k, v in URLS.items()})
    table = load_routing_table(settings)
    assert table.resolve("chat.send") == "http://chat:9000"
    assert table.resolve("lobby.create") is None


def test_yaml_file_replaces_the_default_table(tmp_path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  - events: ['voice.*', 'lobby.create']\n    upstream: simulation\n")
    settings = GatewaySettings(gateway_routes_file=path, **{f"{k}_url": v for k, v in URLS.items()})
    table = load_routing_table(settings)
    assert table.resolve("voice.stream") == URLS["simulation"]
    assert table.resolve("lobby.create") == URLS["simulation"]
    assert table.resolve("lobby.join") is None


def test_env_reads_the_routing_variables(monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_ROUTES", '{"routes": [{"events": ["*"], "upstream": "http://all:1"}]}')
    monkeypatch.setenv("LOBBY_URL", "http://l:5/")
    settings = GatewaySettings()
    assert settings.upstream_urls()["lobby"] == "http://l:5"
    assert load_routing_table(settings).resolve("anything") == "http://all:1"


@pytest.mark.parametrize(("text", "suffix"), [("{not json", "json"), ("routes: [", "yaml"), ('["a"]', "json")])
def test_unreadable_documents_are_refused(tmp_path, text: str, suffix: str) -> None:
    path = tmp_path / f"routes.{suffix}"
    path.write_text(text)
    with pytest.raises(RoutingError):
        load_routing_table(GatewaySettings(gateway_routes_file=path))
