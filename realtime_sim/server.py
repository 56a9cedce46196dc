"""Starting and stopping the simulator: in-process, in a thread, or from the CLI."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, Coroutine

from aiohttp import web

from .app import build_app
from .loopback import install_loopback_guard, is_loopback_host
from .schema import RequestError
from .state import DEFAULT_API_KEY, SimState


class Simulator:
    """A running simulator; `state` is live (calls, secrets, faults)."""

    def __init__(self, runner: web.AppRunner, state: SimState, host: str, port: int) -> None:
        self._runner = runner
        self.state = state
        self.host = host
        self.port = port
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        await self.state.close_calls()
        await self._runner.cleanup()


async def start_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = DEFAULT_API_KEY,
    *,
    clock: Callable[[], float] | None = None,
    config: dict | None = None,
) -> Simulator:
    """Serve the simulator on host:port (port 0 = any free port) in the running loop.

    `config` overrides runtime settings (see config.py); they are also what /_sim/reset restores.
    """
    if not is_loopback_host(host):
        raise ValueError(f"the simulator binds loopback addresses only, not {host!r}")
    try:
        state = SimState(api_key, clock, config)
    except RequestError as exc:
        raise ValueError(f"bad config {exc.param!r}: {exc.message}") from None
    install_loopback_guard()
    # handler_cancellation: a held ("timeout" fault) request ends when its client leaves.
    runner = web.AppRunner(build_app(state), handler_cancellation=True, shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = site._server.sockets[0].getsockname()[1]
    return Simulator(runner, state, host, bound_port)


class SimulatorThread:
    """The simulator on its own event loop in a daemon thread (for sync callers, e.g.
    Playwright's sync API, which refuses to run inside a running loop)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str = DEFAULT_API_KEY, *,
                 clock: Callable[[], float] | None = None, config: dict | None = None) -> None:
        self.host, self.port, self.api_key, self.clock, self.config = host, port, api_key, clock, config
        self.loop: asyncio.AbstractEventLoop | None = None
        self.simulator: Simulator | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        assert self.simulator is not None, "call start() first"
        return self.simulator.base_url

    @property
    def state(self) -> SimState:
        assert self.simulator is not None, "call start() first"
        return self.simulator.state

    def start(self, timeout: float = 10.0) -> str:
        self._thread = threading.Thread(target=self._main, name="realtime-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("realtime simulator did not start")
        if self._error is not None:
            raise self._error
        return self.base_url

    def _main(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            self.simulator = await start_simulator(self.host, self.port, self.api_key, clock=self.clock,
                                                   config=self.config)
        except BaseException as exc:  # reported to start()'s caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.simulator.stop()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        """Run a coroutine on the simulator's loop and return its result."""
        assert self.loop is not None
        future: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop is None or self._thread is None or self._stop is None:
            return
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
