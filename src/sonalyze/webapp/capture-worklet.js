// AudioWorkletProcessor "sonalyze-capture": the first input channel, block by block, tagged with the
// render frame it belongs to; batches go to the page, with the peak for the level meter.
import { BlockBatcher } from "./frames.js";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.batcher = new BlockBatcher(2048);
    this.port.onmessage = (e) => {
      if (e.data === "flush") {
        const batch = this.batcher.flush();
        this.port.postMessage({ type: "flushed", batch, frame: currentFrame });
      }
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    // No input connected yet (or the track ended): nothing to record for this block, it stays a gap.
    if (channel) {
      const batch = this.batcher.push(currentFrame, channel);
      if (batch) this.port.postMessage({ type: "batch", batch }, [batch.samples.buffer]);
    }
    return true;
  }
}

registerProcessor("sonalyze-capture", CaptureProcessor);
