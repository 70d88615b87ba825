// What seed 002's JavaScript client (seed002_client.mjs) takes from the page around it, for Node.js 20+.
// Prepended to the seed's code by tests/examples/seeds.py; the seed's own lines stay as printed.
//
// - audioBuffer: the audio to send, an ArrayBuffer; here the Python client's b"..." * 1000 (3,000 bytes 0x2E).
// - WebSocket: the seed's code calls ws.send() right after `new WebSocket(...)`, while the socket is still
//   CONNECTING, which throws InvalidStateError in browsers and in Node (WHATWG WebSockets, send() step 1).
//   Here a send made while connecting waits for the open; every other call is the runtime's own WebSocket.
// - how the socket ended is printed last ("closed: CODE REASON"), for the test to check.
globalThis.audioBuffer = new Uint8Array(3000).fill(0x2e).buffer;

const RuntimeWebSocket = globalThis.WebSocket;
globalThis.WebSocket = class extends RuntimeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener('close', (event) => console.log(`closed: ${event.code} ${event.reason}`));
  }

  send(data) {
    if (this.readyState === RuntimeWebSocket.CONNECTING) {
      this.addEventListener('open', () => super.send(data), {once: true});
    } else {
      super.send(data);
    }
  }
};

