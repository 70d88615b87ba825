"""The ``sonalyze`` command line.

    sonalyze serve                      all five services on the embedded defaults
    sonalyze serve gateway [--port P]   one service in this process
    sonalyze serve --services gateway,lobby
    sonalyze demo [--gateway URL]        a virtual measurement session against a running backend
"""

from __future__ import annotations

import argparse
import os
import time
import sys
from collections.abc import Sequence
from pathlib import Path

from sonalyze.services import SERVICES


def _service_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SERVICES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown service(s): {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sonalyze", description="Sonalyze backend: room acoustics measured with phones.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service, several, or the whole backend")
    serve.add_argument("service", nargs="?", choices=sorted(SERVICES), help="one service to run in this process")
    serve.add_argument("--services", type=_service_list, help="comma-separated services to run together")
    serve.add_argument("--host", default=None, help="address to listen on (env HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=None, help="port for a single service (env PORT, default per service)")
    serve.add_argument("--base-port", type=int, default=8000, help="first port when running several (default 8000)")
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SONALYZE_DATA_DIR", "sonalyze-data")),
        help="folder for the embedded databases and audio when running several (default ./sonalyze-data)",
    )
    demo = commands.add_parser("demo", help="run a complete measurement with virtual devices and compare it with the simulation")
    demo.add_argument("--gateway", default="http://127.0.0.1:8000", help="gateway URL (default: the one-command backend)")
    demo.add_argument("--room", choices=["shoebox", "polygon"], default="shoebox", help="the room to measure")
    demo.add_argument("--snr-db", type=float, default=60.0, help="signal-to-noise ratio of the virtual recordings")
    demo.add_argument("--seed", type=int, default=1, help="seed of noise, start offsets and ray tracing")
    demo.add_argument("--out", type=Path, default=Path("sonalyze-demo"), help="folder for the plots (PNG)")
    demo.add_argument("--no-plots", action="store_true", help="print the comparison only")
    return parser


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    from sonalyze.demo.report import comparison_table
    from sonalyze.demo.session import DemoConfig, DemoFailed, run_demo, save_outputs

    config = DemoConfig(gateway_url=args.gateway, room=args.room, snr_db=args.snr_db, seed=args.seed)
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    try:
        result = asyncio.run(run_demo(config, progress))
    except (DemoFailed, OSError) as exc:
        print(f"sonalyze demo: {exc}", file=sys.stderr)
        return 1
    for pair in result.pairs:
        print()
        print(comparison_table(f"{pair.speaker} -> {pair.microphone} (measured / simulated)", pair.measured, pair.simulated))
    if not args.no_plots:
        for path in save_outputs(result, args.out):
            print(f"saved {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        host = args.host or os.environ.get("HOST", "0.0.0.0")
        if args.service and not args.services:
            from sonalyze.common.server import serve

            spec = SERVICES[args.service]
            port = args.port if args.port is not None else int(os.environ.get("PORT", spec.default_port))
            serve(spec, host, port)
            return 0
        from sonalyze.launcher import run_services

        names = args.services or list(SERVICES)
        return run_services(names, public_host=host, base_port=args.base_port, data_dir=args.data_dir)
    if args.command == "demo":
        return _demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
