"""The upload's hand-off in Chromium: ``wire.js`` ``postFromWorker`` gives ``upload-worker.js`` a recording's
batches (their buffers transferred), and the worker POSTs the WAV it builds from them, byte for byte the WAV of
the same samples built here from the RIFF spec, with the page's headers and the device credential; a refusal
comes back with its status and body, an unreachable server and a worker that cannot start as errors (the
next upload starts a new worker).

A stdlib HTTP server on a free loopback port serves ``src/sonalyze/webapp/`` and a probe page, and keeps
what each POST brought."""

from __future__ import annotations

import functools
import http.server
import json
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

WEBAPP = Path(__file__).resolve().parents[2] / "src" / "sonalyze" / "webapp"
SAMPLE_RATE_HZ = 44100
PAGE = """<!doctype html><html><body><script type="module">
import { Connection } from "/app/wire.js";
import { FrameAssembler } from "/app/frames.js";
localStorage.setItem("sonalyze.device", JSON.stringify({ device_id: "d1", device_token: "token-1" }));
const conn = new Connection("ws://127.0.0.1:9/unused"); // never started: only its HTTP side is used
window.startUploader = () => { conn.startUploader(); }; // as the Arm tap does
window.uploaderDropped = () => conn.uploader === null;
// The unit tests' short recording (unit.test.mjs knownRecordings): a batch from before the start, a lost batch.
window.upload = async (path) => {
  const assembler = new FrameAssembler(1100);
  assembler.add(1000, Float32Array.from({ length: 256 }, (_, i) => (i - 128) / 256));
  assembler.add(1384, Float32Array.from({ length: 128 }, (_, i) => -i / 128));
  assembler.stop(1600);
  try {
    const answer = await conn.postFromWorker(path, { recording: { sampleRateHz: %d, ...assembler.recording } }, assembler.buffers,
      { "Content-Type": "audio/wav", "X-Capture-Facts": "e30" });
    return { ...answer, detached: assembler.batches.every((b) => b.samples.length === 0) };
  } catch (error) { return { error: error.message }; }
};
</script></body></html>""" % SAMPLE_RATE_HZ


def expected_wav() -> bytes:
    """The probe page's recording as 32-bit float WAV, written here from the spec (wav.js cites it)."""
    frames = np.arange(1100, 1600)
    samples = np.zeros(frames.size, dtype="<f4")
    first, second = (frames < 1256), (frames >= 1384) & (frames < 1512)
    samples[first] = (frames[first] - 1000 - 128) / 256
    samples[second] = -(frames[second] - 1384).astype(float) / 128  # -0.0 first, as in JavaScript
    data = samples.tobytes()
    fmt = struct.pack("<HHIIHHH", 3, 1, SAMPLE_RATE_HZ, SAMPLE_RATE_HZ * 4, 4, 32, 0)
    chunks = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<II", 4, frames.size) + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(chunks)) + chunks


class Handler(http.server.SimpleHTTPRequestHandler):
    posts: list[dict] = []
    worker_missing = False  # upload-worker.js answers 404: a worker that cannot start

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.worker_missing and self.path.endswith("/upload-worker.js"):
            self.send_error(404)
        else:
            super().do_GET()

    def translate_path(self, path: str) -> str:
        path = path.split("?")[0]
        if path.startswith("/app/"):
            return str(WEBAPP / path.removeprefix("/app/"))
        return str(Path(self.directory) / path.lstrip("/"))

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.posts.append({"path": self.path, "headers": dict(self.headers), "body": body})
        refused = "refuse" in self.path
        answer = json.dumps({"error": {"code": "too_late", "message": "the job is over"}} if refused else {"ok": True}).encode()
        self.send_response(409 if refused else 201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


Handler.extensions_map[".js"] = "text/javascript"


@pytest.fixture
def server(tmp_path) -> Iterator[str]:
    (tmp_path / "probe.html").write_text(PAGE)
    Handler.posts, Handler.worker_missing = [], False
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


async def test_the_worker_posts_the_wav_of_the_transferred_batches(launch_browser, server):
    page = (await launch_browser()).pages[0]
    await page.goto(server + "/probe.html")
    await page.wait_for_function("typeof window.upload === 'function'")

    Handler.worker_missing = True  # started at the Arm tap, it cannot load: dropped, and the upload says why
    await page.evaluate("window.startUploader()")
    await page.wait_for_function("window.uploaderDropped()")
    assert await page.evaluate("window.upload('/v1/jobs/j1/uploads/speaker-0_mic-0.wav')") == {"error": "the upload worker failed: it could not start"}
    Handler.worker_missing = False
    assert not Handler.posts

    answer = await page.evaluate("window.upload('/v1/jobs/j1/uploads/speaker-0_mic-0.wav')")  # a new worker
    assert answer == {"id": answer["id"], "status": 201, "statusText": "Created", "text": '{"ok": true}', "detached": True}
    (post,) = Handler.posts
    assert post["path"] == "/v1/jobs/j1/uploads/speaker-0_mic-0.wav"
    assert post["body"] == expected_wav()
    headers = {k.lower(): v for k, v in post["headers"].items()}
    assert (headers["content-type"], headers["x-capture-facts"], headers["x-device-token"]) == ("audio/wav", "e30", "token-1")

    refused = await page.evaluate("window.upload('/v1/jobs/j1/uploads/refuse.wav')")
    assert (refused["status"], json.loads(refused["text"])["error"]["code"]) == (409, "too_late")

    unreachable = await page.evaluate("window.upload('http://127.0.0.1:9/upload.wav')")
    assert unreachable["error"].startswith("the upload did not reach the server"), unreachable
