"""The seven stored resources: table, schemas and the parent filters of their lists, in one table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, create_model
from sqlalchemy import ColumnElement, Table, UniqueConstraint

from sonalyze.storage import models, schemas
from sonalyze.storage.schemas import PageQuery, RecordId


@dataclass(frozen=True)
class UniqueKey:
    """Columns whose values no two rows share; with ``where``, only among the rows it selects."""

    columns: tuple[str, ...]
    where: ColumnElement[bool] | None = None
    applies_to: Callable[[dict[str, Any]], bool] = lambda row: True


@dataclass(frozen=True)
class Resource:
    """One REST resource: ``/v1/{name}`` over ``table``."""

    name: str
    table: Table
    create: type[BaseModel]
    update: type[BaseModel]
    public: type[BaseModel]
    list_query: type[PageQuery]
    """``limit``/``offset`` and one optional equality filter per parent column."""
    fields: tuple[str, ...]
    """The writable columns (everything but ``id`` and the timestamps)."""

    @property
    def unique_keys(self) -> list[UniqueKey]:
        """What must be unique besides ``id``: a lobby's device; an open lobby's ``code`` (a partial index)."""
        keys = [
            UniqueKey(tuple(str(column.name) for column in constraint.columns))
            for constraint in self.table.constraints
            if isinstance(constraint, UniqueConstraint)
        ]
        for index in self.table.indexes:
            if index.unique:
                where = index.dialect_options["postgresql"]["where"]
                keys.append(UniqueKey(tuple(str(column.name) for column in index.columns), where, index.info["applies_to"]))
        return keys

    @property
    def references(self) -> dict[str, str]:
        """Foreign-key column → the resource it points to."""
        return {str(fk.parent.name): str(fk.column.table.name) for fk in self.table.foreign_keys}


def _resource(table: Table, fields: type[schemas.RecordFields], filters: tuple[str, ...]) -> Resource:
    name = fields.__name__.removesuffix("Fields")
    query = create_model(f"{name}ListQuery", __base__=PageQuery, **{column: (RecordId | None, None) for column in filters})
    return Resource(
        name=table.name,
        table=table,
        create=schemas.create_schema(fields),
        update=schemas.update_schema(fields),
        public=schemas.public_schema(fields),
        list_query=query,
        fields=tuple(fields.model_fields),
    )


RESOURCES: dict[str, Resource] = {
    resource.name: resource
    for resource in (
        _resource(models.devices, schemas.DeviceFields, ()),
        _resource(models.lobbies, schemas.LobbyFields, ("host_device_id",)),
        _resource(models.participants, schemas.ParticipantFields, ("lobby_id", "device_id")),
        _resource(models.measurements, schemas.MeasurementFields, ("lobby_id", "device_id")),
        _resource(models.analysis_outputs, schemas.AnalysisOutputFields, ("measurement_id",)),
        _resource(models.simulation_jobs, schemas.SimulationJobFields, ("lobby_id", "device_id")),
        _resource(models.simulation_results, schemas.SimulationResultFields, ("simulation_job_id",)),
    )
}
