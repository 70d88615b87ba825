"""The shared room model: validation with located errors, geometry helpers, material resolution."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from pydantic import ValidationError

from sonalyze.rooms import (
    MATERIAL_BANDS_HZ,
    PolygonRoom,
    Room,
    RoomSnapshot,
    ShoeboxRoom,
    absorption_material_names,
    resolve_material,
    validate_positions,
)


def shoebox(dimensions=(8.0, 6.0, 3.0), **materials) -> dict:
    walls = {name: "brickwork" for name in ("floor", "ceiling", "east", "west", "north", "south")}
    return {"type": "shoebox", "dimensions_m": list(dimensions), "materials": {**walls, **materials}}


def polygon(corners, height=3.0, walls="brickwork") -> dict:
    return {
        "type": "polygon",
        "corners_m": corners,
        "height_m": height,
        "materials": {"walls": walls, "floor": "linoleum_on_concrete", "ceiling": {"absorption": 0.4}},
    }


L_SHAPE = [[0, 0], [6, 0], [6, 3], [3, 3], [3, 5], [0, 5]]


def errors_of(data) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        RoomSnapshot.model_validate(data)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]


def test_shoebox_geometry() -> None:
    room = Room.validate_python(shoebox((8, 6, 3)))
    assert isinstance(room, ShoeboxRoom)
    assert room.volume_m3 == pytest.approx(144.0)
    areas = {s.name: s.area_m2 for s in room.surfaces()}
    assert areas == pytest.approx({"floor": 48, "ceiling": 48, "east": 18, "west": 18, "north": 24, "south": 24})
    assert room.contains((4, 3, 1.5))
    assert not room.contains((8.5, 3, 1.5))
    assert not room.contains((0, 3, 1.5)), "a point on a wall is not inside"
    assert not room.contains((4, 3, -0.1))


def test_polygon_geometry_either_orientation() -> None:
    ccw = Room.validate_python(polygon(L_SHAPE))
    cw = Room.validate_python(polygon(L_SHAPE[::-1]))
    for room in (ccw, cw):
        assert isinstance(room, PolygonRoom)
        assert room.floor_area_m2 == pytest.approx(6 * 3 + 3 * 2)
        assert room.volume_m3 == pytest.approx(24 * 3)
        assert room.contains((1, 4, 1))
        assert not room.contains((5, 4, 1)), "the notch of the L is outside"
        assert not room.contains((1, 4, 3.0)), "z = h is the ceiling"
        assert not room.contains((3, 4, 1)), "on the inner wall"
    assert ccw.is_counter_clockwise and not cw.is_counter_clockwise
    walls = [s for s in ccw.surfaces() if s.name.startswith("walls.")]
    assert [w.area_m2 for w in walls] == pytest.approx([18, 9, 9, 6, 9, 15])
    total = sum(s.area_m2 for s in ccw.surfaces())
    assert total == pytest.approx(2 * 24 + (6 + 3 + 3 + 2 + 3 + 5) * 3)


@pytest.mark.parametrize(
    ("corners", "reason"),
    [
        ([[0, 0], [4, 0], [0, 3], [4, 3]], "self-intersecting"),  # a bow tie
        ([[0, 0], [4, 0], [2, 0], [0, 3]], "self-intersecting"),  # folds back on itself
        ([[0, 0], [1, 1], [2, 2]], "self-intersecting"),  # collinear
        ([[0, 0], [4, 0], [4, 3], [0, 0]], "coincide"),
        ([[0, 0], [4, 0], [4, 4], [2, -1], [0, 4]], "self-intersecting"),
    ],
)
def test_bad_polygons_are_refused_at_corners(corners, reason) -> None:
    [(field, message)] = errors_of({"room": polygon(corners)})
    assert field == "room.corners_m"
    assert reason in message


def test_too_few_corners_and_wall_count() -> None:
    assert errors_of({"room": polygon([[0, 0], [1, 0]])})[0][0] == "room.corners_m"
    [(field, message)] = errors_of({"room": polygon([[0, 0], [4, 0], [4, 3]], walls=["brickwork", "brickwork"])})
    assert field == "room.materials.walls"
    assert "2 wall materials for 3 walls" in message


def test_dimensions_and_height_must_be_positive() -> None:
    fields = [f for f, _ in errors_of({"room": shoebox((0, -1, 3))})]
    assert fields == ["room.dimensions_m.0", "room.dimensions_m.1"]
    assert [f for f, _ in errors_of({"room": polygon(L_SHAPE, height=0)})] == ["room.height_m"]


def test_material_errors_name_the_surface() -> None:
    errors = errors_of(
        {
            "room": shoebox(
                floor="no_such_material",
                ceiling={"absorption": 1.5},
                east={"absorption": [0.1] * 6},
                west={"absorption": 0.2, "scattering": -0.1},
                north=3,
            )
        }
    )
    fields = dict(errors)
    assert "unknown absorption material 'no_such_material'" in fields["room.materials.floor"]
    assert "less than or equal to 1" in fields["room.materials.ceiling.absorption"]
    assert "at least 7 items" in fields["room.materials.east.absorption"]
    assert "greater than or equal to 0" in fields["room.materials.west.scattering"]
    assert "database name" in fields["room.materials.north"]
    assert len(errors) == 5, errors


def test_unknown_room_type() -> None:
    assert errors_of({"room": {"type": "dome"}})[0][0] == "room.type"


def test_materials_resolve_to_seven_bands() -> None:
    assert len(MATERIAL_BANDS_HZ) == 7
    database = json.loads(
        (__import__("pathlib").Path(__import__("pyroomacoustics").__file__).parent / "data" / "materials.json").read_text()
    )
    brick = database["absorption"]["Massive constructions and hard surfaces"]["brickwork"]["coeffs"]
    resolved = resolve_material("brickwork")
    assert resolved.absorption[: len(brick)] == pytest.approx(brick)
    assert len(resolved.absorption) == 7 and resolved.absorption[-1] == brick[-1]
    assert resolved.scattering == (0.0,) * 7
    flat = Room.validate_python(shoebox(floor={"absorption": 0.3, "scattering": 0.2})).materials.floor
    assert resolve_material(flat).absorption == (0.3,) * 7
    assert resolve_material(flat).scattering == (0.2,) * 7
    assert "brickwork" in absorption_material_names()


def test_snapshot_positions_inside_the_room() -> None:
    snapshot = RoomSnapshot.model_validate({"room": polygon(L_SHAPE), "devices": {"a": {"position_m": [1, 4, 1]}}})
    assert snapshot.devices["a"].position_m == (1.0, 4.0, 1.0)
    errors = errors_of({"room": polygon(L_SHAPE), "devices": {"a": {"position_m": [1, 4, 1]}, "b": {"position_m": [5, 4, 1]}}})
    assert errors == [("devices.b", "position [5.0, 4.0, 1.0] is outside the room")]
    # the snapshot round-trips through JSON unchanged
    again = RoomSnapshot.model_validate_json(snapshot.model_dump_json())
    assert again == snapshot


def test_validate_positions_names_each_index() -> None:
    room = Room.validate_python(shoebox((4, 4, 3)))
    validate_positions(room, [(1, 1, 1), (2, 2, 2)], "microphones")
    with pytest.raises(ValidationError) as info:
        validate_positions(room, [(1, 1, 1), (5, 1, 1), (1, 1, 3)], "microphones")
    assert [e["loc"] for e in info.value.errors()] == [("microphones", 1), ("microphones", 2)]


def test_import_is_light() -> None:
    """The lobby imports the room model: it must not pull in pyroomacoustics (about a second)."""
    code = "import sys, sonalyze.rooms as r; r.absorption_material_names(); print('pyroomacoustics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_module_example_runs() -> None:
    import doctest

    import sonalyze.rooms

    outcome = doctest.testmod(sonalyze.rooms)
    assert outcome.attempted >= 3 and outcome.failed == 0


def test_a_polygon_has_at_most_max_corners() -> None:
    from sonalyze.rooms import MAX_CORNERS

    def regular(n: int) -> list[list[float]]:
        return [[10 * math.cos(2 * math.pi * k / n), 10 * math.sin(2 * math.pi * k / n)] for k in range(n)]

    assert Room.validate_python(polygon(regular(MAX_CORNERS))).contains((0, 0, 1))
    [(field, message)] = errors_of({"room": polygon(regular(MAX_CORNERS + 1))})
    assert field == "room.corners_m" and f"at most {MAX_CORNERS} items" in message
