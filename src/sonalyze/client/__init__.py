"""Script the Sonalyze backend from Python: ``SonalyzeClient`` speaks the gateway's WebSocket protocol.

    async with SonalyzeClient("http://127.0.0.1:8000", credentials_path=Path("phone.json")) as client:
        print(client.device_id)  # issued by the gateway on the first connect, kept in phone.json
        lobby = await client.request("lobby.create", {"name": "Living room"})
        update = await client.next_event("lobby.updated")
"""

from sonalyze.client.client import ConnectionLost, GatewayError, PushedEvent, SonalyzeClient

__all__ = ["ConnectionLost", "GatewayError", "PushedEvent", "SonalyzeClient"]
