// The Sonalyze web app: lobby, room, arming, the session's choreography and the results, on one page.
import qrcode from "./vendor/qrcode.mjs";
import { AudioEngine, base64UrlJson } from "./audio.js";
import { linePlot } from "./plots.js";
import { METRICS, bandLabel, formatCell, pairsOf, reportTable, spread, toCsv } from "./results.js";
import * as roomModel from "./room-model.js";
import { FINAL_STEPS, INSTRUCTION_STEP, duties, nameOf, sessionView, uploadName, uploadPath } from "./session-model.js";
import { Connection } from "./wire.js";

const $ = (id) => document.getElementById(id);
const LOBBY_KEY = "sonalyze.lobby", NAME_KEY = "sonalyze.name";
const COUNTDOWN_S = 3;
// sweeps per measurement: with 2 the phone's clock is measured from their spacing (docs/measurement.md); ?sweep_count=N (1–5) overrides
const SWEEP_COUNT = Number(new URLSearchParams(location.search).get("sweep_count") ?? 2);
const PREDICTION_TIMEOUT_MS = 120000; // a simulation with ray tracing takes seconds to tens of seconds
const SIMULATIONS_KEPT = 16; // simulation pushes whose answer has not been read yet

const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const conn = new Connection(wsUrl);
const audio = new AudioEngine();
const state = {
  lobby: null,
  session: null,
  sessions: new Map(), // session_id → latest known session (with results)
  local: freshTurn(null),
  materials: [],
  form: null,
  positions: {},
  roomDirty: false,
  predictions: new Map(),
  shownSession: null,
  tab: "lobby",
};

function freshTurn(key) { return { turnKey: key, ready: false, sweepLoaded: false, recording: false, playing: false, played: false, uploaded: false }; }
const me = () => conn.deviceId;
const isHost = () => state.lobby?.host_device_id === me();
const myRole = () => state.lobby?.participants.find((p) => p.device_id === me())?.role ?? null;
const label = (id) => (id === me() ? `${nameOf(state.lobby, id)} (you)` : nameOf(state.lobby, id));
/** Armed for what this phone does: audio running, and the microphone open unless it only plays. */
const armedForRole = () => audio.armed && (myRole() === "speaker" || audio.node !== null);

function showError(id, message) {
  const node = $(id);
  node.textContent = message ?? "";
  node.hidden = !message;
}
const describe = (error) => (error?.code && error.code !== "undefined" ? `${error.message} (${error.code})` : error?.message ?? String(error));

// --- connection ---------------------------------------------------------------------------------------

conn.addEventListener("state", (e) => {
  const { state: s, detail } = e.detail;
  const text = { connecting: "Connecting…", online: "Connected", offline: `Offline — ${detail}` }[s] ?? s;
  $("conn").textContent = text;
  $("conn").dataset.state = s;
});
conn.addEventListener("ready", () => resume().catch((error) => showError("lobby-error", describe(error))));
conn.addEventListener("ready", () => { for (const id of simulations.keys()) checkSimulation(id); });

/** After every (re)connection: the deep link, else the lobby this phone was in, and its session. */
async function resume() {
  const deep = location.pathname.match(/^\/join\/([A-Za-z0-9-]+)$/);
  const saved = JSON.parse(localStorage.getItem(LOBBY_KEY) ?? "null");
  if (deep && (!state.lobby || state.lobby.code !== deep[1].toUpperCase())) {
    $("join-code").value = deep[1].toUpperCase();
    await join(deep[1]);
  } else if (state.lobby || saved) {
    const lobbyId = state.lobby?.lobby_id ?? saved.lobby_id;
    try {
      setLobby(await conn.request("lobby.get", { lobby_id: lobbyId }));
      if (state.lobby.code) await conn.request("lobby.join", withName({ code: state.lobby.code })).then(setLobby).catch(() => {}); // back into the lobby's channel
    } catch (error) {
      if (["not_found", "forbidden"].includes(error.code)) { leaveLocally(); return; }
      throw error;
    }
  }
  if (state.lobby) { await loadSessions(); }
}

function withName(data) {
  const name = localStorage.getItem(NAME_KEY);
  return name ? { ...data, device_name: name } : data;
}

/** lobby.create / lobby.join with the name (C2); a lobby that does not take names yet gets none. */
async function lobbyCall(event, data) {
  try { return await conn.request(event, withName(data)); } catch (error) {
    if ((error.code === "bad_request" || error.code === "validation_error") && /device_name|extra/i.test(error.message) && localStorage.getItem(NAME_KEY)) {
      return conn.request(event, data);
    }
    throw error;
  }
}

async function join(code) {
  showError("join-error", null);
  try { setLobby(await lobbyCall("lobby.join", { code })); await loadSessions(); } catch (error) { showError("join-error", describe(error)); }
}

function leaveLocally() {
  state.lobby = null; state.session = null; state.sessions.clear();
  localStorage.removeItem(LOBBY_KEY);
  if (location.pathname !== "/") history.replaceState(null, "", "/");
  render();
}

// --- pushes ---------------------------------------------------------------------------------------------

conn.on("lobby.updated", (data) => {
  if (!state.lobby || data.lobby_id !== state.lobby.lobby_id) return;
  if (data.type === "participant_left" && data.device_id === me()) { leaveLocally(); return; }
  if (data.type === "closed") { leaveLocally(); showError("join-error", `The lobby was closed (${data.reason}).`); return; }
  if (data.lobby) setLobby(data.lobby);
  if (data.type === "session_created") loadSessions();
});

