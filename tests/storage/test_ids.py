"""Record ids: one definition, used by the schemas, the fast path and the writers' `storage_id`."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import TypeAdapter, ValidationError

from sonalyze.storage.ids import is_record_id, storage_id
from sonalyze.storage.schemas import RecordId

VALID = ["a", "L-1", "lobby_1.2:dev-3", "A" * 64, "0123456789abcdef" * 4]
INVALID = ["", "A" * 65, "has space", "slash/no", "é", "semi;colon", "ends\n"]


@pytest.mark.parametrize("text", VALID + INVALID)
def test_the_schema_and_the_pattern_agree(text: str) -> None:
    try:
        TypeAdapter(RecordId).validate_python(text)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == is_record_id(text) == (text in VALID)


def test_text_that_does_not_fit_becomes_h_and_40_hex_digits_of_its_sha256() -> None:
    for text in VALID:
        assert storage_id(text) == text
    for text in INVALID:
        mapped = storage_id(text)
        assert mapped == "h-" + hashlib.sha256(text.encode()).hexdigest()[:40]
        assert is_record_id(mapped)
