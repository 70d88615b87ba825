"""JWT on connect and on the proxy: HS256 and RS256, issuer/audience/expiry, ``none`` and algorithm confusion refused."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sonalyze.gateway.auth import AuthError, TokenVerifier
from tests.gateway.conftest import TOKEN, gateway_settings, start_gateway
from tests.support.servers import ThreadedServer

SECRET = "a-test-secret-of-at-least-32-bytes!!"
ISSUER, AUDIENCE = "https://auth.test", "sonalyze-gateway"
PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = PRIVATE_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claims(**overrides) -> dict:
    return {"device_id": "phone-1", "tenant_id": "tenant-a", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600, **overrides}


def hs256(**overrides) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


def rs256(**overrides) -> str:
    return jwt.encode(claims(**overrides), PRIVATE_KEY, algorithm="RS256")


def verifier(algorithms: list[str]) -> TokenVerifier:
    return TokenVerifier(algorithms, SECRET, PUBLIC_PEM, ISSUER, AUDIENCE, "device_id", "tenant_id")


def unsigned(payload: dict) -> str:
    """An ``alg: none`` token, built by hand (PyJWT refuses to make one with a key)."""
    import base64

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


def hs256_signed_with_the_public_key() -> str:
    """The classic confusion: HS256 with the RSA public key (PEM text) as the HMAC secret, signed by hand."""
    import base64
    import hashlib
    import hmac

    def part(value: dict) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

    signing_input = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(claims())
    signature = base64.urlsafe_b64encode(hmac.new(PUBLIC_PEM.encode(), signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


def test_valid_hs256_and_rs256_tokens_name_the_device_and_tenant() -> None:
    both = verifier(["HS256", "RS256"])
    for token in (hs256(), rs256()):
        identity = both.verify(token)
        assert (identity.device_id, identity.tenant_id) == ("phone-1", "tenant-a")
    exp = int(time.time()) + 60
    assert both.verify(hs256(exp=exp)).expires_at_s == exp  # open connections are closed then


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, "token_required"),
        ("not-a-jwt", "invalid_token"),
        (hs256(exp=int(time.time()) - 5), "token_expired"),
        (hs256(iss="https://evil"), "invalid_token"),
        (hs256(aud="someone-else"), "invalid_token"),
        (jwt.encode({k: v for k, v in claims().items() if k != "exp"}, SECRET, algorithm="HS256"), "invalid_token"),
        (hs256(device_id=""), "invalid_token"),
        (jwt.encode(claims(), "another-secret-of-at-least-32-bytes!", algorithm="HS256"), "invalid_token"),
        (unsigned(claims()), "invalid_token"),
        (hs256_signed_with_the_public_key(), "invalid_token"),
    ],
)
def test_refused_tokens_get_a_clear_code(token: str | None, code: str) -> None:
    with pytest.raises(AuthError) as refused:
        verifier(["HS256", "RS256"]).verify(token)
    assert refused.value.code == code and refused.value.message


def test_an_algorithm_not_configured_is_refused_even_with_a_valid_signature() -> None:
    with pytest.raises(AuthError, match="not accepted"):
        verifier(["RS256"]).verify(hs256())
    with pytest.raises(AuthError, match="not accepted"):
        verifier(["RS256"]).verify(hs256_signed_with_the_public_key())


@pytest.mark.parametrize("algorithms", [["none"], [], ["HS256", "none"]])
def test_none_is_never_a_configurable_algorithm(algorithms: list[str]) -> None:
    with pytest.raises(ValueError, match="JWT_ALGORITHMS"):
        verifier(algorithms)


@pytest.fixture(scope="module")
def auth_gateway(upstreams) -> Iterator[ThreadedServer]:
    settings = gateway_settings(
        upstreams, auth_required=True, jwt_algorithms="HS256,RS256", jwt_secret=SECRET, jwt_public_key=PUBLIC_PEM,
        jwt_issuer=ISSUER, jwt_audience=AUDIENCE,
    )
    server = start_gateway(settings)
    yield server
    server.stop()


async def test_a_token_binds_the_connection_to_its_device(auth_gateway) -> None:
    for url, headers in ((f"/ws?token={rs256()}", None), ("/ws", {"Authorization": f"Bearer {hs256()}"})):
        async with connect(auth_gateway.ws_url + url, additional_headers=headers) as ws:
            await ws.send(json.dumps({"event": "identify", "data": {"device_id": "someone-else"}}))
            assert json.loads(await ws.recv())["error"]["code"] == "already_identified"
            async with httpx.AsyncClient() as client:
                body = {"event": "x", "targets": {"device_ids": ["phone-1"]}}
                answer = await client.post(auth_gateway.url + "/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN})
            assert answer.json() == {"delivered": 1, "devices": 1}
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "x"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/ws?device_id=phone-1", 401, "token_required"),
        (f"/ws?token={hs256(exp=int(time.time()) - 5)}", 401, "token_expired"),
        (f"/ws?token={unsigned(claims())}", 401, "invalid_token"),
        (f"/ws?device_id=other&token={hs256()}", 403, "device_mismatch"),
    ],
)
async def test_connections_without_a_good_token_are_refused_with_the_reason(auth_gateway, path: str, status: int, code: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(auth_gateway.ws_url + path):
            pass
    response = refused.value.response
    assert response.status_code == status
    assert json.loads(response.body)["error"]["code"] == code


async def test_the_proxy_needs_a_token_too(auth_gateway) -> None:
    async with httpx.AsyncClient() as client:
        missing = await client.get(auth_gateway.url + "/v1/jobs/123")
        expired = await client.get(auth_gateway.url + "/v1/jobs/123", headers={"Authorization": f"Bearer {hs256(exp=int(time.time()) - 5)}"})
        good = await client.get(auth_gateway.url + "/v1/jobs/123", headers={"Authorization": f"Bearer {hs256()}"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "token_required")
    assert (expired.status_code, expired.json()["error"]["code"]) == (401, "token_expired")
    assert good.status_code != 401  # through to the (stub) upstream


async def test_the_stream_endpoint_honours_auth_required(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams, auth_required=True, jwt_secret=SECRET, stream_channel="levels"))
    try:
        with pytest.raises(InvalidStatus) as refused:
            await connect(server.ws_url + "/ws/stream")
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body)["error"]["code"] == "token_required"
        async with connect(server.ws_url + f"/ws/stream?token={hs256()}") as ws:
            await ws.ping()
    finally:
        server.stop()
