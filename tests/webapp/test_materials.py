"""The app's material list (src/sonalyze/webapp/materials.json, a static file: no build step at run time) is
exactly the backend's: the names `sonalyze.rooms` accepts, in its order."""

from __future__ import annotations

import json
from pathlib import Path

from sonalyze.rooms import absorption_material_names

MATERIALS_JSON = Path(__file__).resolve().parents[2] / "src" / "sonalyze" / "webapp" / "materials.json"
REGENERATE = (
    ".venv/bin/python -c \"import json, sonalyze.rooms as r; print(json.dumps({'source': "
    "'sonalyze.rooms.absorption_material_names() (pyroomacoustics materials database)', "
    "'absorption': list(r.absorption_material_names())}, indent=0))\" > src/sonalyze/webapp/materials.json"
)


def test_shipped_materials_are_the_backends() -> None:
    shipped = json.loads(MATERIALS_JSON.read_text(encoding="utf-8"))
    assert shipped["absorption"] == list(absorption_material_names()), f"regenerate it: {REGENERATE}"
