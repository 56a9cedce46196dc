"""Energy-based voice activity detection and the input audio buffer clock.

Times are milliseconds of audio received since the call started (the
timeline of `audio_start_ms` / `audio_end_ms`), not wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass

from .audio import VOICED_RMS

START_FRAMES = 3  # consecutive voiced frames before speech counts as started
SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 500, "auto": 500, "high": 250}


@dataclass
class SpeechStarted:
    audio_start_ms: int


@dataclass
class SpeechStopped:
    audio_start_ms: int
    audio_end_ms: int


class VoiceActivityDetector:
    """Feeds on per-frame RMS values; reports speech start/stop.

    With `turn_detection: null` (push-to-talk) it only keeps the buffer clock:
    no events, audio accumulates until a commit or clear.
    """

    def __init__(self, turn_detection: dict | None = None, threshold: float = VOICED_RMS) -> None:
        self.threshold = threshold
        self.audio_ms = 0.0
        self.buffer_start_ms = 0.0
        self.in_speech = False
        self.speech_start_ms = 0
        self._voiced_run = 0
        self._first_voiced_ms = 0.0
        self._silence_ms = 0.0
        self.configure(turn_detection)

    def configure(self, turn_detection: dict | None) -> None:
        self.enabled = turn_detection is not None
        td = turn_detection or {}
        self.prefix_padding_ms = int(td.get("prefix_padding_ms", 300) if td.get("type") == "server_vad" else 300)
        if td.get("type") == "semantic_vad":
            self.silence_duration_ms = SEMANTIC_SILENCE_MS.get(td.get("eagerness", "auto"), 500)
        else:
            self.silence_duration_ms = int(td.get("silence_duration_ms", 500))
        if not self.enabled:
            self.in_speech = False
            self._voiced_run = 0

    @property
    def buffered_ms(self) -> float:
        """Audio in the input buffer since the last commit/clear."""
        return max(0.0, self.audio_ms - self.buffer_start_ms)

    def clear(self) -> None:
        self.buffer_start_ms = self.audio_ms
        self.in_speech = False
        self._voiced_run = 0
        self._silence_ms = 0.0

    def feed(self, rms: float, duration_ms: float) -> list:
        t0 = self.audio_ms
        t1 = t0 + duration_ms
        self.audio_ms = t1
        if not self.enabled:
            return []
        voiced = rms > self.threshold
        events: list = []
        if not self.in_speech:
            if voiced:
                if self._voiced_run == 0:
                    self._first_voiced_ms = t0
                self._voiced_run += 1
                if self._voiced_run >= START_FRAMES:
                    self.in_speech = True
                    self._silence_ms = 0.0
                    start = max(self.buffer_start_ms, self._first_voiced_ms - self.prefix_padding_ms)
                    self.buffer_start_ms = start
                    self.speech_start_ms = int(round(start))
                    events.append(SpeechStarted(self.speech_start_ms))
            else:
                self._voiced_run = 0
                # Idle server VAD keeps only the prefix padding in its buffer.
                self.buffer_start_ms = max(self.buffer_start_ms, t1 - self.prefix_padding_ms)
        else:
            self._silence_ms = 0.0 if voiced else self._silence_ms + duration_ms
            if self._silence_ms >= self.silence_duration_ms:
                self.in_speech = False
                self._voiced_run = 0
                end = int(round(t1))
                events.append(SpeechStopped(self.speech_start_ms, end))
                self.buffer_start_ms = t1
        return events
