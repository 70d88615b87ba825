"""Record ids (pure): the one definition of what the storage service accepts as an ``id``, and the
deterministic mapping the writers use for text that does not fit.

An id is 1–64 of ``A-Z a-z 0-9 _ . : -``. Ids are client-supplied, so a writer derives them from its own
keys (a lobby id, ``{job_id}:{upload}``); what does not fit becomes ``h-`` and 40 hex digits of its SHA-256.
"""

from __future__ import annotations

import hashlib
import re

ID_LENGTH = 64
_CHARACTERS = r"A-Za-z0-9_.:\-"
ID_PATTERN = rf"^[{_CHARACTERS}]+$"
"""The characters, for pydantic's ``pattern`` (with ``min_length=1, max_length=ID_LENGTH``)."""
_ID = re.compile(rf"[{_CHARACTERS}]{{1,{ID_LENGTH}}}")


def is_record_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


def storage_id(text: str) -> str:
    """``text`` when storage accepts it as an id, else ``h-`` + 40 hex digits of its SHA-256 (deterministic)."""
    if is_record_id(text):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:40]