for (const event of ["measurement.session_updated", "measurement.session_completed", "measurement.session_failed", "measurement.session_cancelled"]) {
  conn.on(event, (data) => onSession(data, event));
}
for (const event of Object.keys(INSTRUCTION_STEP)) {
  conn.on(event, (data) => {
    const s = state.session;
    if (!s || s.session_id !== data.session_id) { loadSessions(); return; }
    if (data.speaker_index >= s.speaker_index) {
      onSession({ ...s, step: INSTRUCTION_STEP[event], speaker_index: data.speaker_index, speaker_device_id: data.speaker_device_id ?? s.speaker_device_id }, event);
    }
  });
}
conn.on("measurement.results", (data) => {
  const s = state.sessions.get(data.session_id);
  if (s) {
    const results = (s.results ?? []).filter((r) => r.speaker_index !== data.speaker_index);
    state.sessions.set(data.session_id, { ...s, results: [...results, data].sort((a, b) => a.speaker_index - b.speaker_index) });
  }
  state.shownSession = data.session_id;
  renderResults();
  if (!audio.recording) selectTab("results");
  if (state.lobby?.room && isHost()) predict({ again: false }); // one simulation per session: the host's; others ask with the button
});

function onSession(data, event) {
  if (!data?.session_id || (state.lobby && data.lobby_id && data.lobby_id !== state.lobby.lobby_id)) return;
  const known = state.sessions.get(data.session_id) ?? {};
  let session = { ...known, ...data };
  if (event === "measurement.session_completed") session.step = "completed";
  if (event === "measurement.session_failed") { session.step = "failed"; session.failure = { code: data.code, reason: data.reason, device_id: data.device_id }; }
  if (event === "measurement.session_cancelled") session.step = "cancelled";
  if (!Array.isArray(session.results)) session.results = known.results ?? [];
  state.sessions.set(session.session_id, session);
  if (!state.session || state.session.session_id === session.session_id || !FINAL_STEPS.has(session.step)) state.session = session;
  if (event === "measurement.session_failed") reportFailure(session);
  if (FINAL_STEPS.has(session.step) && audio.recording) audio.discardRecording();
  renderSession();
  reconcile();
}

function reportFailure(session) {
  const f = session.failure;
  const who = f?.device_id ? ` (from ${label(f.device_id)})` : "";
  addSessionError(`The measurement failed${who}: ${f?.reason ?? f?.code}${f?.code ? ` [${f.code}]` : ""}`);
}

function addSessionError(text) {
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = text;
  $("session-errors").replaceChildren(p);
}

/** Every session of the lobby (the log names them), the latest one current. */
async function loadSessions() {
  if (!state.lobby) return;
  const ids = [];
  let since = 0;
  for (let page = 0; page < 20; page++) {
    const log = await conn.request("lobby.events", { lobby_id: state.lobby.lobby_id, since, limit: 100 });
    for (const e of log.events) if (e.type === "session_created" && e.data?.session_id) ids.push(e.data.session_id);
    if (!log.events.length || log.next_since === since || log.next_since > log.last_seq) break;
    since = log.next_since;
  }
  for (const id of ids.slice(-10)) {
    try {
      const s = await conn.request("measurement.session_status", { session_id: id });
      state.sessions.set(s.session_id, { ...s, results: s.results ?? [] });
    } catch { /* a session the lobby forgot: nothing to show */ }
  }
  const latest = ids.length ? state.sessions.get(ids[ids.length - 1]) : null;
  if (latest) {
    state.session = latest;
    if (!state.shownSession) state.shownSession = [...ids].reverse().find((id) => state.sessions.get(id)?.results?.length) ?? latest.session_id;
  }
  render();
  reconcile();
}

// --- the session's choreography ----------------------------------------------------------------------

const running = new Set();

/** Do what this device still owes the session (duties() decides; each duty runs once at a time). */
function reconcile() {
  const s = state.session;
  if (!s) return;
  const key = `${s.session_id}:${s.speaker_index}`;
  if (state.local.turnKey !== key) state.local = freshTurn(key);
  const local = { ...state.local, armed: armedForRole() };
  for (const duty of duties(s, me(), local, isHost())) {
    if (running.has(duty)) continue;
    running.add(duty);
    perform(duty, s, key).catch(async (error) => {
      addSessionError(`This phone could not ${duty.replace(/_/g, " ")}: ${describe(error)}`);
      if (!["arm", "start_speaker"].includes(duty) && !FINAL_STEPS.has(state.session?.step)) {
        await conn.request("measurement.error", { session_id: s.session_id, reason: `${label(me())}: ${duty.replace(/_/g, " ")} failed: ${error.message}`.slice(0, 500) }).catch(() => {});
      }
    }).finally(() => { running.delete(duty); renderSession(); });
  }
  renderSession();
}

