"""CLI: python -m realtime_sim --host 127.0.0.1 --port 8100 [--api-key KEY]"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from .server import start_simulator
from .state import DEFAULT_API_KEY


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m realtime_sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8100, help="TCP port (default 8100, 0 = any free port)")
    parser.add_argument("--api-key", default=os.environ.get("SIM_API_KEY") or DEFAULT_API_KEY,
                        help="the standard API key clients must present (default: $SIM_API_KEY or sk-sim-local)")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    simulator = await start_simulator(args.host, args.port, args.api_key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    print(f"realtime simulator listening on {simulator.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        asyncio.run(serve(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
