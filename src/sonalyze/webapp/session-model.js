// The measurement session as this device sees it (docs/lobby.md, "Session steps"). Pure: what to show,
// and what this device still has to do, from the session's state alone — so a phone that reconnected or
// reloaded finds its place again from measurement.session_status.

export const FINAL_STEPS = new Set(["completed", "failed", "cancelled"]);

export const STEP_LABELS = {
  created: "Session created",
  preparing: "Getting ready: devices arm, the speaker loads the sweep",
  recording_starting: "Microphones start recording",
  playing: "The sweep is playing — quiet please",
  uploading: "Microphones upload their recordings",
  analyzing: "Analysing the recordings",
  speaker_done: "This speaker is done; next speaker",
  completed: "Measurement complete",
  failed: "Measurement failed",
  cancelled: "Measurement cancelled",
};

/** What each instruction pushed by the lobby implies about the session's step. */
export const INSTRUCTION_STEP = {
  "measurement.prepare_speaker": "preparing",
  "measurement.start_recording": "recording_starting",
  "measurement.play": "playing",
  "measurement.stop_recording": "uploading",
};

/** The upload name the lobby gives microphone `micIndex` for speaker `speakerIndex` (docs/lobby.md). */
export const uploadName = (speakerIndex, micIndex) => `speaker-${speakerIndex}_mic-${micIndex}.wav`;
export const uploadPath = (jobId, name) => `/v1/jobs/${jobId}/uploads/${name}`;

/** A participant's label: its name (C2), else "Phone N" by its place in the lobby's participants (join
 *  order, docs/lobby.md); a device id is not readable. Only shown: the name sent to the lobby is unchanged. */
export function nameOf(lobby, deviceId) {
  if (!deviceId) return "nobody";
  const index = lobby?.participants?.findIndex((x) => x.device_id === deviceId) ?? -1;
  if (index < 0) return "a phone that left";
  return lobby.participants[index].name || `Phone ${index + 1}`;
}

/**
 * What this device has to do now. `local` says what it already did or is doing for this speaker turn:
 * {armed, turnKey: "session:index", ready, sweepLoaded, recording, played, playing, uploaded, busy}.
 * Returns a list of duty names: "arm", "ready", "load_sweep", "audio_ready", "start_recording",
 * "play", "upload", "lost_recording", "start_speaker".
 */
export function duties(session, me, local, isHost) {
  if (!session || FINAL_STEPS.has(session.step)) return [];
  const out = [];
  const isSpeaker = session.speaker_device_id === me;
  const micIndex = session.microphones.indexOf(me);
  const inTurn = isSpeaker || micIndex >= 0;
  const waiting = (session.waiting_for ?? []).includes(me);
  const step = session.step;
  if (isHost && step === "created") out.push("start_speaker");
  if (isHost && step === "speaker_done" && session.speaker_index + 1 < session.speakers.length) out.push("start_speaker");
  if (!inTurn) return out;
  if (step === "preparing" && waiting) {
    if (!local.armed) return [...out, "arm"];
    if (!local.ready) out.push("ready");
    if (isSpeaker && !local.sweepLoaded) out.push("load_sweep");
    if (isSpeaker && local.sweepLoaded) out.push("audio_ready");
  }
  if (step === "recording_starting" && micIndex >= 0 && waiting) {
    if (!local.armed) return [...out, "arm"];
    if (!local.recording) out.push("start_recording");
    else out.push("recording_started");
  }
  if (step === "playing" && isSpeaker && !local.played && !local.playing) out.push(local.armed && local.sweepLoaded ? "play" : "arm");
  if (step === "uploading" && micIndex >= 0 && waiting && !local.uploaded) out.push(local.recording ? "upload" : "lost_recording");
  return out;
}

/** What a device of this turn the session is not waiting for has done or is doing, per step: a microphone
 *  records from "recording_starting" until it uploads, the speaker has played once "playing" no longer waits for it. */
const MICROPHONE_STATE = { preparing: "ready", recording_starting: "recording", playing: "recording", uploading: "uploaded", analyzing: "uploaded", speaker_done: "uploaded" };
const SPEAKER_STATE = { preparing: "ready", recording_starting: "ready", playing: "played", uploading: "played", analyzing: "played", speaker_done: "played" };

/** What the session panel shows: the step, who is the speaker, and each device's state in this turn. */
export function sessionView(session, lobby, me) {
  if (!session) return null;
  const waiting = new Set(session.waiting_for ?? []);
  const final = FINAL_STEPS.has(session.step);
  const role = (id) => (id === session.speaker_device_id ? "speaker (now)" : session.speakers.includes(id) ? "speaker" : "microphone");
  const state = (id) => {
    const speaking = id === session.speaker_device_id;
    if (final || (!speaking && !session.microphones.includes(id))) return "";
    if (waiting.has(id)) return speaking && session.step === "playing" ? "playing the sweep" : "waiting for this device";
    return (speaking ? SPEAKER_STATE : MICROPHONE_STATE)[session.step] ?? "";
  };
  const devices = [...new Set([...session.speakers, ...session.microphones])].map((id) => ({
    device_id: id, name: nameOf(lobby, id), me: id === me, role: role(id), state: state(id),
  }));
  const failure = session.failure ? `${session.failure.code}: ${session.failure.reason ?? session.failure.message ?? ""}`.trim() : null;
  return {
    step: session.step,
    label: STEP_LABELS[session.step] ?? session.step,
    final,
    turn: session.speaker_index == null ? "" : `speaker ${session.speaker_index + 1} of ${session.speakers.length}: ${nameOf(lobby, session.speaker_device_id)}`,
    devices,
    failure,
    deadlineS: session.deadline_s ?? null,
  };
}

/** Reconnect back-off: 0.5 s doubling to 15 s, with ±30 % jitter (random in [0, 1) given). */
export function backoffMs(attempt, random) {
  const base = Math.min(15000, 500 * 2 ** Math.min(attempt, 10));
  return Math.round(base * (0.7 + 0.6 * random));
}
