// Unit tests of the app's pure modules, run by `node --test` (test_unit.py runs them from pytest).
import assert from "node:assert/strict";
import { test } from "node:test";
import { MessageChannel, receiveMessageOnPort } from "node:worker_threads";
import { createHash } from "node:crypto";
import { BlockBatcher, FrameAssembler, assemble, gapFrames, recordingFrames, sampleStats } from "../../src/sonalyze/webapp/frames.js";
import { encodeWavFloat32, readWavHeader, wavOfRecording } from "../../src/sonalyze/webapp/wav.js";
import { duties, sessionView, backoffMs, nameOf } from "../../src/sonalyze/webapp/session-model.js";
import { reportTable, toCsv, spread, pairsOf } from "../../src/sonalyze/webapp/results.js";
import { MARKERS, categoryOffsets, markerPath } from "../../src/sonalyze/webapp/plots.js";
import { contains, defaultPositions, polygonProblem, roomFromForm, defaultRoomForm, positionErrors, parseCorners } from "../../src/sonalyze/webapp/room-model.js";

test("WAV: RIFF header fields and the float samples, byte for byte", () => {
  const samples = Float32Array.from([0, 0.5, -1, 0.25]);
  const buffer = encodeWavFloat32(samples, 44100);
  const view = new DataView(buffer);
  const text = (at) => String.fromCharCode(...new Uint8Array(buffer, at, 4));
  assert.equal(text(0), "RIFF"); assert.equal(text(8), "WAVE"); assert.equal(text(12), "fmt "); assert.equal(text(38), "fact"); assert.equal(text(50), "data");
  assert.equal(view.getUint32(4, true), buffer.byteLength - 8);
  assert.equal(buffer.byteLength, 58 + 16);
  assert.deepEqual(readWavHeader(buffer), { formatTag: 3, channels: 1, sampleRateHz: 44100, bitsPerSample: 32, frames: 4 });
  assert.equal(view.getUint32(28, true), 44100 * 4); // byte rate
  assert.equal(view.getUint32(54, true), 16); // data size
  assert.deepEqual([0, 1, 2, 3].map((i) => view.getFloat32(58 + 4 * i, true)), [0, 0.5, -1, 0.25]);
  assert.throws(() => encodeWavFloat32(samples, 44100.5));
  const view2 = new DataView(encodeWavFloat32(Float32Array.from([9, 0.75, -0.125]).subarray(1), 48000)); // a view at an offset
  assert.deepEqual([view2.getFloat32(58, true), view2.getFloat32(62, true), view2.byteLength], [0.75, -0.125, 58 + 8]);
});

/** Two recordings as the worklet delivers them (a batch from before the start, a lost batch, one past the
 *  stop), and the SHA-256 of the WAV the page built from them on its main thread before the assembly moved
 *  to upload-worker.js (FrameAssembler.toSamples + encodeWavFloat32 of commit c33be7a). */
function knownRecordings() {
  const short = new FrameAssembler(1100);
  short.add(1000, Float32Array.from({ length: 256 }, (_, i) => (i - 128) / 256));
  short.add(1384, Float32Array.from({ length: 128 }, (_, i) => -i / 128));
  short.stop(1600);
  const nineSeconds = new FrameAssembler(5000); // 9 s at 44.1 kHz in the worklet's 2048-frame batches
  for (let frame = 4096; frame < 5000 + 9 * 44100 + 4096; frame += 2048) {
    if (frame !== 4096 + 2048 * 50) nineSeconds.add(frame, Float32Array.from({ length: 2048 }, (_, i) => Math.sin((frame + i) * 0.0123) * 0.8));
  }
  nineSeconds.stop(5000 + 9 * 44100);
  return [[short, "f9eba11c60761df506bc484b16c112a975319d0d73b83f27ec69c4d3b6ee5f34", 216, 500],
          [nineSeconds, "25ea2868eac6c7e6eab90ce58bb874142248e9cf153a7f999711dd254368d821", 2048, 396900]];
}

test("WAV of a recording (upload-worker.js): byte for byte the WAV the page used to build, from transferred batches", () => {
  for (const [assembler, sha256, gap, frames] of knownRecordings()) {
    const recording = { sampleRateHz: 44100, ...assembler.recording };
    assert.deepEqual([gapFrames(recording), recordingFrames(recording)], [gap, frames]);
    const { port1, port2 } = new MessageChannel(); // the hand-off as the page does it: the buffers transferred
    port1.postMessage({ recording }, assembler.buffers);
    const received = receiveMessageOnPort(port2).message.recording;
    port1.close();
    assert.ok(assembler.batches.every((b) => b.samples.length === 0), "the page's samples are detached: moved, not copied");
    const wav = wavOfRecording(received);
    assert.equal(createHash("sha256").update(new Uint8Array(wav)).digest("hex"), sha256);
    assert.deepEqual(readWavHeader(wav), { formatTag: 3, channels: 1, sampleRateHz: 44100, bitsPerSample: 32, frames });
  }
});

