from pathlib import Path

import pytest

from sonalyze.cli import build_parser
from sonalyze.launcher import service_environment


def test_serve_one_service_and_a_list():
    args = build_parser().parse_args(["serve", "gateway", "--port", "9100"])
    assert (args.service, args.port) == ("gateway", 9100)
    args = build_parser().parse_args(["serve", "--services", "gateway,lobby"])
    assert args.services == ["gateway", "lobby"]


def test_unknown_service_is_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--services", "gateway,nope"])
    assert "unknown service(s): nope" in capsys.readouterr().err


def test_launcher_wires_urls_token_and_per_service_overrides(tmp_path: Path):
    ports = {"gateway": 9000, "lobby": 9001, "measurement": 9002, "simulation": 9003, "storage": 9004}
    envs = service_environment(
        ["gateway", "lobby", "storage"],
        data_dir=tmp_path,
        ports=ports,
        token="t0k",
        base_env={"SONALYZE_STORAGE_DATABASE_URL": "postgresql+asyncpg://db/x", "RATE_LIMIT_RPS": "5"},
    )
    assert envs["gateway"]["LOBBY_URL"] == "http://127.0.0.1:9001"
    assert envs["gateway"]["RATE_LIMIT_RPS"] == "5"
    assert {env["INTERNAL_AUTH_TOKEN"] for env in envs.values()} == {"t0k"}
    assert envs["lobby"]["DATABASE_URL"] == f"sqlite+aiosqlite:///{tmp_path / 'lobby.db'}"
    assert envs["storage"]["DATABASE_URL"] == "postgresql+asyncpg://db/x"
