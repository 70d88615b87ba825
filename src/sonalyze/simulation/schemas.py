"""The ``POST /simulate`` request (also the ``simulation.run`` event's data)."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from sonalyze.rooms import Point3, RoomModel, position_errors

#: A microphone closer than this to a source would sit in the 1/r singularity of the direct sound.
MIN_SOURCE_DISTANCE_M = 0.05
#: A hard bound on each list, checked before any geometry (SIMULATION_MAX_PAIRS is the real limit).
MAX_POSITIONS = 256


class SimulateRequest(BaseModel):
    """A room, sources and microphones in it, and how to simulate (see docs/simulation.md)."""

    model_config = ConfigDict(extra="forbid")

    room: RoomModel
    sources: Annotated[list[Point3], Field(min_length=1, max_length=MAX_POSITIONS)]
    microphones: Annotated[list[Point3], Field(min_length=1, max_length=MAX_POSITIONS)]
    sample_rate_hz: Annotated[int, Field(ge=8000, le=96000)] = 48000
    max_order: Annotated[int, Field(ge=0)] = 10
    ray_tracing: bool = True
    air_absorption: bool = True
    temperature_c: Annotated[float, Field(ge=-20.0, le=50.0)] = 20.0
    humidity_percent: Annotated[float, Field(ge=10.0, le=100.0)] = 50.0
    include_rir: bool = False
    """Put each RIR in the answer as base64 WAV (capped by SIMULATION_MAX_RIR_BASE64_MB)."""
    seed: Annotated[int | None, Field(ge=0, lt=2**63)] = None
    """Seed of the ray tracer's random generator; chosen and reported when absent."""

    @model_validator(mode="after")
    def _check_positions(self) -> SimulateRequest:
        problems = position_errors(self.room, self.sources, "sources") + position_errors(self.room, self.microphones, "microphones")
        for j, mic in enumerate(self.microphones):
            for i, source in enumerate(self.sources):
                if math.dist(mic, source) < MIN_SOURCE_DISTANCE_M:
                    message = f"within {MIN_SOURCE_DISTANCE_M} m of sources.{i}"
                    problems.append(
                        InitErrorDetails(type=PydanticCustomError("too_close", message), loc=("microphones", j), input=list(mic))
                    )
        if problems:
            raise ValidationError.from_exception_data("SimulateRequest", problems)
        return self

    @property
    def pair_count(self) -> int:
        return len(self.sources) * len(self.microphones)
