"""The room model shared by the simulation service and the lobby's room snapshot.

A room is a ``shoebox`` or a ``polygon`` (2-D corners extruded to a height); every surface has a
material, which is either a name from pyroomacoustics' materials database or explicit energy
absorption (and optional scattering) coefficients, one value or one per octave band 125 Hz–8 kHz.

    >>> room = Room.validate_python({
    ...     "type": "shoebox",
    ...     "dimensions_m": [8, 6, 3],
    ...     "materials": {"floor": "carpet_cotton", "ceiling": {"absorption": 0.3},
    ...                   "east": "brickwork", "west": "brickwork",
    ...                   "north": {"absorption": [0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.3], "scattering": 0.1},
    ...                   "south": "plasterboard"},
    ... })
    >>> round(room.volume_m3, 1), room.contains((1.0, 1.0, 1.5)), room.contains((9.0, 1.0, 1.5))
    (144.0, True, False)
    >>> snapshot = RoomSnapshot.model_validate({
    ...     "room": {"type": "polygon", "corners_m": [[0, 0], [5, 0], [5, 4], [0, 4]], "height_m": 2.5,
    ...              "materials": {"walls": "brickwork", "floor": "linoleum_on_concrete", "ceiling": {"absorption": 0.5}}},
    ...     "devices": {"phone-1": {"position_m": [1, 1, 1.2]}},
    ... })

Shoebox walls follow pyroomacoustics: ``west`` at x = 0, ``east`` at x = Lx, ``south`` at y = 0,
``north`` at y = Ly, ``floor`` at z = 0, ``ceiling`` at z = Lz. Polygon wall ``i`` runs from corner
``i`` to corner ``i + 1`` (the last closes the polygon); corners may be given in either orientation.

Importing this module stays cheap (pydantic only): the materials database is read from
pyroomacoustics' ``data/materials.json`` on first use, without importing pyroomacoustics (~1 s).
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, WrapValidator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "MATERIAL_BANDS_HZ",
    "MAX_CORNERS",
    "BandCoefficients",
    "Material",
    "MaterialCoefficients",
    "PolygonMaterials",
    "Point3",
    "PolygonRoom",
    "Room",
    "RoomModel",
    "RoomSnapshot",
    "ShoeboxMaterials",
    "ShoeboxRoom",
    "SnapshotDevice",
    "Surface",
    "absorption_material_names",
    "position_errors",
    "resolve_material",
    "validate_positions",
]

MATERIAL_BANDS_HZ: tuple[int, ...] = (125, 250, 500, 1000, 2000, 4000, 8000)
"""Octave-band centres of every coefficient list (pyroomacoustics' database bands)."""

_N_BANDS = len(MATERIAL_BANDS_HZ)

MAX_CORNERS = 100
"""Most corners a polygon room may have (its validation is quadratic in them)."""


# --- the materials database -------------------------------------------------------------------------


@cache
def _materials_database() -> dict[str, dict[str, tuple[float, ...]]]:
    """``{"absorption": {name: coeffs}, "scattering": {name: coeffs}}`` from pyroomacoustics' JSON."""
    spec = importlib.util.find_spec("pyroomacoustics")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pyroomacoustics is not installed: its materials database is unavailable")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "materials.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {
        kind: {name: tuple(float(c) for c in entry["coeffs"]) for group in data[kind].values() for name, entry in group.items()}
        for kind in ("absorption", "scattering")
    }


def absorption_material_names() -> list[str]:
    """Every material name the database knows for absorption, sorted."""
    return sorted(_materials_database()["absorption"])


def _check_name(kind: str, name: str) -> str:
    if name not in _materials_database()[kind]:
        raise PydanticCustomError(
            "unknown_material",
            "unknown {kind} material '{name}' (not in the pyroomacoustics materials database)",
            {"kind": kind, "name": name},
        )
    return name


def _full_bands(coeffs: Sequence[float]) -> tuple[float, ...]:
    """Seven band values; a shorter database entry (43 of 90 stop at 4 kHz) repeats its last value."""
    values = tuple(float(c) for c in coeffs)
    return values + (values[-1],) * (_N_BANDS - len(values))


# --- materials --------------------------------------------------------------------------------------

Coefficient = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
BandList = Annotated[list[Coefficient], Field(min_length=_N_BANDS, max_length=_N_BANDS)]
_COEFFICIENT = TypeAdapter(Coefficient)
_BAND_LIST = TypeAdapter(BandList)


def _coefficients_validator(kind: str) -> WrapValidator:
    """One number, seven numbers or a database name, each checked by its own rule (no union noise)."""

    def validate(value: Any, _handler: Any) -> float | list[float] | str | None:
        if value is None and kind == "scattering":
            return None
        if isinstance(value, str):
            return _check_name(kind, value)
        if isinstance(value, list | tuple):
            return _BAND_LIST.validate_python(list(value))
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _COEFFICIENT.validate_python(value)
        raise PydanticCustomError(
            "coefficients_type", "{kind} is a number in [0, 1], a list of 7 (125 Hz–8 kHz) or a database name", {"kind": kind}
        )

    return WrapValidator(validate)


class MaterialCoefficients(BaseModel):
    """Energy absorption and scattering: one value for all bands or one per band 125 Hz–8 kHz.

    Either may also be a database name (absorption and scattering have separate tables).
    """

    model_config = ConfigDict(extra="forbid")

    absorption: Annotated[float | list[float] | str, _coefficients_validator("absorption")]
    scattering: Annotated[float | list[float] | str | None, _coefficients_validator("scattering")] = None


def _validate_material(value: Any, _handler: Any) -> str | MaterialCoefficients:
    if isinstance(value, str):
        return _check_name("absorption", value)
    if isinstance(value, dict | MaterialCoefficients):
        return MaterialCoefficients.model_validate(value)
    raise PydanticCustomError("material_type", "a material is a database name or an object with absorption (and scattering)")


Material = Annotated[
    str | MaterialCoefficients,
    WrapValidator(_validate_material),
    Field(description="a database name or {absorption, scattering}"),
]
"""A surface material: a database (absorption) name or :class:`MaterialCoefficients`."""


@dataclass(frozen=True, slots=True)
class BandCoefficients:
    """A material resolved to one absorption and one scattering coefficient per band."""

    absorption: tuple[float, ...]
    scattering: tuple[float, ...]


def _resolve(kind: str, value: float | list[float] | str | None) -> tuple[float, ...]:
    if value is None:
        return (0.0,) * _N_BANDS
    if isinstance(value, str):
        return _full_bands(_materials_database()[kind][value])
    if isinstance(value, list):
        return tuple(float(v) for v in value)
    return (float(value),) * _N_BANDS


def resolve_material(material: str | MaterialCoefficients) -> BandCoefficients:
    """The seven-band absorption and scattering of a validated material (no scattering = 0)."""
    if isinstance(material, MaterialCoefficients):
        return BandCoefficients(_resolve("absorption", material.absorption), _resolve("scattering", material.scattering))
    return BandCoefficients(_resolve("absorption", material), _resolve("scattering", None))


# --- rooms ------------------------------------------------------------------------------------------

PositiveLength = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Coordinate = Annotated[float, Field(allow_inf_nan=False)]
Point3 = tuple[Coordinate, Coordinate, Coordinate]


@dataclass(frozen=True, slots=True)
class Surface:
    """One plane surface of a room: its name (a key of ``materials``), area and material."""

    name: str
    area_m2: float
    material: str | MaterialCoefficients


class ShoeboxMaterials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    floor: Material
    ceiling: Material
    east: Material
    west: Material
    north: Material
    south: Material


class ShoeboxRoom(BaseModel):
    """A rectangular room with one corner at the origin: ``dimensions_m`` = [Lx, Ly, Lz]."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["shoebox"] = "shoebox"
    dimensions_m: tuple[PositiveLength, PositiveLength, PositiveLength]
    materials: ShoeboxMaterials

    @property
    def volume_m3(self) -> float:
        lx, ly, lz = self.dimensions_m
        return lx * ly * lz

    def surfaces(self) -> list[Surface]:
        lx, ly, lz = self.dimensions_m
        m = self.materials
        return [
            Surface("floor", lx * ly, m.floor),
            Surface("ceiling", lx * ly, m.ceiling),
            Surface("east", ly * lz, m.east),
            Surface("west", ly * lz, m.west),
            Surface("north", lx * lz, m.north),
            Surface("south", lx * lz, m.south),
        ]

    def contains(self, point: Sequence[float]) -> bool:
        """True when ``point`` is strictly inside the room (not on a wall)."""
        return all(0.0 < p < size for p, size in zip(point, self.dimensions_m, strict=True))


class PolygonMaterials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    walls: Material | list[Material]
    """One material for every wall, or one per wall (wall ``i`` runs from corner ``i`` to ``i + 1``)."""
    floor: Material
    ceiling: Material


def _signed_area_m2(corners: Sequence[tuple[float, float]]) -> float:
    """Shoelace formula: positive for counter-clockwise corners."""
    n = len(corners)
    return 0.5 * sum(corners[i][0] * corners[(i + 1) % n][1] - corners[(i + 1) % n][0] * corners[i][1] for i in range(n))


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _on_segment(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def _segments_intersect(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float], d: tuple[float, float]) -> bool:
    """Closed segments ab and cd share at least one point (collinear overlaps included)."""
    d1, d2, d3, d4 = _cross(c, d, a), _cross(c, d, b), _cross(a, b, c), _cross(a, b, d)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return (
        (d1 == 0 and _on_segment(a, c, d))
        or (d2 == 0 and _on_segment(b, c, d))
        or (d3 == 0 and _on_segment(c, a, b))
        or (d4 == 0 and _on_segment(d, a, b))
    )


def _folds_back(shared: tuple[float, float], p: tuple[float, float], q: tuple[float, float]) -> bool:
    """Neighbouring walls shared→p and shared→q overlap (collinear, pointing the same way)."""
    dot = (p[0] - shared[0]) * (q[0] - shared[0]) + (p[1] - shared[1]) * (q[1] - shared[1])
    return _cross(shared, p, q) == 0 and dot > 0


def _polygon_problem(corners: Sequence[tuple[float, float]]) -> str | None:
    """Why ``corners`` is not a simple polygon, or None when it is."""
    n = len(corners)
    for i in range(n):
        if corners[i] == corners[(i + 1) % n]:
            return f"corners {i} and {(i + 1) % n} coincide"
    for i in range(n):
        a, b = corners[i], corners[(i + 1) % n]
        for j in range(i + 1, n):
            c, d = corners[j], corners[(j + 1) % n]
            if j == i + 1:
                crossing = _folds_back(b, a, d)
            elif i == 0 and j == n - 1:
                crossing = _folds_back(a, b, c)
            else:
                crossing = _segments_intersect(a, b, c, d)
            if crossing:
                return f"the polygon is self-intersecting (walls {i} and {j} cross or overlap)"
    if abs(_signed_area_m2(corners)) <= 1e-9:
        return "the polygon has zero area"
    return None


class PolygonRoom(BaseModel):
    """A 2-D polygon (corners in metres, either orientation) extruded from z = 0 to ``height_m``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["polygon"] = "polygon"
    corners_m: Annotated[list[tuple[Coordinate, Coordinate]], Field(min_length=3, max_length=MAX_CORNERS)]
    height_m: PositiveLength
    materials: PolygonMaterials

    @model_validator(mode="after")
    def _check_geometry(self) -> PolygonRoom:
        problem = _polygon_problem(self.corners_m)
        if problem is not None:
            _raise_at(("corners_m",), "invalid_polygon", problem, self.corners_m)
        walls = self.materials.walls
        if isinstance(walls, list) and len(walls) != len(self.corners_m):
            _raise_at(
                ("materials", "walls"),
                "wall_count_mismatch",
                f"{len(walls)} wall materials for {len(self.corners_m)} walls (one per corner)",
                walls,
            )
        return self

    @property
    def is_counter_clockwise(self) -> bool:
        return _signed_area_m2(self.corners_m) > 0

    @property
    def floor_area_m2(self) -> float:
        return abs(_signed_area_m2(self.corners_m))

    @property
    def volume_m3(self) -> float:
        return self.floor_area_m2 * self.height_m

    def wall_materials(self) -> list[str | MaterialCoefficients]:
        walls = self.materials.walls
        return list(walls) if isinstance(walls, list) else [walls] * len(self.corners_m)

    def surfaces(self) -> list[Surface]:
        n = len(self.corners_m)
        surfaces = [Surface("floor", self.floor_area_m2, self.materials.floor), Surface("ceiling", self.floor_area_m2, self.materials.ceiling)]
        for i, material in enumerate(self.wall_materials()):
            (x0, y0), (x1, y1) = self.corners_m[i], self.corners_m[(i + 1) % n]
            surfaces.append(Surface(f"walls.{i}", math.hypot(x1 - x0, y1 - y0) * self.height_m, material))
        return surfaces

    def contains(self, point: Sequence[float]) -> bool:
        """True when ``point`` is strictly inside: inside the polygon (ray casting), not on a wall, 0 < z < h."""
        x, y, z = point
        if not 0.0 < z < self.height_m:
            return False
        n = len(self.corners_m)
        inside = False
        for i in range(n):
            a, b = self.corners_m[i], self.corners_m[(i + 1) % n]
            if _cross(a, b, (x, y)) == 0 and _on_segment((x, y), a, b):
                return False
            if (a[1] > y) != (b[1] > y) and x < a[0] + (y - a[1]) * (b[0] - a[0]) / (b[1] - a[1]):
                inside = not inside
        return inside


_ROOM_TYPES: dict[str, type[ShoeboxRoom] | type[PolygonRoom]] = {"shoebox": ShoeboxRoom, "polygon": PolygonRoom}


def _validate_room(value: Any, _handler: Any) -> ShoeboxRoom | PolygonRoom:
    """Dispatch on ``type`` so errors point at ``room.<field>`` (no union branch names in the path)."""
    if isinstance(value, ShoeboxRoom | PolygonRoom):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("room_type", "a room is an object with a type: shoebox or polygon")
    kind = value.get("type")
    model = _ROOM_TYPES.get(kind) if isinstance(kind, str) else None  # an object or a list is no type name
    if model is None:
        _raise_at(("type",), "room_type", "type must be 'shoebox' or 'polygon'", value.get("type"))
    return model.model_validate(value)


RoomModel = Annotated[ShoeboxRoom | PolygonRoom, WrapValidator(_validate_room)]
Room: TypeAdapter[ShoeboxRoom | PolygonRoom] = TypeAdapter(RoomModel)
"""Validate a room from JSON-ready data: ``Room.validate_python(data)``; use ``RoomModel`` in models."""


# --- positions --------------------------------------------------------------------------------------


def _raise_at(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> None:
    """Raise a ValidationError at ``loc`` (relative; pydantic prefixes the enclosing field's path)."""
    error = InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
    raise ValidationError.from_exception_data("room", [error])


def position_errors(
    room: ShoeboxRoom | PolygonRoom,
    points: Sequence[Sequence[float]] | Mapping[str, Sequence[float]],
    field_name: str,
) -> list[InitErrorDetails]:
    """One pydantic error at ``field_name.<index or key>`` for each point not strictly inside ``room``."""
    items = points.items() if isinstance(points, Mapping) else enumerate(points)
    return [
        InitErrorDetails(
            type=PydanticCustomError("outside_room", "position {position} is outside the room", {"position": list(point)}),
            loc=(*field_name.split("."), key),
            input=list(point),
        )
        for key, point in items
        if not room.contains(point)
    ]


def validate_positions(
    room: ShoeboxRoom | PolygonRoom,
    points: Sequence[Sequence[float]] | Mapping[str, Sequence[float]],
    field_name: str,
) -> None:
    """Raise a pydantic ValidationError at ``field_name.<index or key>`` for each point outside ``room``.

    Called from a model validator, the error keeps its location under the model's path, so a request
    body gets ``{"field": "microphones.2", "message": "position [9.0, 1.0, 1.0] is outside the room"}``.
    """
    errors = position_errors(room, points, field_name)
    if errors:
        raise ValidationError.from_exception_data("positions", errors)


# --- the lobby's room snapshot ----------------------------------------------------------------------


class SnapshotDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position_m: Point3


class RoomSnapshot(BaseModel):
    """A room and where each device of a lobby stands in it (every position strictly inside)."""

    model_config = ConfigDict(extra="forbid")

    room: RoomModel
    devices: dict[str, SnapshotDevice] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_positions(self) -> RoomSnapshot:
        validate_positions(self.room, {key: d.position_m for key, d in self.devices.items()}, "devices")
        return self
