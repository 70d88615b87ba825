"""The web app's first load: bytes over the wire in Chromium, with gzip and with compression off.

    .venv/bin/python bench/webapp_bench.py [--base-port 9600] [--out bench/webapp_results.jsonl]

Starts ``sonalyze serve`` (all five services, fresh data folder), then for each mode opens the app in
Debian's headless Chromium (the test suite's flags, a fresh profile, so an empty cache) and sums
``encodedDataLength`` of CDP ``Network.loadingFinished`` over every HTTP response of the page until the
network is idle: response headers and bodies as received (the WebSocket's frames are not counted).
"Compression off" is the same load with the browser asking ``Accept-Encoding: identity``. A reload in the
same profile then shows what a repeat visit costs (revalidation, ``304`` without bodies). Target: first
load ≤ 250 KB.

Then one whole session through the UI with one speaker and three microphones (Chromium's fake microphone
fed tests/webapp/fake_capture.py's file), measuring (targets of issue 13):
- from the last microphone's upload (its ``POST`` answered: the app's "Uploaded …" status line) to the results
  table on every screen (a MutationObserver in each page): ``Date.now()`` of one machine, ≤ 1.5 s;
- long tasks (``PerformanceObserver`` ``longtask``, > 50 ms) on each page while it records or plays
  (from "Recording" / the countdown to the upload / "Sweep played"): none, for 60 fps.
``--session-runs N`` repeats the session in the same lobby. Where the time goes: the services' log says
when each upload was stored and each analysis finished; long animation frames (Chromium's
``long-animation-frame`` entries, from "Recording" / the countdown to the upload's answer: the end of a
recording's work included) name the scripts that ran in each long frame; Chromium's trace of each page
(:class:`MainThreadTrace`) gives each long task's CPU time next to its wall time, which tells the app's work
from a page waiting for a core on a loaded machine, and the task of the worklet's "flushed" message (the end
of a recording up to its hand-off to ``upload-worker.js``) on each microphone, long or not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.webapp.conftest import CHROMIUM_ARGS  # noqa: E402 - the one list of flags

TARGET_BYTES = 250 * 1024


def start_backend(base_port: int, data_dir: str) -> subprocess.Popen:
    log_path = Path(data_dir) / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sonalyze", "serve", "--host", "127.0.0.1", "--base-port", str(base_port), "--data-dir", data_dir],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 120
    while "Press Ctrl-C" not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(log_path.read_text())
        time.sleep(0.1)
    return process


async def load(url: str, profile: str, identity: bool) -> dict:
    """First load and one reload in a fresh profile: per response URL, status, encoding and bytes."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            profile, executable_path=shutil.which("chromium"), headless=True, args=list(CHROMIUM_ARGS),
            viewport={"width": 390, "height": 844},
        )
        page = context.pages[0]
        cdp = await context.new_cdp_session(page)
        responses: dict[str, dict] = {}
        finished: list[dict] = []
        cdp.on("Network.responseReceived", lambda event: responses.__setitem__(event["requestId"], {
            "url": event["response"]["url"].removeprefix(url),
            "status": event["response"]["status"],
            "encoding": {k.lower(): v for k, v in event["response"]["headers"].items()}.get("content-encoding", ""),
        }))
        cdp.on("Network.loadingFinished", lambda event: finished.append(event))
        await cdp.send("Network.enable")
        if identity:
            await cdp.send("Network.setExtraHTTPHeaders", {"headers": {"Accept-Encoding": "identity"}})

        async def one(navigate) -> list[dict]:
            responses.clear()
            finished.clear()
            await navigate()
            await page.wait_for_load_state("networkidle")
            await asyncio.sleep(1.0)
            return sorted(
                ({**responses[event["requestId"]], "bytes": int(event["encodedDataLength"])}
                 for event in finished if event["requestId"] in responses),
                key=lambda row: row["url"],
            )

        first = await one(lambda: page.goto(url + "/"))
        repeat = await one(lambda: page.reload())
        await context.close()
    return {"first": first, "repeat": repeat}


