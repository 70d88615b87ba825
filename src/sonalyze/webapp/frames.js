// Raw capture indexed by the audio render frame (AudioWorkletGlobalScope.currentFrame): a block that
// arrives late or never is a gap of zeros at its place, so sample n of the recording is always render
// frame start + n, whatever the main thread was doing. Pure: used by capture-worklet.js, audio.js and (through
// wav.js) upload-worker.js.

export const BLOCK_FRAMES = 128;

/** Inside the worklet: collects render blocks into batches of contiguous frames (fewer messages). */
export class BlockBatcher {
  constructor(batchFrames = 4096) {
    this.batchFrames = batchFrames;
    this.startFrame = null;
    this.chunks = [];
    this.length = 0;
  }

  /** Add one block that starts at `frame`; returns a finished batch `{frame, samples}` or null. */
  push(frame, block) {
    let finished = null;
    if (this.startFrame !== null && frame !== this.startFrame + this.length) finished = this.flush();
    if (this.startFrame === null) this.startFrame = frame;
    this.chunks.push(Float32Array.from(block));
    this.length += block.length;
    if (this.length >= this.batchFrames) return finished ?? this.flush();
    return finished;
  }

  flush() {
    if (this.startFrame === null) return null;
    const samples = new Float32Array(this.length);
    let at = 0;
    for (const chunk of this.chunks) { samples.set(chunk, at); at += chunk.length; }
    const batch = { frame: this.startFrame, samples, ...sampleStats(samples) };
    this.startFrame = null; this.chunks = []; this.length = 0;
    return batch;
  }
}

/** The peak magnitude and how many samples are at full scale (≥ 0.999, clipped): computed in the worklet,
 *  so the main thread does no per-sample work while recording. */
export function sampleStats(samples) {
  let peak = 0, clipped = 0;
  for (let i = 0; i < samples.length; i++) {
    const a = Math.abs(samples[i]);
    if (a > peak) peak = a;
    if (a >= 0.999) clipped++;
  }
  return { peak, clipped };
}

/** On the main thread: collects the worklet's batches of one recording from `startFrame`; `stop(endFrame)`
 *  ends it. Nothing per sample: the samples are assembled by `assemble`, in upload-worker.js. */
export class FrameAssembler {
  constructor(startFrame) {
    this.startFrame = startFrame;
    this.endFrame = null;
    this.batches = [];
    this.peak = 0;
    this.clippedSamples = 0;
  }

  /** `stats`: the batch's `sampleStats` (the worklet sends them along). */
  add(frame, samples, stats = sampleStats(samples)) {
    this.batches.push({ frame, samples });
    this.peak = Math.max(this.peak, stats.peak);
    this.clippedSamples += stats.clipped;
  }

  stop(endFrame) { this.endFrame = endFrame; }

  /** The recording as a structured-clonable message `{startFrame, endFrame, batches}` (`endFrame`: the stop,
   *  or the last sample received) for `assemble`. */
  get recording() {
    const lastFrame = this.batches.reduce((m, b) => Math.max(m, b.frame + b.samples.length), this.startFrame);
    return { startFrame: this.startFrame, endFrame: this.endFrame ?? lastFrame, batches: this.batches };
  }

  /** The batches' sample buffers, each once: to transfer with `recording` (postMessage), not copy. */
  get buffers() { return [...new Set(this.batches.map((b) => b.samples.buffer))]; }
}

/** The frames a recording spans: from `startFrame` to `endFrame`. */
export const recordingFrames = ({ startFrame, endFrame }) => Math.max(0, endFrame - startFrame);

/** Each batch's part inside the recording: `[batch, from, to]` in render frames (the worklet's batches do not overlap). */
function* partsInside({ startFrame, endFrame, batches }) {
  for (const batch of batches) {
    const from = Math.max(batch.frame, startFrame), to = Math.min(batch.frame + batch.samples.length, endFrame);
    if (to > from) yield [batch, from, to];
  }
}

/** Frames of the recording no batch delivered (zeros in `assemble`), from the batches' spans alone. */
export function gapFrames(recording) {
  let covered = 0;
  for (const [, from, to] of partsInside(recording)) covered += to - from;
  return recordingFrames(recording) - covered;
}

/** The recording's samples: each batch at `frame − startFrame`, gaps zeros, up to `endFrame`. */
export function assemble(recording) {
  const out = new Float32Array(recordingFrames(recording));
  for (const [{ frame, samples }, from, to] of partsInside(recording)) out.set(samples.subarray(from - frame, to - frame), from - recording.startFrame);
  return out;
}
