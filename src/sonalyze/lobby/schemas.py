"""What clients send (gateway event data and REST bodies), validated once at the edge."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sonalyze.lobby.codes import CODE_LENGTH, normalize_code
from sonalyze.lobby.lifecycle import Role
from sonalyze.rooms import RoomSnapshot

Id = str


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class CreateLobby(_In):
    name: str | None = Field(None, max_length=120)


class JoinLobby(_In):
    code: str = Field(min_length=CODE_LENGTH, max_length=CODE_LENGTH + 2)

    @model_validator(mode="after")
    def _normalize(self) -> "JoinLobby":
        self.code = normalize_code(self.code)
        if len(self.code) != CODE_LENGTH:
            raise ValueError(f"a join code has {CODE_LENGTH} characters")
        return self


class LobbyRef(_In):
    lobby_id: Id = Field(min_length=1, max_length=64)


class AuthorizeSubscribe(_In):
    """``gateway.authorize_subscribe`` (asked by the gateway when a device subscribes to a channel)."""

    channel: str = Field(min_length=1, max_length=200)


class GetLobby(_In):
    lobby_id: Id | None = Field(None, min_length=1, max_length=64)
    code: str | None = Field(None, min_length=CODE_LENGTH, max_length=CODE_LENGTH + 2)

    @model_validator(mode="after")
    def _one_key(self) -> "GetLobby":
        if (self.lobby_id is None) == (self.code is None):
            raise ValueError("give either lobby_id or code")
        if self.code is not None:
            self.code = normalize_code(self.code)
        return self


class AssignRole(_In):
    lobby_id: Id = Field(min_length=1, max_length=64)
    device_id: str = Field(min_length=1, max_length=128)
    role: Role | None = Field(description="speaker, microphone, or null for none")


class RoleBody(_In):
    """``POST /lobbies/{id}/roles``."""

    device_id: str = Field(min_length=1, max_length=128)
    role: Role | None


class ShareRoom(_In):
    lobby_id: Id = Field(min_length=1, max_length=64)
    room: RoomSnapshot


class ListEvents(_In):
    lobby_id: Id = Field(min_length=1, max_length=64)
    since: int = Field(0, ge=0)
    limit: int = Field(100, ge=1, le=1000)


class SessionRef(_In):
    """``measurement.session_status``: by session or by lobby (its current or last session)."""

    session_id: Id | None = Field(None, min_length=1, max_length=64)
    lobby_id: Id | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_key(self) -> "SessionRef":
        if self.session_id is None and self.lobby_id is None:
            raise ValueError("give session_id or lobby_id")
        return self


class SessionSignal(_In):
    """Every device signal of a session names the session; ``speaker_index`` guards against stale retries."""

    session_id: Id = Field(min_length=1, max_length=64)
    lobby_id: Id | None = Field(None, min_length=1, max_length=64)
    speaker_index: int | None = Field(None, ge=0)
    upload_name: str | None = Field(None, min_length=1, max_length=200)
    reason: str | None = Field(None, max_length=500)
