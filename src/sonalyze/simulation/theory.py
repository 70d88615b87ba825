"""Diffuse-field predictions of the reverberation time, per octave band (pure functions).

Sabine (1900) and Eyring (1930), as given by Kuttruff, *Room Acoustics* (6th ed., §5.1–5.3), with the
air term of ISO 3382-2 / ISO 354:

    T_Sabine = 24 ln(10) V / (c A),        A = Σ S_i α_i + 4 m V
    T_Eyring = 24 ln(10) V / (c (−S ln(1 − ᾱ) + 4 m V)),   ᾱ = Σ S_i α_i / S

24 ln(10) / c = 0.161 s/m at c = 343 m/s. ``m`` is the energy attenuation coefficient of air in 1/m,
``m = α_air / (10 lg e)`` with α_air in dB/m from ISO 9613-1 (0 without air absorption).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sonalyze.rooms import MATERIAL_BANDS_HZ, PolygonRoom, ShoeboxRoom, resolve_material

_REFERENCE_PRESSURE_KPA = 101.325
_REFERENCE_TEMPERATURE_K = 293.15
_TRIPLE_POINT_K = 273.16


def speed_of_sound_m_s(temperature_c: float) -> float:
    """c = 331.4 + 0.6 θ (m/s), the linear approximation pyroomacoustics uses, so theory and simulation agree."""
    return 331.4 + 0.6 * temperature_c


def air_attenuation_db_per_m(
    frequency_hz: float | np.ndarray, temperature_c: float, humidity_percent: float, pressure_kpa: float = _REFERENCE_PRESSURE_KPA
) -> np.ndarray:
    """Pure-tone atmospheric attenuation α (dB/m), ISO 9613-1:1993 equations (3)–(5) and annex B."""
    f = np.asarray(frequency_hz, dtype=float)
    t_k = temperature_c + 273.15
    p_rel = pressure_kpa / _REFERENCE_PRESSURE_KPA
    t_rel = t_k / _REFERENCE_TEMPERATURE_K
    p_sat_rel = 10.0 ** (-6.8346 * (_TRIPLE_POINT_K / t_k) ** 1.261 + 4.6151)
    h = humidity_percent * p_sat_rel / p_rel  # molar concentration of water vapour, %
    fr_o = p_rel * (24.0 + 4.04e4 * h * (0.02 + h) / (0.391 + h))
    fr_n = p_rel * t_rel**-0.5 * (9.0 + 280.0 * h * math.exp(-4.170 * (t_rel ** (-1.0 / 3.0) - 1.0)))
    return (
        8.686
        * f**2
        * (
            1.84e-11 / p_rel * t_rel**0.5
            + t_rel**-2.5
            * (0.01275 * math.exp(-2239.1 / t_k) / (fr_o + f**2 / fr_o) + 0.1068 * math.exp(-3352.0 / t_k) / (fr_n + f**2 / fr_n))
        )
    )


def air_energy_attenuation_per_m(frequency_hz: float | np.ndarray, temperature_c: float, humidity_percent: float) -> np.ndarray:
    """m (1/m) in the 4 m V term: the intensity decays as e^(−m x); m = α / (10 lg e)."""
    return air_attenuation_db_per_m(frequency_hz, temperature_c, humidity_percent) / (10.0 * math.log10(math.e))


def sabine_s(volume_m3: float, equivalent_area_m2: np.ndarray, air_m_per_m: np.ndarray, c_m_s: float) -> np.ndarray:
    """Sabine: T = 24 ln(10) V / (c (A + 4 m V)) per band, A = Σ S_i α_i."""
    return 24.0 * math.log(10.0) * volume_m3 / (c_m_s * (equivalent_area_m2 + 4.0 * air_m_per_m * volume_m3))


def eyring_s(volume_m3: float, surface_m2: float, mean_absorption: np.ndarray, air_m_per_m: np.ndarray, c_m_s: float) -> np.ndarray:
    """Eyring: T = 24 ln(10) V / (c (−S ln(1 − ᾱ) + 4 m V)) per band; ᾱ = 1 gives T = 0."""
    with np.errstate(divide="ignore"):
        wall_term = -surface_m2 * np.log1p(-np.minimum(mean_absorption, 1.0))
    return 24.0 * math.log(10.0) * volume_m3 / (c_m_s * (wall_term + 4.0 * air_m_per_m * volume_m3))


@dataclass(frozen=True, slots=True)
class RoomTheory:
    """The diffuse-field description of a room and its predicted reverberation times per band."""

    bands_hz: tuple[int, ...]
    volume_m3: float
    surface_m2: float
    mean_absorption: np.ndarray
    air_m_per_m: np.ndarray
    sabine_s: np.ndarray
    eyring_s: np.ndarray

    def to_json(self) -> dict[str, object]:
        return {
            "bands_hz": list(self.bands_hz),
            "volume_m3": self.volume_m3,
            "surface_m2": self.surface_m2,
            "mean_absorption": self.mean_absorption.tolist(),
            "air_attenuation_m_per_m": self.air_m_per_m.tolist(),
            "sabine_s": self.sabine_s.tolist(),
            "eyring_s": self.eyring_s.tolist(),
        }


def room_theory(
    room: ShoeboxRoom | PolygonRoom,
    *,
    air_absorption: bool,
    temperature_c: float,
    humidity_percent: float,
    bands_hz: Sequence[int] = MATERIAL_BANDS_HZ,
) -> RoomTheory:
    """Sabine and Eyring reverberation times of ``room`` in each octave band."""
    surfaces = room.surfaces()
    areas_m2 = np.array([s.area_m2 for s in surfaces])
    absorption = np.array([resolve_material(s.material).absorption for s in surfaces])  # (surfaces, bands)
    surface_m2 = float(areas_m2.sum())
    equivalent_area_m2 = areas_m2 @ absorption
    if air_absorption:
        air = air_energy_attenuation_per_m(np.asarray(bands_hz, dtype=float), temperature_c, humidity_percent)
    else:
        air = np.zeros(len(bands_hz))
    c_m_s = speed_of_sound_m_s(temperature_c)
    volume_m3 = room.volume_m3
    mean_absorption = equivalent_area_m2 / surface_m2
    return RoomTheory(
        bands_hz=tuple(bands_hz),
        volume_m3=volume_m3,
        surface_m2=surface_m2,
        mean_absorption=mean_absorption,
        air_m_per_m=air,
        sabine_s=sabine_s(volume_m3, equivalent_area_m2, air, c_m_s),
        eyring_s=eyring_s(volume_m3, surface_m2, mean_absorption, air, c_m_s),
    )
