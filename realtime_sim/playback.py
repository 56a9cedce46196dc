"""What the listener heard of one response's audio, for truncation bounds and test views.

Over WebRTC the server plays the audio itself, so it knows how much was heard:
time since the audio started, in whole 20 ms frames, up to the audio's length.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

FRAME_MS = 20


def loop_time() -> float:
    """The event loop's clock (views may also be read from another thread: same monotonic clock)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


@dataclass
class Playback:
    total_ms: int
    t0: float  # event-loop time when the audio started playing
    started_at_ms: float  # unix ms (the call's clock)
    state: str = "playing"  # "playing" | "stopped" | "cleared" | "closed"
    ended_at_ms: float | None = None
    cleared_at_ms: float | None = None
    _played_ms: int | None = None  # frozen when the audio ends

    def played_ms(self, loop_now: float) -> int:
        if self._played_ms is not None:
            return self._played_ms
        elapsed = max(0.0, (loop_now - self.t0) * 1000)
        return min(self.total_ms, int(elapsed) // FRAME_MS * FRAME_MS)

    @property
    def playing(self) -> bool:
        return self.state == "playing"

    def end(self, state: str, loop_now: float, at_ms: float, played_ms: int | None = None) -> None:
        if not self.playing:
            return
        self._played_ms = self.played_ms(loop_now) if played_ms is None else played_ms
        self.state = state
        self.ended_at_ms = at_ms
        if state == "cleared":
            self.cleared_at_ms = at_ms

    def as_dict(self, loop_now: float) -> dict:
        return {
            "state": self.state,
            "total_ms": self.total_ms,
            "played_ms": self.played_ms(loop_now),
            "started_at_ms": self.started_at_ms,
            "ended_at_ms": self.ended_at_ms,
            "cleared_at_ms": self.cleared_at_ms,
        }