test("frames: the worklet's batches carry their peak and clipped count; the assembler sums them", () => {
  assert.deepEqual(sampleStats(Float32Array.from([0.1, -0.9995, 0.5, 1])), { peak: 1, clipped: 2 });
  const b = new BlockBatcher(128);
  const batch = b.push(0, Float32Array.from({ length: 128 }, (_, i) => (i === 7 ? -1 : i / 1000)));
  assert.deepEqual([batch.peak, batch.clipped], [1, 1]);
  const a = new FrameAssembler(0);
  a.add(batch.frame, batch.samples, batch);
  a.add(128, Float32Array.from({ length: 128 }, () => 0.25));
  assert.deepEqual([a.peak, a.clippedSamples], [1, 1]);
});

const block = (frame) => Float32Array.from({ length: 128 }, (_, i) => frame + i); // each sample = its frame number

test("frames: contiguous blocks batch up; a missing block starts a new batch", () => {
  const b = new BlockBatcher(256);
  assert.equal(b.push(1000, block(1000)), null);
  const first = b.push(1128, block(1128));
  assert.equal(first.frame, 1000);
  assert.equal(first.samples.length, 256);
  assert.equal(b.push(1256, block(1256)), null);
  const cut = b.push(1512, block(1512)); // frames 1384–1511 never came
  assert.equal(cut.frame, 1256);
  assert.equal(cut.samples.length, 128);
  assert.equal(b.flush().frame, 1512);
  assert.equal(b.flush(), null);
});

test("frames: the assembler puts every sample at its render frame and fills gaps with zeros", () => {
  const a = new FrameAssembler(1100);
  a.add(1000, Float32Array.from({ length: 256 }, (_, i) => 1000 + i)); // 1000–1255, starts before the recording
  a.add(1384, Float32Array.from({ length: 128 }, (_, i) => 1384 + i)); // gap 1256–1383
  a.stop(1600);
  const out = assemble(a.recording);
  assert.equal(out.length, 500);
  for (let n = 0; n < out.length; n++) {
    const frame = 1100 + n;
    const expected = frame < 1256 ? frame : frame < 1384 ? 0 : frame < 1512 ? frame : 0;
    assert.equal(out[n], expected, `sample ${n}`);
  }
  assert.equal(gapFrames(a.recording), 128 + 88);
  assert.equal(recordingFrames(a.recording), 500);
  const open = new FrameAssembler(1100); // never stopped: ends at the last sample received
  open.add(1000, Float32Array.from({ length: 256 }));
  assert.deepEqual([open.recording.endFrame, assemble(open.recording).length, gapFrames(open.recording)], [1256, 156, 0]);
});

const session = (extra) => ({ session_id: "s", lobby_id: "l", job_id: "j", step: "preparing", speaker_index: 0, speaker_device_id: "spk",
  speakers: ["spk"], microphones: ["m1", "m2"], waiting_for: ["spk", "m1", "m2"], results: [], failure: null, ...extra });
const none = { armed: true, ready: false, sweepLoaded: false, recording: false, playing: false, played: false, uploaded: false };

test("session model: each device's duties through the steps", () => {
  assert.deepEqual(duties(session({ step: "created", waiting_for: [] }), "spk", none, true), ["start_speaker"]);
  assert.deepEqual(duties(session({ step: "created", waiting_for: [] }), "m1", none, false), []);
  assert.deepEqual(duties(session(), "spk", none, true), ["ready", "load_sweep"]);
  assert.deepEqual(duties(session(), "spk", { ...none, ready: true, sweepLoaded: true }, true), ["audio_ready"]);
  assert.deepEqual(duties(session(), "m1", { ...none, armed: false }, false), ["arm"]);
  assert.deepEqual(duties(session({ waiting_for: ["spk"] }), "m1", none, false), []);
  assert.deepEqual(duties(session({ step: "recording_starting", waiting_for: ["m1"] }), "m1", none, false), ["start_recording"]);
  assert.deepEqual(duties(session({ step: "recording_starting", waiting_for: ["m1"] }), "m1", { ...none, recording: true }, false), ["recording_started"]);
  assert.deepEqual(duties(session({ step: "playing", waiting_for: ["spk"] }), "spk", { ...none, sweepLoaded: true }, true), ["play"]);
  assert.deepEqual(duties(session({ step: "playing", waiting_for: ["spk"] }), "spk", { ...none, sweepLoaded: true, playing: true }, true), []);
  assert.deepEqual(duties(session({ step: "uploading", waiting_for: ["m2"] }), "m2", { ...none, recording: true }, false), ["upload"]);
  assert.deepEqual(duties(session({ step: "uploading", waiting_for: ["m2"] }), "m2", none, false), ["lost_recording"]); // reloaded mid-recording
  assert.deepEqual(duties(session({ step: "speaker_done", speakers: ["spk", "b"] }), "spk", none, true), ["start_speaker"]);
  assert.deepEqual(duties(session({ step: "speaker_done" }), "spk", none, true), []);
  assert.deepEqual(duties(session({ step: "completed" }), "spk", none, true), []);
});

