"""JWT authentication of WebSocket connections and proxied requests (RFC 7519; RFC 8725 best practices).

Off unless ``AUTH_REQUIRED=true``. Then every connection and every ``/v1`` request carries a token
(``?token=`` or ``Authorization: Bearer``), and the token decides the device (``JWT_DEVICE_CLAIM``) and the
tenant (``JWT_TENANT_CLAIM``). The verification key is chosen by the algorithm family *we* configured
(HMAC → ``JWT_SECRET``, RSA/EC → ``JWT_PUBLIC_KEY``) and PyJWT is given that one algorithm only, so
``alg: none`` and the HS256-with-the-public-key confusion (RFC 8725 §2.1) are refused. ``exp`` is
required; ``iss`` and ``aud`` are checked when configured, and a connection is closed when its token's ``exp``
passes (``Identity.expires_at_s``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})


class AuthError(Exception):
    """A refused token: ``code`` is ``token_required``, ``token_expired`` or ``invalid_token``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Identity:
    device_id: str
    tenant_id: str | None
    expires_at_s: float
    """When the token stops being valid (``exp`` plus the leeway), seconds since the epoch."""


class TokenVerifier:
    def __init__(
        self,
        algorithms: list[str],
        secret: str,
        public_key: str,
        issuer: str | None,
        audience: str | None,
        device_claim: str,
        tenant_claim: str,
        leeway_s: float = 0.0,
    ) -> None:
        unknown = set(algorithms) - HMAC_ALGORITHMS - PUBLIC_KEY_ALGORITHMS
        if unknown or not algorithms:
            raise ValueError(f"JWT_ALGORITHMS {sorted(unknown) or '[]'}: use HS256/384/512, RS*, PS* or ES* (never none)")
        if set(algorithms) & HMAC_ALGORITHMS and not secret:
            raise ValueError("JWT_SECRET is required for HS* algorithms")
        if set(algorithms) & PUBLIC_KEY_ALGORITHMS and not public_key:
            raise ValueError("JWT_PUBLIC_KEY is required for RS*/PS*/ES* algorithms")
        self._keys = {alg: secret if alg in HMAC_ALGORITHMS else public_key for alg in algorithms}
        self._issuer = issuer
        self._audience = audience
        self._device_claim = device_claim
        self._tenant_claim = tenant_claim
        self._leeway_s = leeway_s

    def verify(self, token: str | None) -> Identity:
        if not token:
            raise AuthError("token_required", "a token is required: ?token= or Authorization: Bearer <jwt>")
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid_token", f"token is malformed: {exc}") from exc
        key = self._keys.get(algorithm) if isinstance(algorithm, str) else None
        if key is None:
            raise AuthError("invalid_token", f"token algorithm {algorithm!r} is not accepted; use one of {sorted(self._keys)}")
        required = ["exp", *(["iss"] if self._issuer else []), *(["aud"] if self._audience else [])]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway_s,
                options={"require": required, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token_expired", "token has expired; get a new one") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid_token", f"token refused: {exc}") from exc
        device_id = claims.get(self._device_claim)
        if not isinstance(device_id, str) or not device_id:
            raise AuthError("invalid_token", f"token has no {self._device_claim!r} claim naming the device")
        tenant_id = claims.get(self._tenant_claim)
        tenant = tenant_id if isinstance(tenant_id, str) and tenant_id else None
        return Identity(device_id, tenant, float(claims["exp"]) + self._leeway_s)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
