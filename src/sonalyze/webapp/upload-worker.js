// A dedicated worker that builds a recording's WAV and POSTs it (wire.js postFromWorker): the page hands it
// the worklet's sample batches (their buffers transferred, not copied) and answers nothing per sample, so
// neither the assembly, the WAV encoding nor the copy fetch makes of a body of megabytes happens on the
// page's thread (bench/webapp.md, long animation frames). Answers {id, status, statusText, text} or {id, error}.
import { wavOfRecording } from "./wav.js";

self.onmessage = async ({ data: { id, url, recording, headers } }) => {
  let body;
  try {
    body = wavOfRecording(recording);
  } catch (error) {
    self.postMessage({ id, error: `the recording could not be encoded: ${error?.message ?? error}` });
    return;
  }
  try {
    const response = await fetch(url, { method: "POST", body, headers });
    self.postMessage({ id, status: response.status, statusText: response.statusText, text: await response.text() });
  } catch (error) {
    self.postMessage({ id, error: `the upload did not reach the server: ${error?.message ?? error}` });
  }
};
