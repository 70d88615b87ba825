"""The gateway's OpenAPI document is valid OpenAPI 3 (openapi-spec-validator) and names its own routes."""

from __future__ import annotations

from openapi_spec_validator import validate

from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.main import create_app


def test_the_gateway_openapi_document_is_valid() -> None:
    spec = create_app(GatewaySettings(internal_auth_token="t")).app.openapi()
    validate(spec)  # raises on an invalid document (the catch-all /v1/{rest:path} made it invalid)
    assert "/v1/devices" in spec["paths"] and "post" in spec["paths"]["/v1/devices"]
    assert not [path for path in spec["paths"] if "{rest" in path]
