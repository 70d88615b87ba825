"""JSON in one place: orjson for speed, with a Starlette response that uses it."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse

loads = orjson.loads


def dumps(value: Any) -> bytes:
    """Serialize to compact UTF-8 JSON bytes; numpy scalars and arrays are accepted.

    orjson stops at integers beyond 64 bits, which JSON allows and a client may send (and see echoed back
    in an error's ``details``): such a value is written by the standard library instead."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_plain)
        except (TypeError, ValueError):
            raise exc from None
        return text.encode()


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python values (the standard library's fallback of :func:`dumps`)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class JSONResponse(_StarletteJSONResponse):
    """A JSON response serialized by orjson (numpy values allowed)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
