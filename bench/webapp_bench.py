"""The web app's first load: bytes over the wire in Chromium, with gzip and with compression off.

    .venv/bin/python bench/webapp_bench.py [--base-port 9600] [--out bench/webapp_results.jsonl]

Starts ``sonalyze serve`` (all five services, fresh data folder), then for each mode opens the app in
Debian's headless Chromium (the test suite's flags, a fresh profile, so an empty cache) and sums
``encodedDataLength`` of CDP ``Network.loadingFinished`` over every HTTP response of the page until the
network is idle: response headers and bodies as received (the WebSocket's frames are not counted).
"Compression off" is the same load with the browser asking ``Accept-Encoding: identity``. A reload in the
same profile then shows what a repeat visit costs (revalidation, ``304`` without bodies). Target: first
load ≤ 250 KB.
"""

from __future__ import annotations

import argparse
import asyncio
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-port", type=int, default=9600)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "webapp_results.jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        process = start_backend(args.base_port, data_dir)
        try:
            url = f"http://127.0.0.1:{args.base_port}"
            results = {}
            for mode, identity in (("gzip", False), ("identity", True)):
                results[mode] = asyncio.run(load(url, str(Path(data_dir) / f"profile-{mode}"), identity))
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
    with args.out.open("a") as out:
        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