RESULTS_TARGET_S = 1.5
#: Stamps in the page (an init script, before the app runs): when the results table appears, long tasks,
#: and when this phone starts/stops recording or playing (from the app's own status lines).
PROBE = """
window.__probe = {results: null, pushed: null, longtasks: [], frames: [], busy: [], uploaded: null, handedOn: null, sessionsBefore: 0};
const WebSocket0 = window.WebSocket;
window.WebSocket = class extends WebSocket0 {  // when the results push arrives (before the app renders it)
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (e) => {
      if (window.__probe.pushed === null && typeof e.data === "string" && e.data.includes('"measurement.results"')) window.__probe.pushed = Date.now();
    });
  }
};
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__probe.longtasks.push([e.startTime, e.duration]); })
  .observe({type: "longtask", buffered: true});
// Long animation frames (> 50 ms) with the scripts that ran in them: what a long task was doing.
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__probe.frames.push({
  start: e.startTime, ms: Math.round(e.duration), blocking_ms: Math.round(e.blockingDuration),
  render_ms: Math.round(e.renderStart ? e.startTime + e.duration - e.renderStart : 0),
  scripts: e.scripts.map((s) => ({ms: Math.round(s.duration), invoker: s.invoker, fn: s.sourceFunctionName, at: `${s.sourceURL.split("/").pop()}:${s.sourceCharPosition}`,
                                 layout_ms: Math.round(s.forcedStyleAndLayoutDuration)}))}); })
  .observe({type: "long-animation-frame", buffered: true});
// The worklet's "flushed" message ends a recording: a mark as its handler starts, so the trace names the task it
// ran in (the handler and the microtasks it set going: stopRecording's end and the hand-off to the upload).
const onmessage0 = Object.getOwnPropertyDescriptor(MessagePort.prototype, "onmessage");
Object.defineProperty(MessagePort.prototype, "onmessage", {configurable: true, get() { return onmessage0.get.call(this); },
  set(handler) { onmessage0.set.call(this, handler && ((e) => { if (e.data?.type === "flushed") performance.mark("flushed"); return handler(e); })); }});
new MutationObserver(() => {
  const p = window.__probe;
  const sessions = document.querySelectorAll("#session-pick option").length;  // a new session's results
  if (p.results === null && sessions > p.sessionsBefore && document.querySelector("#results-body table.metrics")) p.results = Date.now();
  const activity = document.getElementById("activity")?.textContent ?? "";
  const countdown = document.getElementById("countdown")?.textContent ?? "";
  const open = p.busy.length && p.busy[p.busy.length - 1].length === 1;
  if (!open && (activity.startsWith("Recording") || countdown.startsWith("Sweep in"))) { p.busy.push([performance.now()]); performance.mark("busy-start"); }
  if (open && (activity.startsWith("Uploading") || activity.startsWith("Sweep played"))) { p.busy[p.busy.length - 1].push(performance.now()); performance.mark("busy-end"); }
  // the upload answered (the app's next status line): from the stop to here the recording is assembled and handed on
  const ended = p.busy.length && p.busy[p.busy.length - 1].length === 2;  // this session's recording is over
  if (p.uploaded === null && ended && activity.startsWith("Uploaded")) { p.uploaded = Date.now(); p.handedOn = performance.now(); }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def backend_stamps(log_path: Path, since_s: float, until_s: float) -> dict:
    """From the services' JSON log: when each upload was stored and each analysis finished (epoch s)."""
    stamps: dict = {"upload_stored": [], "analysis_finished": []}
    for line in log_path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        key = {"upload stored": "upload_stored", "analysis finished": "analysis_finished"}.get(record.get("message"))
        if key:
            day, clock = record["time"].split(" ")
            at_s = time.mktime(time.strptime(f"{day} {clock[:8]}", "%Y-%m-%d %H:%M:%S")) + int(clock[9:]) / 1000
            if since_s <= at_s <= until_s:
                stamps[key].append(at_s)
    return stamps


