// The gateway connection (README "The wire protocol", contract C1): identifies with the device token
// kept in localStorage (minting one with identify {} on first use), reconnects with back-off, sends
// pings so a dead socket (screen lock, network switch) is noticed, and emits "ready" after every
// (re)identification so the app resumes its lobby and session. It keeps the position ("pos") of the last
// push and identifies with it, so the gateway first replays what it missed (docs/gateway.md, "Positions
// and resuming"); a resync_required push means it could not, and the app's resume on "ready" reloads.
import { backoffMs } from "./session-model.js";

const KEY = "sonalyze.device";

export class GatewayError extends Error {
  constructor(code, message, details) { super(message); this.code = code; this.details = details; }
}

export class Connection extends EventTarget {
  constructor(url, storage = window.localStorage) {
    super();
    this.url = url;
    this.storage = storage;
    const saved = JSON.parse(storage.getItem(KEY) ?? "null") ?? {};
    this.deviceId = saved.device_id ?? null;
    this.token = saved.device_token ?? null;
    this.state = "connecting";
    this.pending = new Map();
    this.nextId = 1;
    this.attempt = 0;
    this.ws = null;
    this.timer = null;
    this.pingTimer = null;
    this.pushHandlers = new Map();
    this.position = null; // {epoch, offset} of the last push seen
    window.addEventListener("online", () => this.reconnectNow());
    document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") this.reconnectNow(); });
  }

  on(event, handler) { this.pushHandlers.set(event, [...(this.pushHandlers.get(event) ?? []), handler]); }

  save() { this.storage.setItem(KEY, JSON.stringify({ device_id: this.deviceId, device_token: this.token })); }

