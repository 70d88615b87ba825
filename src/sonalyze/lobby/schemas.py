"""What clients send (gateway event data and REST bodies), validated once at the edge."""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from sonalyze.lobby.codes import CODE_ALPHABET, CODE_LENGTH, LEGACY_CODE_LENGTH, normalize_code
from sonalyze.lobby.lifecycle import Role
from sonalyze.rooms import RoomSnapshot

Id = str

DEVICE_NAME_MAX_CHARS = 40
MAX_SEQ = 2**31 - 1
"""The largest event ``seq`` (a 32-bit integer column); a larger ``since`` is refused, not sent to the database."""

# Bidirectional embeddings, overrides and isolates reorder the text shown after them (a name could
# make the next participant's name read backwards); U+2028/9 break lines.
_REORDERING = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


_CODE_CHARACTERS = frozenset(CODE_ALPHABET)


def _join_code(text: str) -> str:
    code = normalize_code(text)
    if len(code) not in (CODE_LENGTH, LEGACY_CODE_LENGTH):
        raise ValueError(f"a join code has {CODE_LENGTH} characters")
    if not set(code) <= _CODE_CHARACTERS:
        raise ValueError(f"a join code uses only {CODE_ALPHABET}")  # no other text reaches the database
    return code


def _printable_name(name: str) -> str:
    if any(unicodedata.category(c) == "Cc" or c in _REORDERING for c in name):
        raise ValueError("a device name may not contain control characters")
    return name


JoinCode = Annotated[str, Field(min_length=LEGACY_CODE_LENGTH, max_length=CODE_LENGTH + 4), AfterValidator(_join_code)]
"""A code as typed: any case, with spaces or dashes; normalized (``ABCD-efgh`` → ``ABCDEFGH``)."""

DeviceName = Annotated[str, Field(min_length=1, max_length=DEVICE_NAME_MAX_CHARS), AfterValidator(_printable_name)]
"""What a device calls itself in a lobby (contract C2): 1–40 characters after trimming, none a control
character (Unicode ``Cc``, line/paragraph separators, bidirectional formatting)."""


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_holds_nul, value))
    return False


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        """PostgreSQL text and JSONB cannot hold U+0000: refused here (naming the field), never a 500."""
        if _holds_nul(value):
            raise ValueError("text may not contain the NUL character (U+0000)")
        return value


class CreateLobby(_In):
    name: str | None = Field(None, max_length=120)
    device_name: DeviceName | None = None


class JoinLobby(_In):
    code: JoinCode
    device_name: DeviceName | None = None
    """Absent or null: a participant joining again keeps its name."""


class LobbyRef(_In):
    lobby_id: Id = Field(min_length=1, max_length=64)


class CreateSession(LobbyRef):
    """``measurement.create_session``: ``sweep_count`` (1–5) sweeps in the session's job, averaged by the
    analysis (contract C3); absent: the lobby's ``SWEEP_COUNT``."""

    sweep_count: int | None = Field(None, ge=1, le=5)


class AuthorizeSubscribe(_In):
    """``gateway.authorize_subscribe`` (asked by the gateway when a device subscribes to a channel)."""

    channel: str = Field(min_length=1, max_length=200)


class GetLobby(_In):
    lobby_id: Id | None = Field(None, min_length=1, max_length=64)
    code: JoinCode | None = None

    @model_validator(mode="after")
    def _one_key(self) -> "GetLobby":
        if (self.lobby_id is None) == (self.code is None):
            raise ValueError("give either lobby_id or code")
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
    since: int = Field(0, ge=0, le=MAX_SEQ)
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
