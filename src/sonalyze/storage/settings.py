"""The storage service's one settings object, read from the environment."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sonalyze.common.internal_auth import InternalAuthSettings


class StorageSettings(InternalAuthSettings, BaseSettings):
    """``DATABASE_URL``, ``RUN_MIGRATIONS``, ``STORAGE_MAX_BODY_MB``, ``STORAGE_DB_POOL_SIZE``,
    ``INTERNAL_AUTH_TOKEN``, ``INTERNAL_AUTH_DISABLED``."""

    model_config = SettingsConfigDict(extra="ignore")

    database_url: str = Field(
        default="sqlite+aiosqlite:///./storage.db",
        description="SQLAlchemy async URL: postgresql+asyncpg://... in production, sqlite+aiosqlite:///file embedded",
    )
    run_migrations: bool = Field(default=True, description="run Alembic `upgrade head` at start-up")
    storage_max_body_mb: float = Field(default=16.0, gt=0, description="largest accepted request body, MiB")
    storage_db_pool_size: int = Field(default=10, ge=1, le=200, description="PostgreSQL connections kept open")

    @property
    def max_body_bytes(self) -> int:
        return int(self.storage_max_body_mb * 1024 * 1024)
