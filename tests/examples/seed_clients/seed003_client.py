import asyncio
import websockets
import json

async def test_client():
    async with websockets.connect('ws://localhost:8000/ws/stream') as ws:
        while True:
            msg = await ws.recv()
            data = json.loads(msg)
            print(f"SPY: {data['spy']['spot']}, Levels: {len(data['levels'])}")

asyncio.run(test_client())