async function perform(duty, s, key) {
  const guard = { session_id: s.session_id, speaker_index: s.speaker_index };
  const sameTurn = () => state.local.turnKey === key;
  const answer = (data) => { if (data?.session_id) onSession(data, "measurement.session_updated"); };
  switch (duty) {
    case "arm":
      $("activity").textContent = "The measurement is waiting for this phone: tap “Arm this phone”.";
      selectTab("measure");
      return;
    case "start_speaker": {
      const next = s.step === "created" ? 0 : s.speaker_index + 1;
      answer(await conn.request("measurement.start_speaker", { session_id: s.session_id, speaker_index: next }));
      return;
    }
    case "ready":
      setActivity("Ready.");
      if (sameTurn()) state.local.ready = true;
      answer(await conn.request("measurement.ready", guard));
      return;
    case "load_sweep": {
      setActivity("Loading the sweep…");
      const info = await conn.request("measurement.get_audio_info", { job_id: s.job_id });
      const response = await conn.http(info.audio_url ?? `/v1/jobs/${s.job_id}/sweep.wav`);
      if (!response.ok) throw new Error(`the sweep could not be fetched: HTTP ${response.status}`);
      await audio.loadSweep(response);
      if (!sameTurn()) return;
      state.local.sweepLoaded = true;
      setActivity(`Sweep loaded (${audio.sweep.duration.toFixed(1)} s).`);
      answer(await conn.request("measurement.speaker_audio_ready", guard));
      return;
    }
    case "audio_ready":
      answer(await conn.request("measurement.speaker_audio_ready", guard));
      return;
    case "start_recording":
      audio.startRecording();
      state.local.recording = true;
      setActivity("Recording — keep still and quiet.");
      answer(await conn.request("measurement.recording_started", guard));
      return;
    case "recording_started":
      answer(await conn.request("measurement.recording_started", guard));
      return;
    case "play": {
      state.local.playing = true;
      renderSession();
      await audio.play(COUNTDOWN_S, (left) => {
        $("countdown").textContent = left > 0.05 ? `Sweep in ${Math.ceil(left)}…` : "Playing the sweep";
      });
      state.local.playing = false;
      state.local.played = true;
      $("countdown").textContent = "";
      setActivity("Sweep played.");
      answer(await conn.request("measurement.playback_complete", guard));
      return;
    }
    case "upload": {
      setActivity("Uploading the recording…");
      const stopped = await audio.stopRecording();
      const micIndex = s.microphones.indexOf(me());
      const name = uploadName(s.speaker_index, micIndex);
      const facts = { ...audio.captureFacts(), gap_frames: stopped.gapFrames, clipped_samples: stopped.clippedSamples };
      const response = await conn.postFromWorker(uploadPath(s.job_id, name), { recording: stopped.recording }, stopped.buffers,
        { "Content-Type": "audio/wav", "X-Capture-Facts": base64UrlJson(facts) });
      if (response.status !== 201) {
        let body = {};
        try { body = JSON.parse(response.text); } catch { /* not JSON: the status says it */ }
        throw new Error(`upload refused: ${body.error?.message ?? response.statusText} (${body.error?.code ?? response.status})`);
      }
      state.local.uploaded = true;
      setActivity(`Uploaded ${stopped.seconds.toFixed(1)} s at ${audio.ctx.sampleRate} Hz.`);
      answer(await conn.request("measurement.recording_uploaded", { ...guard, upload_name: name }));
      return;
    }
    case "lost_recording":
      throw new Error("this phone has no recording of the sweep (the page was reloaded while recording)");
    default:
      throw new Error(`unknown duty ${duty}`);
  }
}

function setActivity(text) { $("activity").textContent = text; }

// --- rendering ---------------------------------------------------------------------------------------

function setLobby(lobby) {
  const first = !state.lobby || state.lobby.lobby_id !== lobby.lobby_id;
  state.lobby = lobby;
  localStorage.setItem(LOBBY_KEY, JSON.stringify({ lobby_id: lobby.lobby_id, code: lobby.code }));
  if (lobby.room && (!state.roomDirty || first)) {
    state.form = roomModel.formFromRoom(lobby.room.room, state.materials);
    state.positions = Object.fromEntries(Object.entries(lobby.room.devices ?? {}).map(([id, d]) => [id, d.position_m]));
    state.roomDirty = false;
  }
  render();
}

function render() {
  const inLobby = !!state.lobby;
  $("home").hidden = inLobby;
  $("in-lobby").hidden = !inLobby;
  if (!inLobby) return;
  renderLobby();
  renderRoom();
  renderSession();
  renderResults();
}

function selectTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll(".tab")) {
    const on = button.dataset.tab === tab;
    if (on) button.setAttribute("aria-current", "page"); else button.removeAttribute("aria-current");
    $(button.dataset.tab).hidden = !on;
  }
}

function renderLobby() {
  const lobby = state.lobby;
  $("lobby-title").textContent = lobby.name ? `“${lobby.name}”` : "";
  $("lobby-code").textContent = lobby.code;
  $("lobby-status").textContent = lobby.status === "measuring" ? "measuring" : lobby.status;
  const link = `${location.origin}/join/${lobby.code}`;
  $("join-link").href = link;
  $("join-link").textContent = link;
  const qr = $("qr");
  if (qr.dataset.link !== link) {
    const code = qrcode(0, "M");
    code.addData(link);
    code.make();
    qr.innerHTML = code.createSvgTag({ cellSize: 4, margin: 2, scalable: true });
    qr.dataset.link = link;
  }
  $("roles-help").textContent = isHost()
    ? "You are the host: give one phone (or more) the speaker role and at least one the microphone role, then start on the Measure tab."
    : `The host (${nameOf(lobby, lobby.host_device_id)}) assigns the roles.`;
  const list = $("participants");
  list.replaceChildren(...lobby.participants.map((p) => {
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = `${label(p.device_id)}${p.device_id === lobby.host_device_id ? " · host" : ""}`;
    li.append(who);
    if (isHost() && lobby.status === "open") {
      const select = document.createElement("select");
      select.id = `role-${p.device_id}`;
      select.dataset.device = p.device_id;
      select.setAttribute("aria-label", `Role of ${nameOf(lobby, p.device_id)}`);
      for (const [value, text] of [["", "no role"], ["speaker", "speaker"], ["microphone", "microphone"]]) {
        const option = new Option(text, value, false, (p.role ?? "") === value);
        select.append(option);
      }
      select.addEventListener("change", async () => {
        showError("lobby-error", null);
        try { setLobby(await conn.request("role.assign", { lobby_id: lobby.lobby_id, device_id: p.device_id, role: select.value || null })); } catch (error) { showError("lobby-error", describe(error)); }
      });
      li.append(select);
    } else {
      const role = document.createElement("span");
      role.className = "badge";
      role.textContent = p.role ?? "no role";
      li.append(role);
    }
    return li;
  }));
  document.querySelectorAll(".host-only").forEach((n) => { n.hidden = !isHost(); });
}

// --- room -------------------------------------------------------------------------------------------------

