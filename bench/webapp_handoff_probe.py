"""Where the end of a recording spends the page's main thread (bench/webapp.md, long animation frames).

    .venv/bin/python bench/webapp_handoff_probe.py [--port 21000] [--runs 12] [--seconds 9]

Serves ``src/sonalyze/webapp/`` and a probe page on 127.0.0.1 (a secure context), opens it in Debian's
headless Chromium with the fake microphone (tests/webapp/fake_capture.py's file), and per run: arms
``audio.js``'s AudioEngine, records ``--seconds``, times ``stopRecording`` (the flush) and the hand-off of
the recording to the upload, alternating the ways: ``blob`` (the WAV built on the page, ``wav.js``
``wavOfRecording``, then ``fetch`` of ``new Blob([wav])``, as the app did first), ``buffer`` (the WAV built on
the page, ``fetch`` given the ArrayBuffer) and ``worker`` (the app's way: ``wire.js`` ``postFromWorker``, the
batches transferred to ``upload-worker.js``, which builds the WAV and POSTs it). Prints one line per run with
the long animation frames (> 50 ms) and long tasks seen.
The POSTs go to this server, which answers 404: only the page's side is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import json
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.webapp.conftest import CHROMIUM_ARGS, fake_microphone_args  # noqa: E402 - the suite's flags
from tests.webapp.fake_capture import write_capture_wav  # noqa: E402

VARIANTS = ("blob", "buffer", "worker")
PAGE = """<!doctype html><html><body><script type="module">
import { AudioEngine } from "/app/audio.js";
import { wavOfRecording } from "/app/wav.js";
import { Connection } from "/app/wire.js";
const conn = new Connection("ws://127.0.0.1:9/unused"); // never started: only its upload worker is used
const frames = [], tasks = [];
new PerformanceObserver((l) => { for (const e of l.getEntries()) frames.push({ms: Math.round(e.duration),
  scripts: e.scripts.map((s) => `${s.invoker} ${s.sourceURL.split("/").pop()}:${s.sourceCharPosition} ${Math.round(s.duration)} ms`)}); })
  .observe({type: "long-animation-frame", buffered: true});
new PerformanceObserver((l) => { for (const e of l.getEntries()) tasks.push(Math.round(e.duration)); }).observe({type: "longtask", buffered: true});
window.run = async (variant, seconds) => {
  const audio = new AudioEngine();
  await audio.arm({ microphone: true });
  conn.startUploader(); // as the app's Arm tap does
  await new Promise((r) => setTimeout(r, 500));
  audio.startRecording();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  frames.length = 0; tasks.length = 0;
  const t0 = performance.now();
  const rec = await audio.stopRecording();
  const t1 = performance.now();
  if (variant === "blob") fetch("/upload", { method: "POST", body: new Blob([wavOfRecording(rec.recording)], { type: "audio/wav" }) }).catch(() => {});
  else if (variant === "buffer") fetch("/upload", { method: "POST", body: wavOfRecording(rec.recording) }).catch(() => {});
  else conn.postFromWorker("/upload", { recording: rec.recording }, rec.buffers).catch(() => {});
  const t2 = performance.now();
  await new Promise((r) => setTimeout(r, 1000));
  return { variant, stop_ms: Math.round(t1 - t0), handoff_ms: Math.round(t2 - t1), long_frames: frames.filter((f) => f.ms > 50), long_tasks: tasks };
};
</script></body></html>"""


class Handler(http.server.SimpleHTTPRequestHandler):
    def translate_path(self, path: str) -> str:
        path = path.split("?")[0]
        if path.startswith("/app/"):
            return str(ROOT / "src" / "sonalyze" / "webapp" / path.removeprefix("/app/"))
        return str(Path(self.directory) / path.lstrip("/"))

    def log_message(self, *args: object) -> None:
        pass


Handler.extensions_map[".js"] = "text/javascript"


async def probe(port: int, runs: int, seconds: float, folder: Path) -> None:
    wav = folder / "room.wav"
    write_capture_wav(wav)
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(folder / "profile"), executable_path=shutil.which("chromium"), headless=True,
            args=[*CHROMIUM_ARGS, *fake_microphone_args(wav)])
        page = context.pages[0]
        for k in range(runs):
            await page.goto(f"http://127.0.0.1:{port}/probe.html")
            await page.wait_for_function("typeof window.run === 'function'")
            print(json.dumps(await page.evaluate("([v, s]) => window.run(v, s)", [VARIANTS[k % len(VARIANTS)], seconds])))
        await context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=21000)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=9.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "probe.html").write_text(PAGE)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), functools.partial(Handler, directory=folder))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            asyncio.run(probe(args.port, args.runs, args.seconds, Path(folder)))
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
