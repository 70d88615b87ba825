// Raw capture indexed by the audio render frame (AudioWorkletGlobalScope.currentFrame): a block that
// arrives late or never is a gap of zeros at its place, so sample n of the recording is always render
// frame start + n, whatever the main thread was doing. Pure: used by capture-worklet.js and by app code.

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

/** On the main thread: places batches at `frame − startFrame`; gaps are zeros; ends at `endFrame`. */
export class FrameAssembler {
  constructor(startFrame) {
    this.startFrame = startFrame;
    this.endFrame = null;
    this.batches = [];
    this.gapFrames = 0;
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

  /** The recording from startFrame to endFrame (or to the last sample received). */
  toSamples() {
    const lastFrame = this.batches.reduce((m, b) => Math.max(m, b.frame + b.samples.length), this.startFrame);
    const end = this.endFrame ?? lastFrame;
    const out = new Float32Array(Math.max(0, end - this.startFrame));
    let covered = 0;
    for (const { frame, samples } of this.batches) {
      const from = Math.max(frame, this.startFrame), to = Math.min(frame + samples.length, end);
      if (to <= from) continue;
      out.set(samples.subarray(from - frame, to - frame), from - this.startFrame);
      covered += to - from;
    }
    this.gapFrames = out.length - covered;
    return out;
  }
}