class MainThreadTrace:
    """Chromium's own trace of one page (CDP ``Tracing``, categories ``toplevel`` and ``blink.user_timing``):
    every task of the renderer's main thread with its wall time (``dur``) and its CPU time (``tdur``). A task
    long in wall time but short in CPU time was the page waiting for a core (the machine), not the app's work."""

    def __init__(self, cdp) -> None:
        self.cdp, self.events, self.done = cdp, [], asyncio.Event()
        cdp.on("Tracing.dataCollected", lambda event: self.events.extend(event["value"]))
        cdp.on("Tracing.tracingComplete", lambda event: self.done.set())

    async def start(self) -> None:
        self.events.clear()
        self.done.clear()
        config = {"includedCategories": ["toplevel", "blink.user_timing"], "excludedCategories": ["*"]}
        await self.cdp.send("Tracing.start", {"traceConfig": config, "transferMode": "ReportEvents"})

    async def end(self) -> None:
        await self.cdp.send("Tracing.end")
        await self.done.wait()

    def main_thread_tasks(self) -> list[dict]:
        main = {(e["pid"], e["tid"]) for e in self.events
                if e.get("ph") == "M" and e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"}
        return [e for e in self.events
                if e.get("ph") == "X" and e.get("name") == "ThreadControllerImpl::RunTask" and (e["pid"], e["tid"]) in main]

    def marks(self, *names: str) -> list[tuple[int, str]]:
        return sorted((e["ts"], e["name"]) for e in self.events if e.get("cat") == "blink.user_timing" and e["name"] in names)

    def long_tasks_while_busy(self) -> list[dict]:
        """Main-thread tasks over 50 ms (wall) between the probe's busy-start and busy-end marks."""
        spans, opened = [], None
        for ts, name in self.marks("busy-start", "busy-end"):
            if name == "busy-start":
                opened = ts
            elif opened is not None:
                spans.append((opened, ts))
                opened = None
        return [{"wall_ms": round(e["dur"] / 1000, 1), "cpu_ms": round(e.get("tdur", 0) / 1000, 1)}
                for e in self.main_thread_tasks() if e["dur"] > 50_000 and any(a <= e["ts"] <= b for a, b in spans)]

    def flushed_tasks(self) -> list[dict]:
        """The main-thread task each "flushed" mark ran in (the outermost around it): wall and CPU ms."""
        tasks = self.main_thread_tasks()
        out = []
        for ts, _ in self.marks("flushed"):
            around = [e for e in tasks if e["ts"] <= ts <= e["ts"] + e["dur"]]
            if around:
                task = max(around, key=lambda e: e["dur"])
                out.append({"wall_ms": round(task["dur"] / 1000, 2), "cpu_ms": round(task.get("tdur", 0) / 1000, 2)})
        return out


async def session(url: str, data_dir: Path, runs: int) -> list[dict]:
    """One speaker and three microphones through the UI, ``runs`` sessions in one lobby."""
    from tests.webapp.fake_capture import write_capture_wav
    from tests.webapp.conftest import fake_microphone_args

    wav = data_dir / "room.wav"
    write_capture_wav(wav)
    out = []
    async with async_playwright() as playwright:
        contexts, pages = [], []
        for k in range(4):
            context = await playwright.chromium.launch_persistent_context(
                str(data_dir / f"phone-{k}"), executable_path=shutil.which("chromium"), headless=True,
                args=[*CHROMIUM_ARGS, *fake_microphone_args(wav)], viewport={"width": 390, "height": 844}, bypass_csp=True)
            await context.add_init_script(PROBE)
            contexts.append(context)
            page = context.pages[0]
            await page.goto(url + "/?sweep_count=1")  # the fake microphone's looped file holds one sweep per period
            await page.wait_for_selector("#conn[data-state=online]", timeout=30000)
            pages.append(page)
        traces = [MainThreadTrace(await context.new_cdp_session(page)) for context, page in zip(contexts, pages)]
        host, mics = pages[0], pages[1:]
        await host.click("#create-form button")
        await host.wait_for_selector("#lobby-code:not(:empty)")
        code = (await host.text_content("#lobby-code")).strip()
        for mic in mics:
            await mic.fill("#join-code", code)
            await mic.click("#join-form button")
        await host.wait_for_function("document.querySelectorAll('#participants select').length === 4", timeout=30000)
        for index, role in enumerate(("speaker", "microphone", "microphone", "microphone")):
            await host.locator("#participants select").nth(index).select_option(role)
            await host.wait_for_function(f"[...document.querySelectorAll('#participants select')][{index}]?.value === '{role}'")
        for mic in mics:
            await mic.wait_for_function("[...document.querySelectorAll('#participants .badge')].filter(b => b.textContent === 'microphone').length === 3")
        for page in pages:
            await page.click("[data-tab=measure]")
            await page.click("#arm")
            await page.wait_for_selector("#arm-state:has-text('Armed')", timeout=30000)
        for run in range(runs):
            for page in pages:
                await page.evaluate("Object.assign(window.__probe, {results: null, pushed: null, longtasks: [], frames: [], busy: [], uploaded: null, handedOn: null, "
                                    "sessionsBefore: document.querySelectorAll('#session-pick option').length})")
            for trace in traces:
                await trace.start()
            started_s = time.time()
            await host.click("#start")
            failed = None
            for page in pages:  # a session after a failed one: the new session replaces the failure shown
                await page.wait_for_function("document.getElementById('step').textContent !== 'Measurement failed'", timeout=60000)
            for page in pages:
                await page.wait_for_function(
                    "(window.__probe.results !== null && document.querySelectorAll('#results-body section.pair').length === 3)"
                    " || document.getElementById('step').textContent === 'Measurement failed'", timeout=240000)
                if await page.text_content("#step") == "Measurement failed":
                    failed = (await page.text_content("#session-errors")).strip()[:500]
            for trace in traces:
                await trace.end()
            traced = [trace.long_tasks_while_busy() for trace in traces]
            flushed = [trace.flushed_tasks() for trace in traces]
            if failed:  # on a loaded machine a recording may be refused (e.g. a dropout taken for an impulsive noise)
                print(f"session {run + 1} failed: {failed}")
                out.append({"failed": failed})
                await host.click("[data-tab=measure]")
                await host.wait_for_selector("#start:has-text('Measure again')", state="visible", timeout=60000)
                continue
            probes = [await page.evaluate("window.__probe") for page in pages]
            uploads = [probe["uploaded"] for probe in probes[1:]]
            assert all(uploads), uploads
            last_upload_s = max(uploads) / 1000
            per_screen = [probe["results"] / 1000 - last_upload_s for probe in probes]
            long_tasks = [
                [round(duration, 1) for start, duration in probe["longtasks"]
                 if any(len(span) == 2 and span[0] <= start <= span[1] for span in probe["busy"])]
                for probe in probes
            ]
            # long animation frames from the start of recording/playing to the upload's answer (the flush, the
            # WAV and its hand-off to the upload come after the busy span: a long frame there is the app's too)
            frames = [[f for f in probe["frames"] if any(span[0] <= f["start"] <= max(span[-1], probe["handedOn"] or 0) for span in probe["busy"])]
                      for probe in probes]
            stamps = backend_stamps(data_dir / "serve.log", started_s, time.time())
            analysed_s = max(stamps["analysis_finished"], default=float("nan"))
            steps = {  # where the time between the last upload and the results goes
                "last_upload_stored_to_answered_s": round(last_upload_s - max(stamps["upload_stored"], default=float("nan")), 3),
                "uploads_spread_s": round(max(uploads) / 1000 - min(uploads) / 1000, 3),
                "last_upload_to_analysis_finished_s": round(analysed_s - last_upload_s, 3),
                "analysis_finished_to_last_push_s": round(max(probe["pushed"] or 0 for probe in probes) / 1000 - analysed_s, 3),
                "push_to_table_s_per_screen": [round((probe["results"] - (probe["pushed"] or 0)) / 1000, 3) for probe in probes],
            }
            out.append({"upload_to_results_s": round(max(per_screen), 3), "per_screen_s": [round(x, 3) for x in per_screen],
                        "steps": steps, "long_frames": frames, "traced_long_tasks": traced, "flushed_tasks": flushed,
                        "traced_long_tasks_over_50_ms_cpu": sum(task["cpu_ms"] > 50 for tasks in traced for task in tasks),
                        "long_tasks": sum(len(x) for x in long_tasks), "long_task_ms_per_page": long_tasks,
                        "longest_task_ms": max((max(x) for x in long_tasks if x), default=0),
                        "busy_spans_s": [[round((b - a) / 1000, 2) for a, b in (s for s in probe["busy"] if len(s) == 2)] for probe in probes]})
            for page in pages:
                await page.click("[data-tab=measure]")
            await host.wait_for_selector("#start:has-text('Measure again')", state="visible", timeout=60000)
        for context in contexts:
            await context.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-port", type=int, default=9600)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "webapp_results.jsonl")
    parser.add_argument("--session-runs", type=int, default=3, help="sessions of 1 speaker + 3 microphones (0: none)")
    parser.add_argument("--data-dir", type=Path, help="keep the services' data here (uploads, serve.log); a temporary folder by default")
    args = parser.parse_args()
    with (contextlib.nullcontext(str(args.data_dir)) if args.data_dir else tempfile.TemporaryDirectory()) as data_dir:
        process = start_backend(args.base_port, data_dir)
        try:
            url = f"http://127.0.0.1:{args.base_port}"
            results = {}
            for mode, identity in (("gzip", False), ("identity", True)):
                results[mode] = asyncio.run(load(url, str(Path(data_dir) / f"profile-{mode}"), identity))
            sessions = asyncio.run(session(url, Path(data_dir), args.session_runs)) if args.session_runs else []
        finally:
            process.send_signal(2)
            process.wait(timeout=60)
    chromium = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.machine(), "cpus": os.cpu_count(),
              "chromium": chromium, "target_bytes": TARGET_BYTES}
    print(f"{'file':<34} {'gzip':>9} {'identity':>9}")
    by_url = {row["url"]: row for row in results["identity"]["first"]}
    for row in results["gzip"]["first"]:
        plain = by_url.get(row["url"], {}).get("bytes", 0)
        print(f"{row['url']:<34} {row['bytes']:>9,} {plain:>9,}  {row['status']} {row['encoding']}")
    for mode in ("gzip", "identity"):
        first = sum(row["bytes"] for row in results[mode]["first"])
        repeat = sum(row["bytes"] for row in results[mode]["repeat"])
        statuses = sorted({row["status"] for row in results[mode]["repeat"]})
        record[mode] = {"first_load_bytes": first, "requests": len(results[mode]["first"]), "repeat_load_bytes": repeat,
                        "repeat_statuses": statuses, "files": results[mode]["first"]}
        print(f"{mode:>8}: first load {first:,} B in {len(results[mode]['first'])} requests; "
              f"reload {repeat:,} B (statuses {statuses})")
    verdict = "within" if record["gzip"]["first_load_bytes"] <= TARGET_BYTES else "OVER"
    print(f"target {TARGET_BYTES:,} B: {verdict}")
    record["sessions"] = sessions
    for k, run in enumerate(sessions):
        if "failed" in run:
            continue
        print(f"session {k + 1}: last upload → results on every screen {run['upload_to_results_s']:.2f} s "
              f"(per screen {', '.join(f'{x:.2f}' for x in run['per_screen_s'])}; target {RESULTS_TARGET_S} s); "
              f"long tasks while recording/playing: {run['long_tasks']} (longest {run['longest_task_ms']} ms)")
        print(f"  steps: {run['steps']}")
        print(f"  traced main-thread tasks > 50 ms wall while recording/playing (wall/CPU ms), speaker, mic 1-3: "
              + " | ".join(", ".join(f"{t['wall_ms']:.0f}/{t['cpu_ms']:.0f}" for t in tasks) or "-" for tasks in run["traced_long_tasks"])
              + f"; over 50 ms of CPU: {run['traced_long_tasks_over_50_ms_cpu']}")
        print("  the worklet's 'flushed' message task (wall/CPU ms), mic 1-3: "
              + " | ".join(", ".join(f"{t['wall_ms']:.1f}/{t['cpu_ms']:.1f}" for t in tasks) or "-" for tasks in run["flushed_tasks"][1:]))
        for page, frames in zip(("speaker", "mic 1", "mic 2", "mic 3"), run["long_frames"]):
            for frame in frames:
                print(f"  {page} long frame {frame['ms']} ms (render {frame['render_ms']} ms): "
                      + "; ".join(f"{x['invoker']} {x['fn']} {x['at']} {x['ms']} ms" for x in frame["scripts"]))
    with args.out.open("a") as out:
        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
