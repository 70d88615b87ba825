"""SQLite: participants and the event log are stored in the order of their primary key (``WITHOUT ROWID``).

A rowid table with a composite primary key is two b-trees (the rows, and an index on the key), so every
insert changed two pages and each lobby transaction wrote two more pages to the WAL; clustered on the key
it is one. Each table is rebuilt and its rows copied. PostgreSQL: nothing to do.

Revision ID: 0003_sqlite_without_rowid
Revises: 0002_storage_outbox
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_sqlite_without_rowid"
down_revision = "0002_storage_outbox"
branch_labels = None
depends_on = None


def _tables(with_rowid: bool) -> list[sa.Table]:
    """The two tables as 0001 made them, named ``*_rebuilt``, with or without rowid."""
    metadata = sa.MetaData()
    sa.Table("lobby_lobbies", metadata, sa.Column("id", sa.String(32), primary_key=True))
    return [
        sa.Table(
            "lobby_participants_rebuilt",
            metadata,
            sa.Column("lobby_id", sa.String(32), sa.ForeignKey("lobby_lobbies.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("device_id", sa.String(128), primary_key=True),
            sa.Column("role", sa.String(16), nullable=True),
            sa.Column("joined_seq", sa.Integer, nullable=False),
            sa.Column("joined_s", sa.Float, nullable=False),
            sqlite_with_rowid=with_rowid,
        ),
        sa.Table(
            "lobby_events_rebuilt",
            metadata,
            sa.Column("lobby_id", sa.String(32), sa.ForeignKey("lobby_lobbies.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("type", sa.String(48), nullable=False),
            sa.Column("device_id", sa.String(128), nullable=True),
            sa.Column("data", sa.JSON, nullable=False),
            sa.Column("created_s", sa.Float, nullable=False),
            sqlite_with_rowid=with_rowid,
        ),
    ]


def _rebuild(with_rowid: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table in _tables(with_rowid):
        name = table.name.removesuffix("_rebuilt")
        columns = ", ".join(column.name for column in table.columns)
        op.execute(sa.schema.CreateTable(table))
        op.execute(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {name}")
        op.execute(f"DROP TABLE {name}")
        op.execute(f"ALTER TABLE {table.name} RENAME TO {name}")


def upgrade() -> None:
    _rebuild(with_rowid=False)


def downgrade() -> None:
    _rebuild(with_rowid=True)