function renderRoom() {
  if (!state.form) state.form = roomModel.defaultRoomForm(state.materials);
  const form = state.form;
  if (document.activeElement?.closest?.("#room")) { renderTopView(); return; } // do not overwrite what is being typed
  document.querySelector(`input[name=room-type][value=${form.type}]`).checked = true;
  $("shoebox-fields").hidden = form.type !== "shoebox";
  $("polygon-fields").hidden = form.type !== "polygon";
  form.dimensions_m.forEach((v, i) => { $(`dim-${i}`).value = v; });
  $("corners").value = form.corners_text;
  $("poly-height").value = form.height_m;
  const surfaces = form.type === "shoebox" ? roomModel.SHOEBOX_SURFACES : roomModel.POLYGON_SURFACES;
  const box = $("materials");
  box.replaceChildren(box.querySelector("legend") ?? Object.assign(document.createElement("legend"), { textContent: "Materials" }));
  for (const surface of surfaces) {
    const material = form.materials[surface];
    const custom = typeof material === "object";
    const wrap = document.createElement("div");
    wrap.className = "material";
    const l = document.createElement("label");
    l.htmlFor = `mat-${surface}`;
    l.textContent = surface === "walls" ? "Walls" : surface[0].toUpperCase() + surface.slice(1);
    const select = document.createElement("select");
    select.id = `mat-${surface}`;
    select.append(new Option("custom absorption coefficient…", "__custom", false, custom));
    for (const name of state.materials) select.append(new Option(name.replace(/_/g, " "), name, false, material === name));
    const number = document.createElement("input");
    number.id = `abs-${surface}`;
    number.inputMode = "decimal";
    number.hidden = !custom;
    number.value = custom ? material.absorption : "0.1";
    number.setAttribute("aria-label", `Absorption coefficient of the ${surface} (0 to 1)`);
    number.setAttribute("aria-describedby", `err-materials.${surface}`);
    const err = document.createElement("p");
    err.className = "error"; err.id = `err-materials.${surface}`; err.hidden = true;
    select.addEventListener("change", () => {
      number.hidden = select.value !== "__custom";
      form.materials[surface] = select.value === "__custom" ? { absorption: Number(number.value) } : select.value;
      state.roomDirty = true; checkRoom();
    });
    number.addEventListener("input", () => { form.materials[surface] = { absorption: number.value === "" ? NaN : Number(number.value) }; state.roomDirty = true; checkRoom(); });
    wrap.append(l, select, number, err);
    box.append(wrap);
  }
  renderTopView();
  checkRoom();
}

function readRoomForm() {
  const form = state.form;
  form.type = document.querySelector("input[name=room-type]:checked").value;
  form.dimensions_m = [0, 1, 2].map((i) => $(`dim-${i}`).value);
  form.corners_text = $("corners").value;
  form.height_m = $("poly-height").value;
}

/** Validates in place; returns the room and positions when everything is valid, else null. */
function checkRoom() {
  const { room, errors } = roomModel.roomFromForm(state.form);
  for (const node of document.querySelectorAll("#room p.error[id^=err-]")) { node.hidden = true; node.textContent = ""; }
  for (const input of document.querySelectorAll("#room [aria-invalid]")) input.removeAttribute("aria-invalid");
  for (const [field, message] of Object.entries(errors)) {
    const node = document.getElementById(`err-${field}`);
    if (node) { node.textContent = message; node.hidden = false; }
    document.querySelector(`#room [data-field="${field}"]`)?.setAttribute("aria-invalid", "true");
  }
  if (Object.keys(errors).length) return null;
  const positionProblems = roomModel.positionErrors(room, state.positions);
  for (const [id, message] of Object.entries(positionProblems)) {
    const node = document.getElementById(`err-pos-${id}`);
    if (node) { node.textContent = message; node.hidden = false; }
  }
  return Object.keys(positionProblems).length ? null : { room, positions: state.positions };
}

function renderTopView() {
  const { room, errors } = roomModel.roomFromForm(state.form);
  const svg = $("topview");
  const ids = state.lobby.participants.map((p) => p.device_id);
  if (Object.keys(errors).length) { svg.replaceChildren(); $("positions").replaceChildren(); return; }
  state.positions = roomModel.defaultPositions(room, ids, state.positions);
  for (const id of Object.keys(state.positions)) if (!ids.includes(id)) delete state.positions[id];
  const { box } = roomModel.extent(room);
  const [x0, y0, x1, y1] = box;
  const W = 340, H = Math.max(160, Math.min(420, (W * (y1 - y0)) / (x1 - x0 || 1))), pad = 16;
  const scale = Math.min((W - 2 * pad) / (x1 - x0 || 1), (H - 2 * pad) / (y1 - y0 || 1));
  const sx = (x) => pad + (x - x0) * scale, sy = (y) => H - pad - (y - y0) * scale; // y up, like a plan
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const ns = "http://www.w3.org/2000/svg";
  const corners = room.type === "shoebox" ? [[0, 0], [x1, 0], [x1, y1], [0, y1]] : room.corners_m;
  const outline = document.createElementNS(ns, "polygon");
  outline.setAttribute("points", corners.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" "));
  outline.setAttribute("class", "floor");
  const nodes = [outline];
  ids.forEach((id, k) => {
    const p = state.positions[id];
    const g = document.createElementNS(ns, "g");
    g.setAttribute("class", `device role-${state.lobby.participants[k].role ?? "none"}`);
    const c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", sx(p[0])); c.setAttribute("cy", sy(p[1])); c.setAttribute("r", 11);
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", sx(p[0])); t.setAttribute("y", sy(p[1]) + 4); t.setAttribute("text-anchor", "middle");
    t.textContent = String(k + 1);
    g.append(c, t);
    g.addEventListener("pointerdown", (e) => {
      e.preventDefault();
      g.setPointerCapture(e.pointerId);
      const move = (ev) => {
        const r = svg.getBoundingClientRect();
        const vx = ((ev.clientX - r.left) / r.width) * W, vy = ((ev.clientY - r.top) / r.height) * H;
        const x = Math.round(((vx - pad) / scale + x0) * 100) / 100, y = Math.round(((H - pad - vy) / scale + y0) * 100) / 100;
        state.positions[id] = [x, y, state.positions[id][2]];
        state.roomDirty = true;
        c.setAttribute("cx", sx(x)); c.setAttribute("cy", sy(y)); t.setAttribute("x", sx(x)); t.setAttribute("y", sy(y) + 4);
      };
      const up = () => { g.removeEventListener("pointermove", move); renderPositions(room, ids); checkRoom(); };
      g.addEventListener("pointermove", move);
      g.addEventListener("pointerup", up, { once: true });
    });
    nodes.push(g);
  });
  svg.replaceChildren(...nodes);
  renderPositions(room, ids);
}

