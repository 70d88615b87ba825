"""JSON in one place: orjson for speed, with a Starlette response that uses it."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse

loads = orjson.loads


def dumps(value: Any) -> bytes:
    """Serialize to compact UTF-8 JSON bytes; numpy scalars and arrays are accepted."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


class JSONResponse(_StarletteJSONResponse):
    """A JSON response serialized by orjson (numpy values allowed)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
