// A dedicated worker that POSTs what the page hands it (a recording's WAV, transferred, not copied) and
// answers {id, status, statusText, text} or {id, error}: the copy fetch makes of a body of megabytes happens
// on this thread, not the page's (wire.js postFromWorker; bench/webapp.md, long animation frames).
self.onmessage = async ({ data: { id, url, body, headers } }) => {
  try {
    const response = await fetch(url, { method: "POST", body, headers });
    self.postMessage({ id, status: response.status, statusText: response.statusText, text: await response.text() });
  } catch (error) {
    self.postMessage({ id, error: `the upload did not reach the server: ${error?.message ?? error}` });
  }
};
