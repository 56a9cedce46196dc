"""Audio helpers: loudness measurement, the synthetic voice, and counters."""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass, field

SAMPLE_RATE = 48000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 960
# The WebRTC recipe measured speech at 0.35-0.42 RMS and muted tracks at ~2e-6.
VOICED_RMS = 0.02


def rms_s16(data: bytes | memoryview, sample_count: int | None = None) -> float:
    """RMS of little-endian signed 16-bit samples, normalised to 0..1."""
    samples = array("h")
    raw = bytes(data)
    if sample_count is not None:
        raw = raw[: sample_count * 2]
    samples.frombytes(raw[: len(raw) - len(raw) % 2])
    if not samples:
        return 0.0
    total = sum(x * x for x in samples)
    return math.sqrt(total / len(samples)) / 32768.0


def is_voiced(rms: float) -> bool:
    return rms > VOICED_RMS


def _vowel_frames() -> list[bytes]:
    """A vowel-like sound: 200 Hz with two harmonics, a 4 Hz syllable envelope.

    200 Hz fits a 20 ms frame exactly (4 periods), so frames join without clicks.
    """
    base = []
    for n in range(FRAME_SAMPLES):
        t = n / SAMPLE_RATE
        base.append(
            math.sin(2 * math.pi * 200 * t)
            + 0.5 * math.sin(2 * math.pi * 400 * t)
            + 0.25 * math.sin(2 * math.pi * 600 * t)
        )
    peak = max(abs(v) for v in base)
    frames = []
    steps = 12  # 12 frames = 240 ms, one "syllable"
    for i in range(steps):
        level = 0.22 + 0.16 * math.sin(math.pi * i / steps)
        scale = level * 32767 / peak
        frames.append(array("h", (int(v * scale) for v in base)).tobytes())
    return frames


VOWEL_FRAMES = _vowel_frames()
SILENT_FRAME = bytes(FRAME_SAMPLES * 2)


@dataclass
class InputAudioStats:
    """What the simulator measured on the browser's microphone track."""

    frames: int = 0
    voiced_frames: int = 0
    last_rms: float = 0.0
    max_rms: float = 0.0
    recent_rms: deque = field(default_factory=lambda: deque(maxlen=50))

    def record(self, rms: float) -> None:
        self.frames += 1
        if is_voiced(rms):
            self.voiced_frames += 1
        self.last_rms = rms
        self.max_rms = max(self.max_rms, rms)
        self.recent_rms.append(round(rms, 6))

    def as_dict(self) -> dict:
        return {
            "frames": self.frames,
            "voiced_frames": self.voiced_frames,
            "last_rms": round(self.last_rms, 6),
            "max_rms": round(self.max_rms, 6),
            "recent_rms": list(self.recent_rms),
        }


class OutputAudio:
    """The assistant's outgoing audio: which response is speaking, and frame counts.

    The conversation starts/stops speech; the WebRTC track reads `speaking`
    every 20 ms to choose between the voice and digital silence.
    """

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.frames = 0
        self.voiced_frames = 0
        self._phase = 0

    @property
    def speaking(self) -> bool:
        return self.response_id is not None

    def start(self, response_id: str) -> None:
        self.response_id = response_id
        self._phase = 0

    def stop(self) -> None:
        self.response_id = None

    def next_frame(self) -> bytes:
        """Mono s16 PCM for the next 20 ms, counted as sent."""
        self.frames += 1
        if not self.speaking:
            return SILENT_FRAME
        self.voiced_frames += 1
        frame = VOWEL_FRAMES[self._phase % len(VOWEL_FRAMES)]
        self._phase += 1
        return frame

    def as_dict(self) -> dict:
        return {"frames": self.frames, "voiced_frames": self.voiced_frames, "speaking": self.speaking}
