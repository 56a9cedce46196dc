"""CLI: python -m realtime_sim --host 127.0.0.1 --port 8100 [--api-key KEY] [--call-max-seconds N] ..."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from .config import AUTH_MODES, TRUNCATE_TRANSCRIPT_MODES
from .server import start_simulator
from .state import DEFAULT_API_KEY


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def config_from_args(args: argparse.Namespace) -> dict:
    """The runtime settings given on the command line (the others keep their defaults)."""
    keys = ("call_max_seconds", "sideband_auth", "hangup_auth", "transcription_delay_ms", "playback_after_done",
            "truncate_transcript", "datachannel_max_message_bytes")
    return {key: getattr(args, key) for key in keys if getattr(args, key) is not None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m realtime_sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8100, help="TCP port (default 8100, 0 = any free port)")
    parser.add_argument("--api-key", default=os.environ.get("SIM_API_KEY") or DEFAULT_API_KEY,
                        help="the standard API key clients must present (default: $SIM_API_KEY or sk-sim-local)")
    parser.add_argument("--log-level", default="WARNING")
    settings = parser.add_argument_group("runtime settings (also GET/POST /_sim/config)")
    settings.add_argument("--call-max-seconds", type=_number, help="call duration cap (default 3600)")
    settings.add_argument("--sideband-auth", choices=AUTH_MODES,
                          help="who may attach a sideband (default any)")
    settings.add_argument("--hangup-auth", choices=AUTH_MODES,
                          help="who may hang a call up (default api_key_only)")
    settings.add_argument("--transcription-delay-ms", type=int, help="delay of input transcriptions (default 0)")
    settings.add_argument("--playback-after-done", action="store_const", const=True,
                          help="response.done before the audio finishes playing")
    settings.add_argument("--truncate-transcript", choices=TRUNCATE_TRANSCRIPT_MODES,
                          help="what truncating an answer leaves of its transcript (default heard)")
    settings.add_argument("--datachannel-max-message-bytes", type=int,
                          help="data channel message limit, advertised in the SDP answer (default 65536)")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    simulator = await start_simulator(args.host, args.port, args.api_key, config=config_from_args(args))
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