test("session model: the view names devices and says who is awaited", () => {
  const lobby = { participants: [{ device_id: "spk", name: "Anna" }, { device_id: "m1", name: null }, { device_id: "m2" }] };
  const view = sessionView(session({ waiting_for: ["m2"] }), lobby, "m1");
  assert.equal(view.turn, "speaker 1 of 1: Anna");
  // an unnamed phone is "Phone N" by its place in the lobby (join order), never a fragment of its id
  assert.deepEqual(view.devices.map((d) => [d.name, d.state, d.me]), [["Anna", "ready", false], ["Phone 2", "ready", true], ["Phone 3", "waiting for this device", false]]);
  // while the sweep plays the microphones record and the speaker is playing, not "done" and "waiting"
  const playing = sessionView(session({ step: "playing", waiting_for: ["spk"] }), lobby, "m1");
  assert.deepEqual(playing.devices.map((d) => d.state), ["playing the sweep", "recording", "recording"]);
  const uploading = sessionView(session({ step: "uploading", waiting_for: ["m2"] }), lobby, "m1");
  assert.deepEqual(uploading.devices.map((d) => d.state), ["played", "uploaded", "waiting for this device"]);
  const failed = sessionView(session({ step: "failed", failure: { code: "step_timeout", reason: "waited for m2" } }), lobby, "m1");
  assert.equal(failed.failure, "step_timeout: waited for m2");
  assert.equal(nameOf(lobby, "zzz-long-id"), "a phone that left");
  assert.equal(nameOf(lobby, null), "nobody");
  assert.equal(nameOf({ participants: [{ device_id: "m1", name: "" }] }, "m1"), "Phone 1");
  assert.equal(backoffMs(0, 0.5), 500);
  assert.equal(backoffMs(20, 0.5), 15000);
  assert.ok(backoffMs(3, 0) >= 2800 && backoffMs(3, 0.999) <= 5200);
});

const report = {
  bands_hz: [125, 250, 500, 1000, 2000, 4000, 8000],
  t30_s: { bands: [null, 0.6, 0.7, 0.65, 0.6, 0.5, 0.45], broadband: 0.6, reasons: { 125: "dynamic range 30 dB < 45 dB needed for T30" }, codes: { 125: "insufficient_dynamic_range" } },
  c80_db: { bands: [1, 2, 3, 4, 5, 6, 0], broadband: 3, reasons: {} },
  sti: { value: null, mti: [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], rating: null, reason: "too short", code: "ir_too_short" },
};

test("results: a refused value is refused with its reason and code, a zero stays a zero", () => {
  const table = reportTable(report);
  const cell = (band, metric) => table.rows.find((r) => r.band === band).cells.find((c) => c.metric.label === metric);
  assert.deepEqual([cell(125, "T30").refused, cell(125, "T30").reason, cell(125, "T30").code], [true, "dynamic range 30 dB < 45 dB needed for T30", "insufficient_dynamic_range"]);
  assert.equal(cell(8000, "C80").refused, false);
  assert.equal(cell(8000, "C80").value, 0);
  assert.equal(cell("broadband", "STI").reason, "too short");
  assert.equal(cell(500, "STI").value, 0.5);
  assert.equal(cell(500, "EDT").refused, true); // absent metric: refused, never blank
  assert.deepEqual(reportTable({ error: { code: "analysis_failed", message: "no sweep" } }), { error: { code: "analysis_failed", message: "no sweep" } });
  const entry = { speaker_index: 0, speaker_device_id: "spk", microphones: ["m1", "m2"], analysis: { results: { "speaker-0_mic-0.wav": report, "speaker-0_mic-1.wav": { ...report, t30_s: { ...report.t30_s, bands: [null, 0.7, 0.9, 0.65, 0.6, 0.5, 0.45] } } } } };
  const pairs = pairsOf(entry);
  assert.deepEqual(pairs.map((p) => [p.microphone, p.upload]), [["m1", "speaker-0_mic-0.wav"], ["m2", "speaker-0_mic-1.wav"]]);
  const s = spread(pairs, "t30_s");
  assert.equal(s[0].count, 0);
  assert.ok(Math.abs(s[2].range - 0.2) < 1e-12);
  const csv = toCsv([{ session_id: "s1", results: [entry] }]).split("\n");
  assert.equal(csv[0], "session_id,speaker,microphone,metric,band,value,unit,refused_code,refused_reason");
  assert.ok(csv.includes("s1,spk,m1,T30,125,,s,insufficient_dynamic_range,dynamic range 30 dB < 45 dB needed for T30"));
  assert.ok(csv.includes("s1,spk,m1,C80,8000,0,dB,,"));
});

