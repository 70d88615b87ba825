"""The naive baseline the gateway is compared with: FastAPI/Starlette's WebSocket under uvicorn
(uvloop + httptools, uvicorn's default WebSocket implementation), broadcasting with a loop of
``await ws.send_text()``. Same endpoints as the gateway for the benchmark: ``WS /ws?device_id=``,
``POST /internal/broadcast``, ``GET /healthz``.

    python bench/gateway_baseline_starlette.py PORT
"""

from __future__ import annotations

import sys

import orjson
import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

app = FastAPI()
by_device: dict[str, list[WebSocket]] = {}


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok", "connections": sum(len(v) for v in by_device.values())}


@app.websocket("/ws")
async def ws_endpoint(ws: WebSocket) -> None:
    device_id = ws.query_params["device_id"]
    await ws.accept()
    by_device.setdefault(device_id, []).append(ws)
    try:
        while True:
            await ws.receive_text()
    except WebSocketDisconnect:
        by_device[device_id].remove(ws)


@app.post("/internal/broadcast")
async def broadcast(request: Request) -> dict:
    body = orjson.loads(await request.body())
    text = orjson.dumps({"type": "event", "event": body["event"], "data": body["data"]}).decode()
    delivered = 0
    for device_id in body["targets"]["device_ids"]:
        for ws in by_device.get(device_id, ()):
            await ws.send_text(text)
            delivered += 1
    return {"delivered": delivered}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools", log_level="warning")
