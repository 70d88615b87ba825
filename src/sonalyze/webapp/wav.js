// WAV encoding of a mono recording (RIFF/WAVE, Microsoft "Multimedia Programming Interface and Data
// Specifications 1.0", 1991): IEEE float 32-bit (format tag 3, with the `fact` chunk the spec asks of
// non-PCM data), so the samples the AudioWorklet delivered reach the analysis unchanged.
import { assemble } from "./frames.js";

/** The WAV of a stopped recording, `{sampleRateHz, startFrame, endFrame, batches}` (audio.js
 *  stopRecording): built in upload-worker.js, off the page's thread. */
export function wavOfRecording(recording) {
  return encodeWavFloat32(assemble(recording), recording.sampleRateHz);
}

/** @param {Float32Array} samples  @param {number} sampleRateHz  @returns {ArrayBuffer} */
export function encodeWavFloat32(samples, sampleRateHz) {
  if (!Number.isInteger(sampleRateHz) || sampleRateHz <= 0) throw new RangeError(`bad sample rate ${sampleRateHz}`);
  const dataBytes = samples.length * 4;
  const headerBytes = 12 + 26 + 12 + 8; // RIFF header, fmt (18-byte body), fact, data header
  const buffer = new ArrayBuffer(headerBytes + dataBytes);
  const view = new DataView(buffer);
  let at = 0;
  const text = (s) => { for (const ch of s) view.setUint8(at++, ch.charCodeAt(0)); };
  const u32 = (v) => { view.setUint32(at, v, true); at += 4; };
  const u16 = (v) => { view.setUint16(at, v, true); at += 2; };
  text("RIFF"); u32(buffer.byteLength - 8); text("WAVE");
  text("fmt "); u32(18); u16(3); u16(1); u32(sampleRateHz); u32(sampleRateHz * 4); u16(4); u16(32); u16(0);
  text("fact"); u32(4); u32(samples.length);
  text("data"); u32(dataBytes);
  if (LITTLE_ENDIAN) {
    // One native copy (the samples are already little-endian float32): a loop of setFloat32 over a 10 s
    // recording was a 50–100 ms task on a loaded phone (issue 13: no long tasks while recording).
    new Uint8Array(buffer, at).set(new Uint8Array(samples.buffer, samples.byteOffset, dataBytes));
  } else {
    for (let i = 0; i < samples.length; i++, at += 4) view.setFloat32(at, samples[i], true); // 58-byte header: not 4-aligned
  }
  return buffer;
}

const LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

/** The sample rate, channel count and sample count of a WAV this module wrote (for tests and checks). */
export function readWavHeader(buffer) {
  const view = new DataView(buffer);
  const tag = (at) => String.fromCharCode(...new Uint8Array(buffer, at, 4));
  if (tag(0) !== "RIFF" || tag(8) !== "WAVE") throw new Error("not a RIFF/WAVE file");
  return { formatTag: view.getUint16(20, true), channels: view.getUint16(22, true), sampleRateHz: view.getUint32(24, true),
           bitsPerSample: view.getUint16(34, true), frames: view.getUint32(46, true) };
}