function renderPositions(room, ids) {
  const box = $("positions");
  box.replaceChildren(...ids.map((id, k) => {
    const fs = document.createElement("fieldset");
    fs.className = "position";
    const lg = document.createElement("legend");
    lg.textContent = `${k + 1}. ${label(id)}`;
    fs.append(lg);
    const row = document.createElement("div");
    row.className = "grid3";
    ["x", "y", "z"].forEach((axis, i) => {
      const cell = document.createElement("div");
      const l = document.createElement("label");
      l.htmlFor = `pos-${id}-${axis}`; l.textContent = `${axis} (m)`;
      const input = document.createElement("input");
      input.id = `pos-${id}-${axis}`; input.inputMode = "decimal"; input.value = state.positions[id][i];
      input.setAttribute("aria-describedby", `err-pos-${id}`);
      input.addEventListener("input", () => {
        state.positions[id][i] = input.value === "" ? NaN : Number(input.value);
        state.roomDirty = true;
        checkRoom();
      });
      input.addEventListener("change", () => renderTopView());
      cell.append(l, input);
      row.append(cell);
    });
    const err = document.createElement("p");
    err.className = "error"; err.id = `err-pos-${id}`; err.hidden = true;
    fs.append(row, err);
    return fs;
  }));
}

// --- session panel -----------------------------------------------------------------------------------------

function renderSession() {
  if (!state.lobby) return;
  const s = state.session;
  const view = sessionView(s, state.lobby, me());
  const active = view && !view.final;
  $("start").hidden = !isHost() || active;
  $("cancel").hidden = !isHost() || !active;
  $("start").textContent = view?.final ? "Measure again" : "Start the measurement";
  const roles = state.lobby.participants.map((p) => p.role);
  const rolesMissing = !roles.includes("speaker") || !roles.includes("microphone");
  $("start").disabled = rolesMissing;
  $("start-help").textContent = !isHost() ? (active ? "" : `The host (${nameOf(state.lobby, state.lobby.host_device_id)}) starts the measurement.`)
    : rolesMissing ? "Give at least one phone the speaker role and one the microphone role (Lobby tab) before starting." : "";
  $("step").textContent = view ? view.label : "No measurement yet.";
  $("turn").textContent = view?.turn ?? "";
  $("session-devices").replaceChildren(...(view?.devices ?? []).map((d) => {
    const li = document.createElement("li");
    li.textContent = `${d.me ? `${d.name} (you)` : d.name} — ${d.role}${d.state ? `: ${d.state}` : ""}`;
    li.className = d.state === "waiting for this device" ? "waiting" : "";
    return li;
  }));
  const role = myRole();
  $("arm").textContent = armedForRole() ? "Armed ✓ (tap to re-check)" : "Arm this phone";
  $("arm-help").textContent = role === "speaker"
    ? "Tap Arm: this phone plays the sweep. Turn its volume up, put it where the sound source should be and keep it still."
    : "Tap Arm on every phone: it wakes the audio, opens the microphone without any processing and keeps the screen on.";
}

/** What the results panel was built from: it is built again only when that changes, so a push while
 *  recording (lobby.updated re-renders the page) does not re-draw every table and plot (a 90 ms task). */
let resultsShown = [];

function renderResults() {
  if (!state.lobby) return;
  const pick = $("session-pick");
  const withResults = [...state.sessions.values()].filter((s) => s.results?.length);
  const options = withResults.map((s, i) => new Option(`Session ${i + 1}: ${s.step}, ${s.results.length} speaker${s.results.length === 1 ? "" : "s"}`, s.session_id, false, s.session_id === state.shownSession));
  pick.replaceChildren(...options);
  const session = state.sessions.get(state.shownSession) ?? withResults[withResults.length - 1];
  const body = $("results-body");
  if (!session?.results?.length) return;
  pick.value = session.session_id;
  const shown = [session.results, state.lobby.participants.map((p) => `${p.device_id}:${p.name}`).join(),
                 ...session.results.map((entry) => state.predictions.get(`${session.session_id}:${entry.speaker_index}`))];
  if (shown.length === resultsShown.length && shown.every((x, i) => x === resultsShown[i])) return;
  resultsShown = shown;
  const parts = [];
  for (const entry of session.results) {
    const pairs = pairsOf(entry);
    const h = document.createElement("h3");
    h.textContent = `Speaker ${entry.speaker_index + 1}: ${label(entry.speaker_device_id)}`;
    parts.push(h);
    for (const pair of pairs) parts.push(pairBlock(pair));
    parts.push(...comparisonBlocks(pairs));
    const prediction = state.predictions.get(`${session.session_id}:${entry.speaker_index}`);
    if (prediction) parts.push(predictionBlock(pairs, prediction));
  }
  body.replaceChildren(...parts);
  requestAnimationFrame(() => {
    for (const scroll of body.querySelectorAll(".table-scroll")) {
      const title = scroll.previousElementSibling;
      if (scroll.scrollWidth > scroll.clientWidth + 1 && !title.querySelector(".scroll-hint")) {
        title.append(Object.assign(document.createElement("span"), { className: "scroll-hint", textContent: " (swipe the table sideways for every column)" }));
      }
    }
  });
}

