"""The ``sonalyze`` command line.

    sonalyze serve                      all five services on the embedded defaults
    sonalyze serve gateway [--port P]   one service in this process
    sonalyze serve --services gateway,lobby
"""

from __future__ import annotations

import argparse
import os
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
    return parser


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
    return 2


if __name__ == "__main__":
    sys.exit(main())
