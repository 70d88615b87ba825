"""Fixtures of the simulation tests: request builders and a real simulation server on a free port."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from sonalyze.simulation.config import SimulationSettings
from sonalyze.simulation.main import create_app
from tests.support.servers import INTERNAL_TOKEN, ThreadedServer

SURFACES = ("floor", "ceiling", "east", "west", "north", "south")


def flat(absorption: float, scattering: float | None = None) -> dict[str, Any]:
    material: dict[str, Any] = {"absorption": absorption}
    if scattering is not None:
        material["scattering"] = scattering
    return material


def shoebox_request(
    dimensions=(8.0, 6.0, 3.0),
    material: Any = None,
    *,
    sources=((2.0, 3.0, 1.5),),
    microphones=((5.0, 2.0, 1.2),),
    **options: Any,
) -> dict[str, Any]:
    """A shoebox simulation request (16 kHz, order 10, no ray tracing unless ``options`` say so)."""
    material = material if material is not None else flat(0.1, 0.1)
    return {
        "room": {"type": "shoebox", "dimensions_m": list(dimensions), "materials": {name: material for name in SURFACES}},
        "sources": [list(p) for p in sources],
        "microphones": [list(p) for p in microphones],
        "sample_rate_hz": 16000,
        "max_order": 10,
        "ray_tracing": False,
        **options,
    }


def kept_jobs(settings: SimulationSettings) -> list[dict[str, Any]]:
    """The simulations the embedded database holds, read with sqlite3 (not through the service's store)."""
    path = settings.data_dir / "simulation.db"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return [json.loads(job) for (job,) in connection.execute("SELECT job FROM simulations")]


def make_settings(tmp_path, **overrides: Any) -> SimulationSettings:
    return SimulationSettings(data_dir=tmp_path / "simulation-data", **{"internal_auth_token": INTERNAL_TOKEN, **overrides})


@pytest.fixture
def settings(tmp_path) -> SimulationSettings:
    return make_settings(tmp_path)


@pytest.fixture
def server(settings) -> Iterator[ThreadedServer]:
    with ThreadedServer(create_app(settings)) as running:
        yield running
