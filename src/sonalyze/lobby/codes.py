"""Join codes: six characters a person can read aloud and type on a phone without mistakes."""

from __future__ import annotations

import secrets

# No 0/O, 1/I/L: characters that look alike on a phone screen are left out.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 6


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalize_code(text: str) -> str:
    """Codes are joined case-insensitively and may be typed with spaces or a dash."""
    return text.strip().replace(" ", "").replace("-", "").upper()