function pairBlock(pair) {
  const section = document.createElement("section");
  section.className = "pair";
  section.dataset.microphone = pair.microphone;
  const h = document.createElement("h4");
  h.textContent = `Microphone ${pair.micIndex + 1}: ${label(pair.microphone)}`;
  section.append(h);
  const table = reportTable(pair.report);
  if (table.error) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = `No result for this microphone: ${table.error.message} (${table.error.code})`;
    section.append(p);
    return section;
  }
  const t = document.createElement("table");
  t.className = "metrics";
  const scroll = scrollingTable(t, `Metrics per octave band — ${label(pair.speaker)} to ${label(pair.microphone)}`, `table-${pair.speaker}-${pair.microphone}`);
  const head = document.createElement("tr");
  head.append(th("Band", "col"), ...table.rows[0].cells.map((c) => th(`${c.metric.label}${c.metric.unit ? ` (${c.metric.unit})` : ""}${c.metric.key === "sti" ? "¹" : ""}`, "col")));
  const thead = document.createElement("thead"); thead.append(head);
  const tbody = document.createElement("tbody");
  const notes = [];
  for (const row of table.rows) {
    const tr = document.createElement("tr");
    tr.append(th(row.label, "row"));
    for (const cell of row.cells) {
      const td = document.createElement("td");
      td.dataset.metric = cell.metric.label;
      td.dataset.band = String(row.band);
      if (cell.refused) {
        notes.push({ cell, row });
        td.className = "refused";
        td.textContent = `refused [${notes.length}]`;
        td.dataset.reason = cell.reason;
      } else td.textContent = formatCell(cell);
      tr.append(td);
    }
    tbody.append(tr);
  }
  t.append(thead, tbody);
  section.append(...scroll);
  const foot = document.createElement("p");
  foot.className = "help";
  foot.textContent = "¹ STI: the index (broadband row) and, per band, the modulation transfer index it is made of.";
  section.append(foot);
  if (notes.length) {
    const ol = document.createElement("ol");
    ol.className = "reasons";
    ol.setAttribute("aria-label", "Why values were refused");
    for (const { cell, row } of notes) {
      const li = document.createElement("li");
      li.textContent = `${cell.metric.label} at ${row.label}: refused — ${cell.reason}${cell.code ? ` (${cell.code})` : ""}`;
      ol.append(li);
    }
    section.append(ol);
  }
  const curves = pair.report.decay_curves;
  if (curves?.time_s?.length) {
    const series = Object.entries(curves.bands).map(([band, y]) => ({ label: band === "broadband" ? "broadband" : bandLabel(Number(band)), x: curves.time_s, y, dashed: band === "broadband" }));
    section.append(linePlot(series, { title: `Decay curves (Schroeder) — microphone ${pair.micIndex + 1}`, xLabel: "time after the direct sound (s)", yLabel: "level (dB)", yRange: [-70, 0] }));
  }
  return section;
}

/** A band on a plot's axis: 125 … 1k … 8k. */
const shortBand = (band) => (band >= 1000 ? `${band / 1000}k` : String(band));

function th(text, scope) {
  const node = document.createElement("th");
  node.scope = scope;
  node.textContent = text;
  return node;
}

function comparisonBlocks(pairs) {
  const valid = pairs.filter((p) => p.report && !p.report.error);
  if (!valid.length) return [];
  const bands = valid[0].report.bands_hz;
  const cats = bands.map(shortBand);
  const blocks = [];
  for (const key of ["t30_s", "edt_s", "c80_db", "d50"]) {
    const m = METRICS.find((x) => x.key === key);
    const series = valid.map((p) => ({ label: `mic ${p.micIndex + 1}`, x: bands.map((_, i) => i), y: p.report[key].bands }));
    blocks.push(linePlot(series, { title: `${m.label} per band across microphones`, xLabel: "octave band (Hz)", yLabel: `${m.label}${m.unit ? ` (${m.unit})` : ""}`, xCategories: cats }));
  }
  const table = document.createElement("table");
  table.className = "metrics spread";
  const head = document.createElement("tr");
  head.append(th("Band", "col"), ...["T30 (s)", "EDT (s)", "C80 (dB)", "D50"].map((x) => th(x, "col")));
  const spreads = ["t30_s", "edt_s", "c80_db", "d50"].map((k) => spread(valid, k));
  const rows = bands.map((band, i) => {
    const tr = document.createElement("tr");
    tr.append(th(bandLabel(band), "row"));
    for (const s of spreads) {
      const td = document.createElement("td");
      td.textContent = s[i].count < 2 ? `n/a (${s[i].count} value${s[i].count === 1 ? "" : "s"})` : s[i].range.toFixed(2);
      tr.append(td);
    }
    return tr;
  });
  const thead = document.createElement("thead"); thead.append(head);
  const tbody = document.createElement("tbody"); tbody.append(...rows);
  table.append(thead, tbody);
  blocks.push(...scrollingTable(table, "Spread between positions (largest − smallest value across microphones)", `spread-${pairs[0].speaker}`));
  return blocks;
}

/** A title, then `table` in a keyboard-scrollable region named by it (wide tables scroll sideways on a
 *  phone; the band column stays in view). */
function scrollingTable(table, title, id) {
  const heading = document.createElement("p");
  heading.className = "table-title";
  heading.id = `title-${id}`;
  heading.textContent = title;
  const scroll = document.createElement("div");
  scroll.className = "table-scroll";
  scroll.tabIndex = 0;
  scroll.setAttribute("role", "region");
  scroll.setAttribute("aria-labelledby", heading.id);
  table.setAttribute("aria-labelledby", heading.id);
  scroll.append(table);
  return [heading, scroll];
}

