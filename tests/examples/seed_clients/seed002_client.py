import asyncio
import aiohttp
import json
import base64

async def make_call():
    async with aiohttp.ClientSession() as session:
        # Get token
        async with session.post(
            "http://localhost:8000/auth/token",
            json={"tenant_id": "tenant_123", "api_key": "secret"}
        ) as resp:
            token_data = await resp.json()
            token = token_data["access_token"]

        # Start call
        headers = {"Authorization": f"Bearer {token}"}
        async with session.post(
            "http://localhost:8000/call/start",
            json={"tenant_id": "tenant_123", "language": "ar"},
            headers=headers
        ) as resp:
            call_data = await resp.json()
            call_id = call_data["call_id"]

        # Connect WebSocket
        async with session.ws_connect(
            f"ws://localhost:8000/ws/{call_id}"
        ) as ws:
            # Send audio
            audio_chunk = base64.b64encode(b"..." * 1000).decode()
            await ws.send_json({
                "type": "audio",
                "data": audio_chunk
            })

            # Receive messages
            async for msg in ws:
                data = json.loads(msg.data)
                print(f"Received: {data['type']}")

asyncio.run(make_call())