  setState(state, detail = "") {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, detail } }));
  }

  start() { this.open(); }

  reconnectNow() {
    if (this.ws && this.ws.readyState <= 1) { this.ping(); return; }
    clearTimeout(this.timer);
    this.open();
  }

  open() {
    clearTimeout(this.timer);
    this.setState("connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => this.identify().catch((error) => { this.setState("offline", error.message); ws.close(); });
    ws.onmessage = (m) => this.receive(m.data);
    ws.onclose = () => {
      if (this.ws !== ws) return;
      clearInterval(this.pingTimer);
      for (const { reject } of this.pending.values()) reject(new GatewayError("connection_lost", "the connection to the server was lost"));
      this.pending.clear();
      const delay = backoffMs(this.attempt++, Math.random());
      this.setState("offline", `reconnecting in ${(delay / 1000).toFixed(1)} s`);
      this.timer = setTimeout(() => this.open(), delay);
    };
  }

  async identify() {
    let answer;
    if (this.token) {
      const resume = this.position ? { resume: this.position } : {};
      try { answer = await this.send("identify", { device_token: this.token, ...resume }); } catch (error) {
        if (error.code !== "invalid_device_token" && error.code !== "invalid_data") throw error;
        this.token = null; // a token this gateway no longer accepts: become a new device
      }
    }
    if (!answer && !this.token) {
      try {
        answer = await this.send("identify", {});
        if (answer.device_token) { this.token = answer.device_token; }
      } catch (error) {
        // A gateway without device tokens (before contract C1) wants a device id it is given.
        if (error.code !== "invalid_data") throw error;
        this.deviceId ??= `web-${crypto.randomUUID()}`;
        answer = await this.send("identify", { device_id: this.deviceId });
      }
    }
    this.deviceId = answer.device_id;
    this.save();
    this.attempt = 0;
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => this.ping(), 20000);
    this.setState("online");
    this.dispatchEvent(new Event("ready"));
  }

  async ping() {
    if (!this.ws || this.ws.readyState !== 1) return;
    const ws = this.ws;
    const dead = setTimeout(() => ws.close(), 8000);
    try { await this.send("ping", {}); } catch { /* closing handles it */ } finally { clearTimeout(dead); }
  }

  receive(raw) {
    let message;
    try { message = JSON.parse(raw); } catch { return; }
    if (message.type === "event") {
      const pos = message.event === "resync_required" ? message.data?.pos : message.pos;
      const kept = this.position;
      if (message.event !== "resync_required" && pos && kept && pos.epoch === kept.epoch && pos.offset <= kept.offset) return; // seen
      if (pos !== undefined) this.position = pos;
      for (const handler of this.pushHandlers.get(message.event) ?? []) handler(message.data ?? {}, message.event);
      for (const handler of this.pushHandlers.get("*") ?? []) handler(message.data ?? {}, message.event);
      return;
    }
    const waiter = this.pending.get(String(message.request_id));
    if (!waiter) return;
    this.pending.delete(String(message.request_id));
    if (message.type === "error") waiter.reject(new GatewayError(message.error?.code, message.error?.message ?? "error", message.error?.details));
    else waiter.resolve(message.data ?? {});
  }

  send(event, data, timeoutMs = 20000) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== 1) { reject(new GatewayError("offline", "not connected to the server")); return; }
      const id = String(this.nextId++);
      const timer = setTimeout(() => { this.pending.delete(id); reject(new GatewayError("timeout", `no answer to ${event}`)); }, timeoutMs);
      this.pending.set(id, { resolve: (v) => { clearTimeout(timer); resolve(v); }, reject: (e) => { clearTimeout(timer); reject(e); } });
      this.ws.send(JSON.stringify({ event, request_id: id, data }));
    });
  }

  /** A routed request: only once identified (`timeoutMs`: how long to wait for the answer). */
  request(event, data = {}, timeoutMs = 20000) {
    if (this.state !== "online") return Promise.reject(new GatewayError("offline", "not connected to the server yet"));
    return this.send(event, data, timeoutMs);
  }

  /** HTTP through the gateway with the device credential (C1: X-Device-Token). */
  http(path, init = {}) {
    return fetch(path, { ...init, headers: this.credentialed(init.headers) });
  }

  /** A POST to `path` from upload-worker.js, with the device credential: the worker builds the body from
   *  `message` (`{recording}`: the WAV of audio.js's stopped recording) and answers `{status, statusText,
   *  text}`; `transfer`: the buffers handed over with it (transferred: unusable here afterwards). Building a
   *  recording's WAV and handing its megabytes to fetch on the page held its thread 28–92 ms on a loaded
   *  machine (bench/webapp.md): the page only passes the batches on. */
  postFromWorker(path, message, transfer, headers = {}) {
    const uploader = this.startUploader();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const settle = (error, data) => {
        uploader.removeEventListener("message", answered);
        uploader.removeEventListener("error", failed);
        if (error) reject(error); else resolve(data);
      };
      const answered = ({ data }) => { if (data.id === id) settle(data.error && new Error(data.error), data); };
      const failed = (event) => settle(new Error(`the upload worker failed: ${event.message ?? "it could not start"}`));
      uploader.addEventListener("message", answered);
      uploader.addEventListener("error", failed);
      const url = new URL(path, location.href).href; // a worker resolves relative URLs against its own script
      uploader.postMessage({ ...message, id, url, headers: Object.fromEntries(this.credentialed(headers)) }, transfer);
    });
  }

  /** upload-worker.js, started once: a microphone starts it when armed, so that the hand-off at the end of
   *  its first recording does not (a few ms more in that task, 12 ms on a loaded machine: bench/webapp.md). */
  startUploader() {
    if (!this.uploader) {
      const uploader = new Worker(new URL("./upload-worker.js", import.meta.url), { type: "module" });
      uploader.addEventListener("error", () => { // it could not load (or threw): the next upload starts a new one
        if (this.uploader === uploader) { uploader.terminate(); this.uploader = null; }
      });
      this.uploader = uploader;
    }
    return this.uploader;
  }

  credentialed(headers) {
    const out = new Headers(headers ?? {});
    if (this.token) out.set("X-Device-Token", this.token);
    return out;
  }
}
