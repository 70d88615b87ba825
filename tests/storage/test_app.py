"""Start-up (migrations on request), health without a database, and the published API surface."""

from __future__ import annotations

import httpx

from sonalyze.storage import migrate
from sonalyze.storage.db import make_engine
from sonalyze.storage.main import create_app
from sonalyze.storage.resources import RESOURCES
from sonalyze.storage.settings import StorageSettings
from tests.support.servers import INTERNAL_TOKEN, ThreadedServer, free_port, service_http


async def test_start_up_migrates_only_when_asked(database_url):
    engine = make_engine(database_url)
    try:
        with ThreadedServer(create_app(StorageSettings(internal_auth_token=INTERNAL_TOKEN, database_url=database_url, run_migrations=False))):
            pass
        assert await migrate.current_revision(engine) is None
        with ThreadedServer(create_app(StorageSettings(internal_auth_token=INTERNAL_TOKEN, database_url=database_url))) as server:
            assert await migrate.current_revision(engine) == "0003"
            response = service_http.post(f"{server.url}/v1/devices", json={"id": "d1"})
            assert response.status_code == 201
    finally:
        await engine.dispose()


def test_without_a_database_health_and_requests_are_503():
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    with ThreadedServer(create_app(StorageSettings(internal_auth_token=INTERNAL_TOKEN, database_url=url, run_migrations=False))) as server:
        health = httpx.get(f"{server.url}/healthz", timeout=30)
        write = service_http.post(f"{server.url}/v1/devices", json={"id": "d1"}, timeout=30)
    assert health.status_code == 503
    assert health.json()["error"]["code"] == "database_unreachable"
    assert write.status_code == 503
    assert write.json()["error"]["code"] == "database_unavailable"


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///x.db")
    monkeypatch.setenv("RUN_MIGRATIONS", "false")
    monkeypatch.setenv("STORAGE_MAX_BODY_MB", "2")
    settings = StorageSettings()
    assert (settings.database_url, settings.run_migrations, settings.max_body_bytes) == ("sqlite+aiosqlite:///x.db", False, 2 * 1024 * 1024)


def test_openapi_documents_every_resource_with_its_own_schemas():
    schema = create_app(StorageSettings(internal_auth_token=INTERNAL_TOKEN, database_url="sqlite+aiosqlite://")).openapi()
    for name in RESOURCES:
        assert {f"/v1/{name}", f"/v1/{name}/{{record_id}}"} <= set(schema["paths"])
        post = schema["paths"][f"/v1/{name}"]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"]["title"].endswith("Create")
    assert "/v1/lobbies/by-code/{code}" in schema["paths"]
