// The web app's wire.js against a real gateway (tests/webapp/test_wire_resume.py starts it): a dropped
// connection identifies again with its last position and gets every missed push once, in order.
// Run by node --experimental-websocket (Node 20); GATEWAY_URL, WS_URL and INTERNAL_TOKEN come from pytest.
import assert from "node:assert/strict";

globalThis.window = new EventTarget();
globalThis.document = Object.assign(new EventTarget(), { visibilityState: "visible" });
const { Connection } = await import("../../src/sonalyze/webapp/wire.js");

const stored = new Map();
const storage = { getItem: (k) => stored.get(k) ?? null, setItem: (k, v) => stored.set(k, v) };
const conn = new Connection(process.env.WS_URL + "/ws", storage);
const seen = [];
let resyncs = 0;
conn.on("t.n", (data) => seen.push(data.n));
conn.on("resync_required", () => { resyncs += 1; });
const ready = () => new Promise((resolve) => conn.addEventListener("ready", resolve, { once: true }));
const until = async (check, what) => {
  for (let i = 0; i < 1000 && !check(); i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(check(), what);
};
const publish = async (n) => {
  const answer = await fetch(process.env.GATEWAY_URL + "/internal/broadcast", {
    method: "POST",
    headers: { "content-type": "application/json", "x-internal-token": process.env.INTERNAL_TOKEN },
    body: JSON.stringify({ event: "t.n", data: { n }, targets: { device_ids: [conn.deviceId] } }),
  });
  assert.equal(answer.status, 200);
};

let first = ready();
conn.start();
await first;
await publish(0);
await until(() => seen.length === 1, "the first push");
assert.equal(conn.position.offset, 1);
const again = ready();
conn.ws.close(); // the phone loses the connection; wire.js reconnects after its back-off (>= 350 ms)
await until(() => conn.state === "offline", "offline");
for (let n = 1; n <= 20; n++) await publish(n);
await again;
await publish(21);
await until(() => seen.at(-1) === 21, "the push after the reconnect");
assert.deepEqual(seen, Array.from({ length: 22 }, (_, n) => n));
assert.equal(resyncs, 0);
assert.equal(conn.position.offset, 22);
// a position the gateway never gave (as after a gateway restart): resync_required, then live pushes again
conn.position = { epoch: "another-epoch", offset: 5 };
const third = ready();
conn.ws.close();
await third;
await until(() => resyncs === 1, "resync_required");
assert.equal(conn.position.offset, 22);
await publish(22);
await until(() => seen.at(-1) === 22, "a live push after the resync");
assert.equal(seen.length, 23);
console.log("ok");
process.exit(0);
