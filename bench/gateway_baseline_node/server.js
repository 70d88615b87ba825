// The Node.js peer the gateway is compared with: the `ws` library on Node's http server, broadcasting
// by calling `ws.send()` for each recipient with the payload encoded once. Same endpoints as the gateway
// for the benchmark: WS /ws?device_id=, POST /internal/broadcast, GET /healthz.
//
//   npm install --prefix bench/gateway_baseline_node && node bench/gateway_baseline_node/server.js PORT
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

const byDevice = new Map();

function answer(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url.startsWith("/healthz")) {
    let connections = 0;
    for (const sockets of byDevice.values()) connections += sockets.size;
    return answer(res, 200, { status: "ok", connections });
  }
  if (req.method === "POST" && req.url === "/internal/broadcast") {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      const body = JSON.parse(Buffer.concat(chunks));
      const payload = Buffer.from(JSON.stringify({ type: "event", event: body.event, data: body.data }));
      let delivered = 0;
      for (const deviceId of body.targets.device_ids) {
        const sockets = byDevice.get(deviceId);
        if (!sockets) continue;
        for (const ws of sockets) {
          ws.send(payload, { binary: false });
          delivered += 1;
        }
      }
      answer(res, 200, { delivered });
    });
    return;
  }
  answer(res, 404, { error: "not found" });
});

const wss = new WebSocketServer({ server, path: "/ws" });
wss.on("connection", (ws, req) => {
  const deviceId = new URL(req.url, "http://gateway").searchParams.get("device_id");
  if (!byDevice.has(deviceId)) byDevice.set(deviceId, new Set());
  byDevice.get(deviceId).add(ws);
  ws.on("close", () => byDevice.get(deviceId).delete(ws));
});

server.listen(Number(process.argv[2]), "127.0.0.1");
