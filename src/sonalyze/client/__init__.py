"""Script the Sonalyze backend from Python: ``SonalyzeClient`` speaks the gateway's WebSocket protocol.

    async with SonalyzeClient("http://127.0.0.1:8000", device_id="phone-1") as client:
        lobby = await client.request("lobby.create", {"name": "Living room"})
        update = await client.next_event("lobby.updated")
"""

from sonalyze.client.client import ConnectionLost, GatewayError, PushedEvent, SonalyzeClient

__all__ = ["ConnectionLost", "GatewayError", "PushedEvent", "SonalyzeClient"]
