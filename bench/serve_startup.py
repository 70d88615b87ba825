"""`sonalyze serve`: time until all five services answer, and what each process costs at rest.

    .venv/bin/python bench/serve_startup.py [--runs 3]

Starts the one-command backend on a free block of ports with a fresh data folder, waits for its
"Press Ctrl-C" line, then reads each child's RSS and CPU time with psutil, idles 10 s to measure the
background CPU, stops it with SIGINT and times the stop.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def one_run(base_port: int) -> dict:
    with tempfile.TemporaryDirectory() as data_dir:
        log_path = Path(data_dir) / "serve.log"
        started = time.monotonic()
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "sonalyze", "serve", "--host", "127.0.0.1", "--base-port", str(base_port), "--data-dir", data_dir],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        while "Press Ctrl-C" not in log_path.read_text():
            if process.poll() is not None:
                raise SystemExit(log_path.read_text())
            time.sleep(0.05)
        ready_s = time.monotonic() - started
        children = psutil.Process(process.pid).children()
        names = {child.pid: child.cmdline()[4] for child in children}
        rss = {names[child.pid]: child.memory_info().rss for child in children}
        cpu_before = {child.pid: sum(child.cpu_times()[:2]) for child in children}
        time.sleep(10)
        idle_cpu = {names[child.pid]: (sum(child.cpu_times()[:2]) - cpu_before[child.pid]) / 10 for child in children}
        stop_started = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        return {"ready_s": ready_s, "stop_s": time.monotonic() - stop_started, "rss": rss, "idle_cpu": idle_cpu, "code": process.returncode}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=28000)
    args = parser.parse_args()
    runs = [one_run(args.base_port) for _ in range(args.runs)]
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("| run | all five ready s | stop on Ctrl-C s | exit code |")
    print("|---|---|---|---|")
    for index, run in enumerate(runs, 1):
        print(f"| {index} | {run['ready_s']:.2f} | {run['stop_s']:.2f} | {run['code']} |")
    last = runs[-1]
    print()
    print("| service | RSS MiB | idle CPU % |")
    print("|---|---|---|")
    for name in last["rss"]:
        print(f"| {name} | {last['rss'][name] / 2**20:.0f} | {100 * last['idle_cpu'][name]:.2f} |")
    print(f"| total | {sum(last['rss'].values()) / 2**20:.0f} | {100 * sum(last['idle_cpu'].values()):.2f} |")


if __name__ == "__main__":
    main()
