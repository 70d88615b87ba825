// The phone's audio: one AudioContext (resumed by the Arm tap), the raw microphone through an
// AudioWorklet (never MediaRecorder), the sweep played at an exact context time, and the capture facts
// sent with each upload (contract C3).
import { FrameAssembler, gapFrames, recordingFrames } from "./frames.js";

const PROCESSING = ["echoCancellation", "noiseSuppression", "autoGainControl"];
/** Waited after the sweep file's end before saying it was played (output buffers the browser does not report). */
const TAIL_MARGIN_S = 0.5;

/** Why the microphone could not be opened, in words a person can act on. */
export function microphoneProblem(error) {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    return "The microphone needs a secure page. Open the https:// address the server printed (or localhost), then tap Arm again.";
  }
  switch (error?.name) {
    case "NotAllowedError": case "SecurityError":
      return "Microphone access was denied. Allow the microphone for this site (the lock or settings icon next to the address), then tap Arm again.";
    case "NotFoundError": case "OverconstrainedError":
      return "No microphone was found on this device.";
    case "NotReadableError": case "AbortError":
      return "The microphone is busy in another app or could not start. Close other apps using it, then tap Arm again.";
    default:
      return `The microphone could not be opened: ${error?.message ?? error}`;
  }
}

export class AudioEngine {
  constructor() {
    this.ctx = null;
    this.stream = null;
    this.track = null;
    this.node = null;
    this.assembler = null;
    this.level = { peak: 0, clipAt: -Infinity };
    this.sweep = null;
    this.wakeLock = null;
    this.onLevel = () => {};
    this.pendingFlush = null;
  }

  get armed() { return this.ctx !== null && this.ctx.state === "running"; }

