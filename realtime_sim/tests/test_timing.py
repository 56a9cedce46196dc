"""Timing the real API has: late input transcriptions."""

from __future__ import annotations

import asyncio
import time

import pytest

from realtime_sim import responder, usage
from realtime_sim.config import SimConfig

from .test_conversation import Harness

TRANSCRIBED = {"type": "realtime", "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}}


@pytest.fixture
def short_speech(monkeypatch):
    """Every answer speaks for exactly 1.5 s."""
    monkeypatch.setattr(responder, "MS_PER_CHAR", 1)
    monkeypatch.setattr(responder, "MIN_SPEECH_MS", 1500)
    usage.count_text_tokens("warm up")  # loading the tokenizer the first time blocks for a second


def _harness(session: dict | None = None, **settings) -> Harness:
    h = Harness(session)
    h.conv.config = SimConfig.build(settings)
    return h


def _index(h: Harness, type_: str) -> int:
    return h.types().index(type_)


async def test_delayed_transcription_arrives_after_the_response(short_speech):
    h = _harness(TRANSCRIBED, transcription_delay_ms=1800)
    h.speak(600, 600)  # a VAD turn: commit, then a response at once
    committed_at = time.monotonic()
    assert "response.created" in h.types()
    assert "conversation.item.input_audio_transcription.completed" not in h.types()
    await h.finish()  # the response does not wait for the transcription
    assert "conversation.item.input_audio_transcription.completed" not in h.types()
    while "conversation.item.input_audio_transcription.completed" not in h.types():
        await asyncio.sleep(0.02)
    assert time.monotonic() - committed_at >= 1.75
    assert _index(h, "input_audio_buffer.committed") < _index(h, "response.created") \
        < _index(h, "response.done") < _index(h, "conversation.item.input_audio_transcription.delta") \
        < _index(h, "conversation.item.input_audio_transcription.completed")
    completed = h.of("conversation.item.input_audio_transcription.completed")[0]
    committed = h.of("input_audio_buffer.committed")[0]
    assert completed["item_id"] == committed["item_id"]
    assert completed["usage"]["type"] == "tokens" and completed["usage"]["input_tokens"] > 0
    assert h.conv.items.get(committed["item_id"]).item["content"][0]["transcript"] == completed["transcript"]
    h.check()


async def test_transcription_without_delay_comes_first_and_a_closed_call_drops_a_pending_one(short_speech):
    h = _harness(TRANSCRIBED)
    h.speak(600, 600)
    assert _index(h, "conversation.item.input_audio_transcription.completed") < _index(h, "response.created")
    h.conv.close()
    late = _harness(TRANSCRIBED, transcription_delay_ms=100)
    late.speak(600, 600)
    late.conv.close()
    await asyncio.sleep(0.2)
    assert "conversation.item.input_audio_transcription.completed" not in late.types()
