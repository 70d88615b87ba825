"""The ``sonalyze`` command line.

    sonalyze serve                      all five services on the embedded defaults
    sonalyze serve gateway [--port P]   one service in this process
    sonalyze serve --services gateway,lobby
    sonalyze serve --https              the gateway over TLS (self-signed for this machine, or --tls-cert/--tls-key)
    sonalyze demo [--gateway URL]        a virtual measurement session against a running backend
    sonalyze worker [--processes N]      run analyses and simulations from the task queue (TASK_QUEUE_URL)
"""

from __future__ import annotations

import argparse
import os
import socket
import time
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sonalyze.common.logging import log_format
from sonalyze.services import SERVICES

if TYPE_CHECKING:
    from sonalyze.tls import TlsFiles


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
    serve.add_argument(
        "--https",
        action="store_true",
        default=os.environ.get("SONALYZE_HTTPS", "").lower() in ("1", "true", "yes"),
        help="serve the gateway over TLS (env SONALYZE_HTTPS=1): phones need HTTPS for the microphone; without "
        "--tls-cert/--tls-key a self-signed certificate for this machine is made once in DATA_DIR/tls and reused",
    )
    serve.add_argument("--tls-cert", type=Path, default=os.environ.get("SONALYZE_TLS_CERT") or None, help="PEM certificate (chain) for --https (env SONALYZE_TLS_CERT)")
    serve.add_argument("--tls-key", type=Path, default=os.environ.get("SONALYZE_TLS_KEY") or None, help="PEM private key for --https (env SONALYZE_TLS_KEY)")
    serve.add_argument(
        "--internal-port", type=int, default=None,
        help="with TLS, the gateway also answers plain HTTP on 127.0.0.1:PORT for the services' pushes (set by the launcher)",
    )
    demo = commands.add_parser("demo", help="run a complete measurement with virtual devices and compare it with the simulation")
    demo.add_argument("--gateway", default="http://127.0.0.1:8000", help="gateway URL (default: the one-command backend)")
    demo.add_argument("--room", choices=["shoebox", "polygon"], default="shoebox", help="the room to measure")
    demo.add_argument("--snr-db", type=float, default=60.0, help="signal-to-noise ratio of the virtual recordings")
    demo.add_argument("--seed", type=int, default=1, help="seed of noise, start offsets and ray tracing")
    demo.add_argument("--out", type=Path, default=Path("sonalyze-demo"), help="folder for the plots (PNG)")
    demo.add_argument("--no-plots", action="store_true", help="print the comparison only")
    worker = commands.add_parser(
        "worker", help="run analyses and simulations from the task queue (TASK_QUEUE_URL, sonalyze.common.tasks)"
    )
    worker.add_argument("--processes", type=_positive, default=os.cpu_count() or 1, help="worker processes (default: one per CPU)")
    worker.add_argument("--threads", type=_positive, default=1, help="tasks at once per process (default 1: the work is CPU-bound)")
    worker.add_argument(
        "--queues", type=_queue_list, default=["analysis", "simulation"], help="comma-separated queues (default: analysis,simulation)"
    )
    worker.add_argument(
        "--poll-ms", type=_positive, default=1000,
        help="how long an idle process waits for a wake-up before asking Redis again (default 1000; its heartbeat)",
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _queue_list(text: str) -> list[str]:
    from sonalyze.common.tasks import QUEUES

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in QUEUES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown queue(s): {', '.join(unknown)}; choose from {', '.join(QUEUES)}")
    return names


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


def _tls_files(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TlsFiles | None:
    """The certificate and key to serve the gateway with: given, made for this machine, or none."""
    from sonalyze.tls import TlsFiles, ensure_self_signed, lan_ipv4_addresses

    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_cert is not None:
        for path in (args.tls_cert, args.tls_key):
            if not path.is_file():
                parser.error(f"{path} is not a file")
        return TlsFiles(args.tls_cert, args.tls_key)
    if not args.https:
        return None
    return ensure_self_signed(args.data_dir.resolve() / "tls", socket.gethostname(), lan_ipv4_addresses())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        host = args.host or os.environ.get("HOST", "0.0.0.0")
        tls = _tls_files(parser, args)
        try:
            log_format()
        except ValueError as exc:
            parser.error(str(exc))
        if args.service and not args.services:
            from sonalyze.common.server import serve

            if tls is not None and args.service != "gateway":
                parser.error("only the gateway serves HTTPS")
            spec = SERVICES[args.service]
            port = args.port if args.port is not None else int(os.environ.get("PORT", spec.default_port))
            serve(spec, host, port, tls, args.internal_port)
            return 0
        from sonalyze.launcher import run_services

        names = args.services or list(SERVICES)
        return run_services(names, public_host=host, base_port=args.base_port, data_dir=args.data_dir, tls=tls)
    if args.command == "demo":
        return _demo(args)
    if args.command == "worker":
        from sonalyze.common.tasks import TaskQueueSettings, worker_main

        if not TaskQueueSettings().task_queue_url:
            parser.error("sonalyze worker needs TASK_QUEUE_URL (redis://host:port/db)")
        return worker_main(processes=args.processes, threads=args.threads, queues=args.queues, poll_ms=args.poll_ms)
    return 2


if __name__ == "__main__":
    sys.exit(main())
