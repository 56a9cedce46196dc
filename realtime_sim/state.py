"""Everything the simulator remembers: key, clock, settings, secrets, calls, faults."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .call import Call
from .config import SimConfig
from .faults import FaultBook

DEFAULT_API_KEY = "sk-sim-local"


@dataclass
class Secret:
    value: str
    expires_at: int
    session: dict
    safety_identifier: str | None
    created_at: int


class SimState:
    def __init__(self, api_key: str = DEFAULT_API_KEY, clock: Callable[[], float] | None = None,
                 config: dict | None = None) -> None:
        self.api_key = api_key
        # The startup settings (defaults + CLI / start_simulator overrides) are what reset restores.
        self.startup_config = SimConfig.build(config)
        self.config = SimConfig.build(self.startup_config.as_dict())
        self._clock = clock or time.time
        self.clock_offset = 0.0  # moved by POST /_sim/clock so TTL tests need not sleep
        self.secrets: dict[str, Secret] = {}
        self.calls: dict[str, Call] = {}
        self.faults = FaultBook()
        self.last_client_secret_request: dict | None = None
        self.client_secret_requests = 0

    def now(self) -> float:
        return self._clock() + self.clock_offset

    def valid_secret(self, value: str) -> Secret | None:
        secret = self.secrets.get(value)
        if secret is None or self.now() >= secret.expires_at:
            return None
        return secret

    async def close_calls(self) -> None:
        for call in list(self.calls.values()):
            await call.close("simulator_reset")

    async def reset(self) -> None:
        await self.close_calls()
        self.calls.clear()
        self.secrets.clear()
        self.faults.clear()
        self.last_client_secret_request = None
        self.client_secret_requests = 0
        self.clock_offset = 0.0
        self.config.restore(self.startup_config)
