"""The Sonalyze gateway: WebSocket event routing, HTTP proxy, internal broadcast (see docs/gateway.md)."""
