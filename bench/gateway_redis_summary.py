"""Summarize one run of bench/gateway_redis_client.sh: per benchmark and client, the median and the range
(min-max) over the rounds, as Markdown tables. ``python bench/gateway_redis_summary.py RESULTS.jsonl RUN_ID``."""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict

import orjson

BROKER = ("publications_per_s", "subscriber_user_us_per_message", "subscriber_total_us_per_message",
          "publisher_user_us_per_message", "publisher_total_us_per_message", "latency_p50_ms")
CLUSTER = ("user_us_per_delivery", "total_us_per_delivery", "throughput_deliveries_per_s", "latency_p50_ms",
           "latency_p99_ms", "first_delivery_p50_ms")


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):g} ({min(values):g}–{max(values):g})"


def main() -> None:
    path, run_id = sys.argv[1:3]
    lines = [orjson.loads(line) for line in open(path) if line.strip()]
    lines = [line for line in lines if line.get("run") == run_id]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for line in lines:
        groups[(line["benchmark"], line.get("targets", line.get("clients")), line["label"])].append(line)
    loads = [float(line["loadavg"][0]) for line in lines]
    print(f"run {run_id}: {len(lines)} results, {max(line['round'] for line in lines)} rounds, load average {min(loads):g}–{max(loads):g}")
    for benchmark, keys in (("broker", BROKER), ("cluster", CLUSTER)):
        print(f"\n{benchmark}: median (min–max) over the rounds\n")
        print("| targets | client | " + " | ".join(keys) + " |")
        print("|---|---|" + "---|" * len(keys))
        for (kind, size, label), runs in sorted(groups.items(), key=lambda item: (item[0][1], item[0][2])):
            if kind == benchmark:
                print(f"| {size} | {label} | " + " | ".join(cell([run[key] for run in runs]) for key in keys) + " |")


if __name__ == "__main__":
    main()