test("room model: the backend's geometry rules, checked in place", () => {
  assert.equal(polygonProblem([[0, 0], [4, 0], [4, 3], [0, 3]]), null);
  assert.match(polygonProblem([[0, 0], [4, 3], [4, 0], [0, 3]]), /cross/);
  assert.match(polygonProblem([[0, 0], [1, 1]]), /at least 3/);
  assert.match(polygonProblem([[0, 0], [0, 0], [1, 1]]), /coincide/);
  const L = { type: "polygon", corners_m: [[0, 0], [6, 0], [6, 3], [3, 3], [3, 5], [0, 5]], height_m: 2.5 };
  assert.equal(contains(L, [1, 4, 1]), true);
  assert.equal(contains(L, [5, 4, 1]), false); // the notch of the L
  assert.equal(contains(L, [0, 2, 1]), false); // on a wall
  assert.equal(contains(L, [1, 1, 2.5]), false); // at the ceiling
  const form = defaultRoomForm(["brickwork"]);
  form.dimensions_m = [5, "-1", "x"];
  const { errors } = roomFromForm(form);
  assert.deepEqual(Object.keys(errors).sort(), ["dimensions_m.1", "dimensions_m.2"]);
  form.dimensions_m = [5, 4, 2.5];
  form.materials.floor = { absorption: 1.5 };
  assert.deepEqual(Object.keys(roomFromForm(form).errors), ["materials.floor"]);
  assert.deepEqual(Object.keys(positionErrors({ type: "shoebox", dimensions_m: [5, 4, 2.5] }, { a: [1, 1, 1], b: [6, 1, 1] })), ["b"]);
  assert.match(parseCorners("0,0\n1 x").problem, /corner 2/);
});

test("devices joining one by one get distinct spots inside the room, kept ones stay", () => {
  const L = { type: "polygon", corners_m: [[0, 0], [6, 0], [6, 3], [3, 3], [3, 6], [0, 6]], height_m: 2.5, walls: "brickwork", floor: "brickwork", ceiling: "brickwork" };
  let positions = {};
  for (const id of ["a", "b", "c", "d"]) {
    positions = defaultPositions(L, Object.keys(positions).concat(id), positions);
  }
  const points = Object.values(positions);
  assert.equal(points.length, 4);
  for (const p of points) assert.equal(contains(L, p), true, String(p));
  for (let i = 0; i < 4; i++) for (let j = i + 1; j < 4; j++) {
    assert.ok(Math.hypot(points[i][0] - points[j][0], points[i][1] - points[j][1]) >= 1.5, `${points[i]} vs ${points[j]}`);
  }
  assert.deepEqual(defaultPositions(L, ["a", "e"], { a: [1, 1, 1] }).a, [1, 1, 1]);
});

test("plots: series over bands are drawn side by side with distinct markers, so equal values never hide one another", () => {
  assert.deepEqual(categoryOffsets(1, 42), [0]);
  assert.deepEqual(categoryOffsets(2, 42), [-3, 3]); // two microphones with identical values: 6 px apart
  const five = categoryOffsets(5, 20); // many series in a narrow slot: spread over 40 % of it, centred
  assert.ok(Math.abs(five[4] - five[0] - 8) < 1e-12 && Math.abs(five[2]) < 1e-12);
  assert.equal(new Set(MARKERS).size, MARKERS.length);
  const paths = MARKERS.map((shape) => markerPath(shape, 10, 20, 3));
  assert.equal(new Set(paths).size, MARKERS.length);
  assert.equal(markerPath("square", 10, 20, 3), "M7,17L13,17L13,23L7,23Z");
  assert.equal(markerPath("circle", 10, 20, 3), "M7,20a3,3 0 1,0 6,0a3,3 0 1,0 -6,0Z");
});
