"""Device credentials (contract C1): HMAC-SHA256 signed device tokens (RFC 2104, FIPS 180-4).

A token is ``sdt1.<base64url device id>.<base64url HMAC-SHA256(secret, "sdt1." + base64url device id)>``
(RFC 4648 §5, no padding). It is opaque to clients: the gateway issues one when a device first
identifies (``identify {}`` or ``POST /v1/devices``) and later takes it as the proof that a connection
or request acts for that device. Nothing is stored: any gateway holding the same
``DEVICE_TOKEN_SECRET`` verifies it, so credentials survive restarts and work on every instance. The
MAC is compared in constant time. A device id shown to other participants is not a credential.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from sonalyze.gateway.auth import AuthError

TOKEN_PREFIX = "sdt1."
MAX_TOKEN_CHARS = 512
MINTED_ID_PREFIX = "dev-"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class DeviceTokens:
    """Issues and verifies device tokens with one secret (``DEVICE_TOKEN_SECRET``)."""

    __slots__ = ("_key",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a device token secret must not be empty")
        self._key = secret.encode()

    def issue(self, device_id: str) -> str:
        """The token proving ``device_id``."""
        body = TOKEN_PREFIX + _b64(device_id.encode())
        return body + "." + _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def mint(self) -> tuple[str, str]:
        """A new device: a random id (128 bits) and its token."""
        device_id = MINTED_ID_PREFIX + secrets.token_urlsafe(16)
        return device_id, self.issue(device_id)

    def verify(self, token: str) -> str:
        """The device id ``token`` proves; :class:`AuthError` ``invalid_device_token`` when it proves nothing."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.startswith(TOKEN_PREFIX):
            raise AuthError("invalid_device_token", "device token is malformed; get a new one with identify {} or POST /v1/devices")
        body, _, mac = token.rpartition(".")
        try:
            given = _unb64(mac)
            device_id = _unb64(body[len(TOKEN_PREFIX):]).decode()
        except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise AuthError("invalid_device_token", "device token is malformed") from exc
        expected = hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected) or not device_id:
            raise AuthError("invalid_device_token", "device token was not issued by this deployment")
        return device_id
