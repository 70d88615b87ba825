"""Join codes: eight characters a person can read aloud and type on a phone without mistakes.

Eight characters of a 31-letter alphabet are 31⁸ ≈ 8.5·10¹¹ codes; why eight and not six is the
arithmetic in docs/security.md ("Join codes"). Lobbies created before codes grew keep their six
characters, so a code of either length is looked up.
"""

from __future__ import annotations

import secrets

# No 0/O, 1/I/L: characters that look alike on a phone screen are left out.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
LEGACY_CODE_LENGTH = 6
"""The length of the codes of lobbies created before migration 0005 (still joinable while open)."""


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalize_code(text: str) -> str:
    """Codes are joined case-insensitively and may be typed with spaces or dashes (``ABCD-EFGH``)."""
    return text.strip().replace(" ", "").replace("-", "").upper()