function predictionBlock(pairs, prediction) {
  const div = document.createElement("div");
  if (prediction.error) {
    div.className = "error prediction-error";
    div.textContent = `The prediction failed: ${prediction.error}`;
    return div;
  }
  const bands = prediction.pairs[0]?.metrics?.bands_hz ?? [125, 250, 500, 1000, 2000, 4000, 8000];
  const series = [];
  pairs.forEach((p, k) => {
    if (p.report && !p.report.error) series.push({ label: `measured, mic ${p.micIndex + 1}`, x: bands.map((_, i) => i), y: p.report.t30_s.bands });
    const predicted = prediction.pairs.find((x) => x.microphone === k)?.metrics;
    if (predicted) series.push({ label: `predicted, mic ${p.micIndex + 1}`, x: bands.map((_, i) => i), y: predicted.t30_s.bands, dashed: true });
  });
  if (prediction.theory?.sabine_s) series.push({ label: "Sabine", x: bands.map((_, i) => i), y: prediction.theory.sabine_s, dashed: true });
  div.append(linePlot(series, { title: "T30 measured against predicted", xLabel: "octave band (Hz)", yLabel: "T30 (s)", xCategories: bands.map(shortBand) }));
  return div;
}

/** `simulation.run` with `"wait": false`: the answer is the kept job, the result comes as the
 *  `simulation.completed` / `simulation.failed` push (docs/simulation.md) — the gateway waits 10 s for an
 *  upstream's answer, less than a long simulation takes. After a reconnection `simulation.get` reads it. */
const simulations = new Map(); // simulation id → { resolve, reject, timer }
const simulationPushes = new Map(); // pushes that came before their job's answer (id → settle)
async function simulate(body) {
  const job = await conn.request("simulation.run", { ...body, wait: false });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => settleSimulation(job.id, (w) => w.reject(new Error("the simulation did not finish in time"))), PREDICTION_TIMEOUT_MS);
    simulations.set(job.id, { resolve, reject, timer });
    const early = simulationPushes.get(job.id);
    if (early) { simulationPushes.delete(job.id); settleSimulation(job.id, early); }
  });
}
function settleSimulation(id, settle) {
  const waiting = simulations.get(id);
  if (!waiting) {
    simulationPushes.set(id, settle);
    for (const old of simulationPushes.keys()) if (simulationPushes.size > SIMULATIONS_KEPT) simulationPushes.delete(old);
    return;
  }
  simulations.delete(id);
  clearTimeout(waiting.timer);
  settle(waiting);
}
const simulationError = (error) => Object.assign(new Error(error?.message ?? "the simulation failed"), { code: error?.code });
conn.on("simulation.completed", (data) => settleSimulation(data.id, (w) => w.resolve(data)));
conn.on("simulation.failed", (data) => settleSimulation(data.id, (w) => w.reject(simulationError(data.error))));
async function checkSimulation(id) {
  try {
    const kept = await conn.request("simulation.get", { id });
    if (kept.status === "succeeded") settleSimulation(id, (w) => w.resolve(kept));
    if (kept.status === "failed") settleSimulation(id, (w) => w.reject(simulationError(kept.error)));
  } catch { /* still running, or asked again at the next reconnection; the timer ends the wait */ }
}

/** Measured against predicted: `simulation.run` on the shared room and positions, per speaker of the shown
 *  session (`again`: also those already predicted). */
const predicting = new Set();
async function predict({ again }) {
  const session = state.sessions.get(state.shownSession);
  const room = state.lobby?.room;
  if (!session || !room) { $("results-status").textContent = "Describe and share the room first (Room tab): the prediction needs it."; return; }
  $("results-status").textContent = "Asking the simulation for a prediction…";
  renderPredicting(true);
  for (const entry of session.results) {
    const pos = (id) => room.devices?.[id]?.position_m;
    const microphones = entry.microphones.map(pos);
    const key = `${session.session_id}:${entry.speaker_index}`;
    if (predicting.has(key) || (!again && state.predictions.has(key))) continue;
    if (!pos(entry.speaker_device_id) || microphones.some((p) => !p)) { state.predictions.set(key, { error: "the shared room has no position for some devices" }); continue; }
    predicting.add(key);
    try {
      // 24 kHz: the lowest rate with every octave band (docs/simulation.md), a third less work than 48 kHz
      state.predictions.set(key, await simulate({ room: room.room, sources: [pos(entry.speaker_device_id)], microphones, sample_rate_hz: 24000 }));
    } catch (error) { state.predictions.set(key, { error: describe(error) }); } finally { predicting.delete(key); }
  }
  if (!predicting.size) { $("results-status").textContent = ""; renderPredicting(false); } // another speaker's may still run
  renderResults();
}

/** The predict button while a prediction runs: disabled, saying so, with the simulation's progress. */
function renderPredicting(on) {
  const button = $("predict");
  button.disabled = on;
  button.textContent = on ? "Predicting…" : "Predict from the shared room";
  button.setAttribute("aria-busy", String(on));
  const bar = $("predict-progress");
  bar.hidden = !on;
  if (on) bar.removeAttribute("value");
}
conn.on("simulation.progress", (data) => {
  if (!simulations.has(data.id) || !Number.isFinite(data.fraction)) return;
  $("predict-progress").value = data.fraction;
  $("predict").textContent = `Predicting… ${Math.round(100 * data.fraction)} %`;
});

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url; a.download = name;
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// --- controls ---------------------------------------------------------------------------------------------