  /** The Arm tap: resume audio, open the microphone (unless playing only), wake lock. Returns warnings. */
  async arm({ microphone }) {
    const warnings = [];
    if (navigator.audioSession) {
      // iOS: the playback session ignores the silent switch and uses the loudspeaker, not the earpiece.
      try { navigator.audioSession.type = microphone ? "play-and-record" : "playback"; } catch { /* not settable here */ }
    }
    // "playback": the largest output buffers. Nothing here needs low latency (the recording window is
    // seconds long, the sweep is scheduled on the context's clock); small buffers drop out under load,
    // and a dropout in the sweep is refused by the analysis as an impulsive noise.
    this.ctx ??= new AudioContext({ latencyHint: "playback" });
    await this.ctx.resume();
    if (microphone && !this.stream) {
      if (!navigator.mediaDevices?.getUserMedia) throw new Error(microphoneProblem(null));
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
        });
      } catch (error) { throw new Error(microphoneProblem(error)); }
      this.stream = stream;
      this.track = stream.getAudioTracks()[0];
      const settings = this.track.getSettings();
      for (const key of PROCESSING) {
        if (settings[key] !== false) {
          warnings.push(`This browser did not turn off ${key} (it reports ${settings[key] === undefined ? "nothing" : settings[key]}): the recording may be processed and the results less reliable.`);
        }
      }
      await this.ctx.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
      const source = this.ctx.createMediaStreamSource(stream);
      this.node = new AudioWorkletNode(this.ctx, "sonalyze-capture", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1, channelCountMode: "explicit" });
      this.node.port.onmessage = (e) => this.receive(e.data);
      source.connect(this.node);
      const mute = this.ctx.createGain();
      mute.gain.value = 0;
      this.node.connect(mute).connect(this.ctx.destination); // pulled by the graph, heard by nobody
    }
    await this.lockScreen();
    return warnings;
  }

  async lockScreen() {
    if (!navigator.wakeLock || this.wakeLock) return;
    try {
      this.wakeLock = await navigator.wakeLock.request("screen");
      this.wakeLock.addEventListener("release", () => { this.wakeLock = null; });
    } catch { /* refused (e.g. low battery): the session still runs while the screen stays on */ }
  }

  receive(message) {
    const batch = message.batch;
    if (batch) {
      this.level.peak = batch.peak;
      if (batch.clipped > 0) this.level.clipAt = performance.now();
      this.onLevel(this.level);
      if (this.assembler) this.assembler.add(batch.frame, batch.samples, batch);
    }
    if (message.type === "flushed" && this.pendingFlush) { this.pendingFlush(message.frame); this.pendingFlush = null; }
  }

  startRecording() {
    if (!this.node) throw new Error("the microphone is not armed");
    this.assembler = new FrameAssembler(Math.round(this.ctx.currentTime * this.ctx.sampleRate));
  }

  get recording() { return this.assembler !== null; }

  /** Stops at the worklet's current frame. `recording`: the batches at the context's actual rate, for
   *  upload-worker.js to assemble and encode (wav.js wavOfRecording), with the sample `buffers` to transfer:
   *  no per-sample work here, in the worklet's "flushed" message task (bench/webapp.md). */
  async stopRecording() {
    const assembler = this.assembler;
    const endFrame = await new Promise((resolve) => { this.pendingFlush = resolve; this.node.port.postMessage("flush"); });
    assembler.stop(endFrame);
    this.assembler = null;
    const recording = { sampleRateHz: this.ctx.sampleRate, ...assembler.recording };
    return { recording, buffers: assembler.buffers, seconds: recordingFrames(recording) / this.ctx.sampleRate,
             gapFrames: gapFrames(recording), clippedSamples: assembler.clippedSamples, peak: assembler.peak };
  }

  discardRecording() { this.assembler = null; }

  async loadSweep(response) {
    const bytes = await response.arrayBuffer();
    this.sweep = await this.ctx.decodeAudioData(bytes);
    return this.sweep;
  }

  /** Plays the sweep `leadS` seconds from now; `onTick(secondsLeft)` counts down; resolves when the sound
   *  has left the loudspeaker: the buffer's end plus the output path's latency (Bluetooth, a sound server)
   *  and `TAIL_MARGIN_S`, so the microphones are not told to stop while the sweep's end is still on its way. */
  play(leadS, onTick) {
    const source = this.ctx.createBufferSource();
    source.buffer = this.sweep;
    source.connect(this.ctx.destination);
    const when = this.ctx.currentTime + leadS;
    source.start(when);
    return new Promise((resolve, reject) => {
      const tick = setInterval(() => onTick(when - this.ctx.currentTime), 200);
      const guard = setTimeout(() => { clearInterval(tick); reject(new Error("the audio output did not advance (is the audio device working?)")); },
        (leadS + this.sweep.duration + 10) * 1000);
      source.onended = () => {
        clearInterval(tick); clearTimeout(guard);
        const latencyS = (this.ctx.outputLatency || 0) + (this.ctx.baseLatency || 0);
        setTimeout(() => resolve({ when }), (latencyS + TAIL_MARGIN_S) * 1000);
      };
    });
  }

  /** The facts about the capture the backend judges the recording with (C3 X-Capture-Facts). */
  captureFacts() {
    const s = this.track?.getSettings() ?? {};
    return {
      sample_rate_hz: this.ctx.sampleRate, context_sample_rate_hz: this.ctx.sampleRate,
      track_sample_rate_hz: s.sampleRate ?? null,
      echo_cancellation: s.echoCancellation ?? null, noise_suppression: s.noiseSuppression ?? null, auto_gain_control: s.autoGainControl ?? null,
      base_latency_s: this.ctx.baseLatency ?? null, output_latency_s: this.ctx.outputLatency ?? null,
      user_agent: navigator.userAgent.slice(0, 300), channel_count: s.channelCount ?? null, device_label: (this.track?.label ?? "").slice(0, 200),
    };
  }
}

/** base64url of a JSON object (the X-Capture-Facts header). */
export function base64UrlJson(value) {
  const bytes = new TextEncoder().encode(JSON.stringify(value));
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
