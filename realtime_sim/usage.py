"""Token accounting that follows the Realtime API billing rules.

Every function here is pure so the numbers can be unit-tested exactly:

* user audio: 1 token per 100 ms; assistant audio: 1 token per 50 ms;
* text: o200k_base token count;
* each response re-bills instructions + every conversation item as input;
  the unchanged prefix already billed by the previous response is "cached".
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

AUDIO_IN_MS_PER_TOKEN = 100
AUDIO_OUT_MS_PER_TOKEN = 50
# bpe-openai refuses very long inputs, so long text is counted in slices.
_CHUNK_CHARS = 8000
_KINDS = ("text", "audio", "image")


@lru_cache(maxsize=1)
def _encoding():
    import bpe_openai

    return bpe_openai.get_encoding("o200k_base")


def _split_for_counting(text: str) -> list[str]:
    chunks: list[str] = []
    start = 0
    while len(text) - start > _CHUNK_CHARS:
        end = start + _CHUNK_CHARS
        # Cut just before a whitespace so the word keeps its leading space,
        # which is how o200k pre-tokenises; counts then match whole-text counts.
        cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
        if cut <= start:
            cut = end
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return chunks


@lru_cache(maxsize=4096)
def count_text_tokens(text: str) -> int:
    """o200k_base token count; special-token strings are counted as plain text."""
    if not text:
        return 0
    enc = _encoding()
    return sum(len(enc.encode_ordinary(chunk)) for chunk in _split_for_counting(text))


def input_audio_tokens(ms: float) -> int:
    """User audio: 1 token per started 100 ms."""
    return math.ceil(max(0.0, ms) / AUDIO_IN_MS_PER_TOKEN - 1e-9)


def output_audio_tokens(ms: float) -> int:
    """Assistant audio: 1 token per started 50 ms."""
    return math.ceil(max(0.0, ms) / AUDIO_OUT_MS_PER_TOKEN - 1e-9)


@dataclass(frozen=True)
class Segment:
    """One billable piece of the model input, compared by value for caching."""

    key: str
    kind: str  # "text" | "audio" | "image"
    tokens: int


def instructions_segment(instructions: str) -> Segment:
    digest = hashlib.sha1(instructions.encode("utf-8")).hexdigest()[:16]
    return Segment(f"instructions:{digest}", "text", count_text_tokens(instructions))


def item_segments(item: Mapping, part_audio_ms: Mapping[int, float] | None = None) -> list[Segment]:
    """Segments for one conversation item.

    Message parts: input_text/output_text -> text tokens; input_audio -> 1/100 ms;
    output_audio (earlier assistant speech, re-read as input) -> 1/50 ms;
    input_image -> image tokens (0 in the simulator). Function calls bill their
    arguments, function outputs their output, as text.
    """
    part_audio_ms = part_audio_ms or {}
    item_id = str(item.get("id", ""))
    kind = item.get("type")
    if kind == "function_call":
        return [Segment(f"{item_id}:args", "text", count_text_tokens(str(item.get("arguments", ""))))]
    if kind == "function_call_output":
        return [Segment(f"{item_id}:output", "text", count_text_tokens(str(item.get("output", ""))))]
    segments = []
    for index, part in enumerate(item.get("content") or []):
        ptype = part.get("type")
        key = f"{item_id}:{index}"
        if ptype in ("input_text", "output_text", "text"):
            segments.append(Segment(key, "text", count_text_tokens(str(part.get("text") or ""))))
        elif ptype == "input_audio":
            segments.append(Segment(key, "audio", input_audio_tokens(part_audio_ms.get(index, 0))))
        elif ptype in ("output_audio", "audio"):
            segments.append(Segment(key, "audio", output_audio_tokens(part_audio_ms.get(index, 0))))
        elif ptype == "input_image":
            segments.append(Segment(key, "image", 0))
    return segments


def input_segments(
    instructions: str, items: Iterable[tuple[Mapping, Mapping[int, float] | None]]
) -> list[Segment]:
    """The whole conversation as billed input: instructions first, then items in order."""
    segments = [instructions_segment(instructions)]
    for item, audio_ms in items:
        segments.extend(item_segments(item, audio_ms))
    return segments


def cached_prefix(previous: Sequence[Segment], current: Sequence[Segment]) -> list[Segment]:
    """Longest common prefix of the previous response's input and this one's."""
    prefix = []
    for old, new in zip(previous, current):
        if old != new:
            break
        prefix.append(new)
    return prefix


def _by_kind(segments: Iterable[Segment]) -> dict[str, int]:
    totals = {kind: 0 for kind in _KINDS}
    for seg in segments:
        totals[seg.kind] += seg.tokens
    return totals


def response_usage(
    current_input: Sequence[Segment],
    previous_input: Sequence[Segment],
    output_text_tokens: int,
    output_audio_tokens_: int,
) -> dict:
    """The `response.done.response.usage` object."""
    inp = _by_kind(current_input)
    cached = _by_kind(cached_prefix(previous_input, current_input))
    input_total = sum(inp.values())
    output_total = output_text_tokens + output_audio_tokens_
    return {
        "total_tokens": input_total + output_total,
        "input_tokens": input_total,
        "output_tokens": output_total,
        "input_token_details": {
            "text_tokens": inp["text"],
            "audio_tokens": inp["audio"],
            "image_tokens": inp["image"],
            "cached_tokens": sum(cached.values()),
            "cached_tokens_details": {
                "text_tokens": cached["text"],
                "audio_tokens": cached["audio"],
                "image_tokens": cached["image"],
            },
        },
        "output_token_details": {
            "text_tokens": output_text_tokens,
            "audio_tokens": output_audio_tokens_,
        },
    }


# Input transcription models billed by the minute of audio; their usage is a duration, not tokens
# (usage.yaml `TranscriptTextUsageDuration`; FACTS section 7: whisper-1 and gpt-transcribe per minute).
PER_MINUTE_TRANSCRIPTION = frozenset({"whisper-1", "gpt-transcribe"})


def transcription_usage(audio_ms: float, transcript: str, model: str | None = None) -> dict:
    """Usage of `conversation.item.input_audio_transcription.completed`: the seconds of audio for a
    model billed by the minute, else the ASR tokens."""
    if model in PER_MINUTE_TRANSCRIPTION:
        return {"type": "duration", "seconds": round(audio_ms / 1000, 3)}
    audio = input_audio_tokens(audio_ms)
    out = count_text_tokens(transcript)
    return {
        "type": "tokens",
        "total_tokens": audio + out,
        "input_tokens": audio,
        "input_token_details": {"text_tokens": 0, "audio_tokens": audio},
        "output_tokens": out,
    }


def merge_override(base: dict, override: Mapping) -> dict:
    """Deep-merge a scripted usage override over a computed usage object."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_override(merged[key], value)
        else:
            merged[key] = value
    return merged