$("name-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("device-name").value.trim();
  showError("name-error", null);
  if (name.length > 40 || /[\u0000-\u001f\u007f]/.test(name)) { showError("name-error", "A name is at most 40 characters, without control characters."); return; }
  if (name) localStorage.setItem(NAME_KEY, name); else localStorage.removeItem(NAME_KEY);
  if (state.lobby) {
    try { setLobby(await lobbyCall("lobby.join", { code: state.lobby.code })); } catch (error) { showError("name-error", describe(error)); }
  }
});

$("create-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError("join-error", null);
  const name = $("lobby-name").value.trim();
  try { setLobby(await lobbyCall("lobby.create", name ? { name } : {})); state.sessions.clear(); state.session = null; render(); } catch (error) { showError("join-error", describe(error)); }
});

$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const code = $("join-code").value.trim();
  if (!code) { showError("join-error", "Type the 8-character code shown on the host's screen."); return; }
  join(code);
});

$("leave").addEventListener("click", async () => {
  try { await conn.request("lobby.leave", { lobby_id: state.lobby.lobby_id }); } catch (error) { if (error.code !== "not_found") { showError("lobby-error", describe(error)); return; } }
  leaveLocally();
});

for (const button of document.querySelectorAll(".tab")) button.addEventListener("click", () => selectTab(button.dataset.tab));

for (const radio of document.querySelectorAll("input[name=room-type]")) {
  radio.addEventListener("change", () => { readRoomForm(); state.roomDirty = true; state.positions = {}; document.activeElement.blur(); renderRoom(); });
}
for (const id of ["dim-0", "dim-1", "dim-2", "corners", "poly-height"]) {
  $(id).addEventListener("input", () => { readRoomForm(); state.roomDirty = true; checkRoom(); });
  $(id).addEventListener("change", () => renderTopView());
}

$("share-room").addEventListener("click", async () => {
  readRoomForm();
  showError("room-error", null);
  $("room-status").textContent = "";
  const valid = checkRoom();
  if (!valid) { showError("room-error", "Fix the fields marked above, then share again."); return; }
  try {
    state.roomDirty = false;
    setLobby(await conn.request("lobby.room_snapshot", { lobby_id: state.lobby.lobby_id, room: roomModel.snapshot(valid.room, valid.positions) }));
    $("room-status").textContent = "Room shared with everyone.";
  } catch (error) {
    state.roomDirty = true;
    const fields = error.details?.errors?.map((x) => `${x.field}: ${x.message}`).join("; ");
    showError("room-error", fields ? `The server refused the room: ${fields}` : describe(error));
  }
});

$("arm").addEventListener("click", async () => {
  showError("arm-error", null);
  $("arm-state").textContent = "Arming…";
  try {
    const warnings = await audio.arm({ microphone: myRole() !== "speaker" });
    $("arm-warnings").replaceChildren(...warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
    $("arm-state").textContent = `Armed: audio running at ${audio.ctx.sampleRate} Hz${audio.node ? ", microphone open" : ""}${audio.wakeLock ? ", screen kept on" : ""}.`;
    $("meter-box").hidden = !audio.node;
    if (audio.node) conn.startUploader(); // now, not in the task that ends the first recording
  } catch (error) {
    $("arm-state").textContent = "Not armed.";
    showError("arm-error", error.message);
  }
  renderSession();
  reconcile();
});

let meterFrame = 0;
audio.onLevel = (level) => {
  if (meterFrame) return;
  meterFrame = requestAnimationFrame(() => {
    meterFrame = 0;
    const db = level.peak > 0 ? Math.max(-90, 20 * Math.log10(level.peak)) : -90;
    $("meter-fill").style.width = `${((db + 90) / 90) * 100}%`;
    $("meter").setAttribute("aria-valuenow", db.toFixed(0));
    $("meter-db").textContent = `${db <= -90 ? "−∞" : db.toFixed(1)} dBFS peak`;
    $("clip").hidden = performance.now() - level.clipAt > 2000;
  });
};

$("start").addEventListener("click", async () => {
  $("session-errors").replaceChildren();
  try {
    if (state.lobby.status === "open") setLobby(await conn.request("lobby.start", { lobby_id: state.lobby.lobby_id }));
    const session = await conn.request("measurement.create_session", { lobby_id: state.lobby.lobby_id, sweep_count: SWEEP_COUNT });
    state.session = null;
    onSession(session, "measurement.session_updated");
  } catch (error) { addSessionError(`Could not start: ${describe(error)}`); }
});

$("cancel").addEventListener("click", async () => {
  try { onSession(await conn.request("measurement.cancel_session", { session_id: state.session.session_id }), "measurement.session_updated"); } catch (error) { addSessionError(`Could not cancel: ${describe(error)}`); }
});

$("session-pick").addEventListener("change", () => { state.shownSession = $("session-pick").value; renderResults(); });
$("predict").addEventListener("click", () => predict({ again: true }));
$("export-json").addEventListener("click", () => {
  const sessions = [...state.sessions.values()].filter((s) => s.results?.length);
  download(`sonalyze-${state.lobby.code}.json`, "application/json", JSON.stringify({ lobby: state.lobby, sessions, predictions: Object.fromEntries(state.predictions) }, null, 1));
});
$("export-csv").addEventListener("click", () => {
  const sessions = [...state.sessions.values()].filter((s) => s.results?.length);
  download(`sonalyze-${state.lobby.code}.csv`, "text/csv", toCsv(sessions, (id) => nameOf(state.lobby, id)));
});

// --- start ----------------------------------------------------------------------------------------------------

$("device-name").value = localStorage.getItem(NAME_KEY) ?? "";
fetch("/assets/materials.json").then((r) => r.json()).then((m) => { state.materials = m.absorption;
  if (!state.roomDirty) { state.form = state.lobby?.room ? roomModel.formFromRoom(state.lobby.room.room, state.materials) : null; if (state.lobby) renderRoom(); } }).catch(() => {});
conn.start();
render();
