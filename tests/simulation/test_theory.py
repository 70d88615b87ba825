"""Sabine and Eyring per band against the textbook formulas, air attenuation against ISO 9613-1."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from sonalyze.rooms import Room, resolve_material
from sonalyze.simulation.theory import air_attenuation_db_per_m, room_theory, speed_of_sound_m_s

BANDS_HZ = [125, 250, 500, 1000, 2000, 4000, 8000]


def test_air_attenuation_matches_iso_9613_1_table() -> None:
    """ISO 9613-1:1993 Table 1, 20 °C, 50 % RH, 101.325 kPa, in dB/km."""
    table_db_per_km = [0.44, 1.31, 2.73, 4.66, 9.86, 29.7, 105.0]
    computed = air_attenuation_db_per_m(np.array(BANDS_HZ, dtype=float), 20.0, 50.0) * 1000.0
    assert_allclose(computed, table_db_per_km, rtol=0.01)
    # drier air absorbs more at high frequencies (ISO 9613-1, 10 % RH at 20 °C: 4 kHz ≈ 109 dB/km)
    assert air_attenuation_db_per_m(4000.0, 20.0, 10.0) * 1000 == pytest.approx(109.0, rel=0.03)


def test_sabine_and_eyring_are_the_textbook_formulas_per_band() -> None:
    room = Room.validate_python(
        {
            "type": "polygon",
            "corners_m": [[0, 0], [6, 0], [6, 3], [3, 3], [3, 5], [0, 5]],
            "height_m": 2.7,
            "materials": {
                "walls": ["brickwork", "plasterboard", {"absorption": 0.3}, "brickwork", "carpet_cotton", {"absorption": 0.05}],
                "floor": "linoleum_on_concrete",
                "ceiling": {"absorption": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], "scattering": 0.2},
            },
        }
    )
    theory = room_theory(room, air_absorption=True, temperature_c=20.0, humidity_percent=50.0)

    # independently: areas by hand, coefficients from the database
    volume = (6 * 3 + 3 * 2) * 2.7
    areas = {"floor": 24.0, "ceiling": 24.0}
    for i, length in enumerate([6, 3, 3, 2, 3, 5]):
        areas[f"walls.{i}"] = length * 2.7
    materials = {s.name: s.material for s in room.surfaces()}
    c = 331.4 + 0.6 * 20.0
    for b, band in enumerate(BANDS_HZ):
        a_sabine = sum(area * resolve_material(materials[name]).absorption[b] for name, area in areas.items())
        s_total = sum(areas.values())
        m = air_attenuation_db_per_m(band, 20.0, 50.0) / (10 * math.log10(math.e))
        sabine = 24 * math.log(10) * volume / (c * (a_sabine + 4 * m * volume))
        eyring = 24 * math.log(10) * volume / (c * (-s_total * math.log(1 - a_sabine / s_total) + 4 * m * volume))
        assert theory.sabine_s[b] == pytest.approx(sabine, rel=1e-12)
        assert theory.eyring_s[b] == pytest.approx(eyring, rel=1e-12)
    assert theory.volume_m3 == pytest.approx(volume)
    assert np.all(theory.eyring_s < theory.sabine_s)


def test_the_0161_rule_without_air() -> None:
    """At 343 m/s (20.9 °C) the constant is the familiar 0.161 s/m: T = 0.161 V / A."""
    room = Room.validate_python(
        {"type": "shoebox", "dimensions_m": [8, 6, 3], "materials": {k: {"absorption": 0.2} for k in ("floor", "ceiling", "east", "west", "north", "south")}}
    )
    temperature_c = (343.0 - 331.4) / 0.6
    assert speed_of_sound_m_s(temperature_c) == pytest.approx(343.0)
    theory = room_theory(room, air_absorption=False, temperature_c=temperature_c, humidity_percent=50.0)
    assert_allclose(theory.sabine_s, 0.161 * 144 / (180 * 0.2), rtol=1e-3)
    assert_allclose(theory.eyring_s, 0.161 * 144 / (-180 * math.log(0.8)), rtol=1e-3)
    assert_allclose(theory.air_m_per_m, 0.0)


def test_a_fully_absorbing_room_has_no_reverberation() -> None:
    room = Room.validate_python(
        {"type": "shoebox", "dimensions_m": [4, 4, 3], "materials": {k: {"absorption": 1.0} for k in ("floor", "ceiling", "east", "west", "north", "south")}}
    )
    theory = room_theory(room, air_absorption=False, temperature_c=20.0, humidity_percent=50.0)
    assert_allclose(theory.eyring_s, 0.0)
    assert np.all(theory.sabine_s > 0)
