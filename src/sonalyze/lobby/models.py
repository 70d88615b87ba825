"""The lobby's tables (SQLAlchemy Core). Names carry a ``lobby_`` prefix so the service can share a
PostgreSQL database with the others. Times are Unix seconds (``*_s``) so SQLite and PostgreSQL compare
them the same way."""

from __future__ import annotations

from sqlalchemy import JSON, Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, text

metadata = MetaData()

lobbies = Table(
    "lobby_lobbies",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("code", String(8), nullable=False),  # 8 characters since migration 0005 (6 before)
    Column("name", String(120), nullable=True),
    Column("status", String(16), nullable=False),
    Column("host_device_id", String(128), nullable=True),
    Column("room", JSON, nullable=True),
    Column("last_seq", Integer, nullable=False, server_default=text("0")),
    # The lobby's latest measurement session, running or finished (``measurement.session_status``).
    Column("session_id", String(32), nullable=True),
    Column("created_s", Float, nullable=False),
    Column("updated_s", Float, nullable=False),
    # A code is unique among lobbies that are not closed; a closed lobby frees its code.
    Index(
        "ix_lobby_lobbies_open_code",
        "code",
        unique=True,
        sqlite_where=text("status != 'closed'"),
        postgresql_where=text("status != 'closed'"),
    ),
    Index("ix_lobby_lobbies_status_updated", "status", "updated_s"),
)

participants = Table(
    "lobby_participants",
    metadata,
    Column("lobby_id", String(32), ForeignKey("lobby_lobbies.id", ondelete="CASCADE"), primary_key=True),
    Column("device_id", String(128), primary_key=True),
    Column("role", String(16), nullable=True),
    Column("joined_seq", Integer, nullable=False),
    Column("joined_s", Float, nullable=False),
    Column("name", String(40), nullable=True),  # the name the device gave itself (migration 0004)
    sqlite_with_rowid=False,  # clustered on the key: one b-tree to change per insert (migration 0003)
)

join_failures = Table(
    "lobby_join_failures",
    metadata,
    # Failed lookups by join code per device in the current window (migration 0005): shared by every
    # replica on the same database, pruned by the idle sweep once the window is over.
    Column("device_id", String(128), primary_key=True),
    Column("window_start_s", Float, nullable=False),
    Column("failures", Integer, nullable=False),
)

events = Table(
    "lobby_events",
    metadata,
    Column("lobby_id", String(32), ForeignKey("lobby_lobbies.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("type", String(48), nullable=False),
    Column("device_id", String(128), nullable=True),
    Column("data", JSON, nullable=False),
    Column("created_s", Float, nullable=False),
    sqlite_with_rowid=False,
)

sessions = Table(
    "lobby_measurement_sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("lobby_id", String(32), ForeignKey("lobby_lobbies.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("step", String(24), nullable=False),
    Column("state", JSON, nullable=False),
    Column("version", Integer, nullable=False),
    Column("deadline_s", Float, nullable=True, index=True),
    Column("created_s", Float, nullable=False),
    Column("updated_s", Float, nullable=False),
    # The replica awaiting the ``analyzing`` step's analysis, and until when (Unix s) unless it renews
    # (migration 0007): when it dies, another replica claims the session and awaits the analysis.
    Column("runner", String(64), nullable=True),
    Column("lease_until_s", Float, nullable=True),
)
