"""Every refusal of ``POST /simulate``: 422 naming the field and the reason, nothing simulated or kept."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from sonalyze.simulation.main import create_app
from tests.simulation.conftest import flat, kept_jobs, make_settings, shoebox_request
from tests.support.servers import INTERNAL_TOKEN, ThreadedServer, service_http


def changed(path: str, value: Any, body: dict | None = None) -> dict:
    """``body`` with the value at a dotted path replaced."""
    body = copy.deepcopy(body or shoebox_request())
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    target[int(last) if last.isdigit() else last] = value
    return body


SELF_INTERSECTING = {
    "type": "polygon",
    "corners_m": [[0, 0], [4, 0], [0, 3], [4, 3]],
    "height_m": 3,
    "materials": {"walls": "brickwork", "floor": "brickwork", "ceiling": "brickwork"},
}

CASES = [
    # (request, code, field, words in the message)
    (changed("microphones", [[5, 2, 1.2], [1, 1, 1], [9, 1, 1]]), "validation_error", "microphones.2", "outside the room"),
    (changed("sources", [[2, 3, 3.5]]), "validation_error", "sources.0", "outside the room"),
    (changed("microphones", [[2, 3, 1.51]]), "validation_error", "microphones.0", "within 0.05 m of sources.0"),
    (changed("room.dimensions_m", [8, 0, 3]), "validation_error", "room.dimensions_m.1", "greater than 0"),
    (changed("room.dimensions_m", [-8, 6, 3]), "validation_error", "room.dimensions_m.0", "greater than 0"),
    (changed("room", SELF_INTERSECTING), "validation_error", "room.corners_m", "self-intersecting"),
    (changed("room.materials.east", "unobtainium"), "validation_error", "room.materials.east", "unknown absorption material"),
    (changed("room.materials.floor", flat(1.2)), "validation_error", "room.materials.floor.absorption", "less than or equal to 1"),
    (changed("room.materials.floor", flat(0.2, -0.1)), "validation_error", "room.materials.floor.scattering", "greater than or equal to 0"),
    (changed("room.materials.floor", {"absorption": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.01]}), "validation_error", "room.materials.floor.absorption.6", "less than or equal to 1"),
    (changed("max_order", 61), "limit_exceeded", "max_order", "above the limit 60"),
    (
        changed("room", {**SELF_INTERSECTING, "corners_m": [[0, 0], [8, 0], [8, 6], [0, 6]]}, shoebox_request(max_order=11)),
        "limit_exceeded",
        "max_order",
        "above the limit 10 for a polygon room",
    ),
    (shoebox_request(dimensions=(40, 30, 20), sources=[(2, 3, 1.5)]), "limit_exceeded", "room", "volume 24000.0 m³"),
    (
        shoebox_request(sources=[(1, 1, 1), (2, 2, 2)], microphones=[(3, 3, 1), (4, 4, 1), (5, 5, 1), (6, 1, 1), (7, 1, 1)] * 4),
        "limit_exceeded",
        "microphones",
        "40 pairs, above the limit 32",
    ),
    (shoebox_request(material=flat(0.01), ray_tracing=True), "limit_exceeded", "room", "the RIR would last about"),
    (shoebox_request(max_order=60, dimensions=(30, 20, 10)), "limit_exceeded", "max_order", "the RIR would last about"),
    (changed("sample_rate_hz", 4000), "validation_error", "sample_rate_hz", "greater than or equal to 8000"),
    (changed("unknown_option", True), "validation_error", "unknown_option", "Extra inputs are not permitted"),
]


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("refusals"))
    with ThreadedServer(create_app(settings)) as server:
        yield server, settings


@pytest.mark.parametrize(("body", "code", "field", "words"), CASES, ids=[f"{c[2]}:{c[3][:24]}" for c in CASES])
def test_bad_input_is_refused_with_the_field(refusing_server, body, code, field, words) -> None:
    server, settings = refusing_server
    response = service_http.post(server.url + "/simulate", json=body, timeout=30)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    fields = {e["field"]: e["message"] for e in error["details"]["errors"]}
    assert field in fields, fields
    assert words in fields[field]
    assert words in error["message"]
    # nothing was simulated or kept
    assert kept_jobs(settings) == []


def test_the_event_refuses_like_the_http_endpoint(refusing_server) -> None:
    server, _ = refusing_server
    body = CASES[0][0]
    over_http = service_http.post(server.url + "/simulate", json=body).json()
    over_event = service_http.post(server.url + "/gateway/handle", json={"event": "simulation.run", "data": body})
    assert over_event.status_code == 200
    assert over_event.json() == over_http


def test_limits_come_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SIMULATION_MAX_ORDER", "5")
    monkeypatch.setenv("SIMULATION_MAX_PAIRS", "1")
    monkeypatch.setenv("SIMULATION_DATA_DIR", str(tmp_path / "env-data"))
    monkeypatch.setenv("INTERNAL_AUTH_TOKEN", INTERNAL_TOKEN)
    with ThreadedServer(create_app()) as server:
        body = shoebox_request(max_order=6, microphones=[(5, 2, 1.2), (1, 1, 1)])
        error = service_http.post(server.url + "/simulate", json=body).json()["error"]
    assert error["code"] == "limit_exceeded"
    assert {e["field"] for e in error["details"]["errors"]} == {"max_order", "microphones"}
    assert (tmp_path / "env-data" / "simulation.db").is_file()
