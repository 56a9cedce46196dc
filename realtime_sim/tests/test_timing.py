"""Timing the real API has over WebRTC: late input transcriptions, and audio that plays on
after response.done (playback_after_done)."""

from __future__ import annotations

import asyncio
import time

import pytest

from realtime_sim import responder, usage
from realtime_sim.config import SimConfig

from .conformance import check_server_events
from .conftest import API_KEY
from .rtc_client import RtcClient
from .sideband_client import call_detail
from .test_conversation import Harness

TRANSCRIBED = {"type": "realtime", "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}}
TEN_WORDS = "one two three four five six seven eight nine ten"


@pytest.fixture
def short_speech(monkeypatch):
    """Every answer speaks for exactly 1.5 s, so a tail lasts 1 s."""
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


async def test_playback_after_done_tail_cancel_truncate_and_stop(short_speech):
    h = _harness(playback_after_done=True)
    h.conv.set_script({"text": TEN_WORDS})
    h.send({"type": "response.create"})
    started = time.monotonic()
    await h.finish()
    generated_after = time.monotonic() - started
    assert 0.45 <= generated_after < 0.9  # a third of the 1.5 s of audio
    done = h.of("response.done")[0]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"] == TEN_WORDS  # every delta came early
    assert done["usage"]["output_token_details"]["audio_tokens"] == usage.output_audio_tokens(1500)
    assert "output_audio_buffer.stopped" not in h.types()
    assert h.conv.output_audio.speaking  # still playing on the media track
    run = h.conv.responses[0]
    assert run.summary()["playback"]["state"] == "playing"

    h.send({"type": "response.cancel"})  # nothing is active any more
    assert h.of("error")[-1]["error"]["code"] == "response_cancel_not_active"
    assert h.conv.output_audio.speaking

    item_id = run.record.id
    h.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 1400})
    refusal = h.of("error")[-1]["error"]
    assert refusal["param"] == "audio_end_ms" and "played so far" in refusal["message"]
    assert not h.of("conversation.item.truncated")
    while run.played_ms() < 700:
        await asyncio.sleep(0.02)
    h.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 600})
    assert h.of("conversation.item.truncated")[0]["audio_end_ms"] == 600
    assert run.record.item["content"][0]["transcript"] == "one two three four"  # 10 words * 600/1500
    truncation = h.conv.truncations[0]
    assert truncation["while_playing"] is True and truncation["played_ms"] >= 700
    assert truncation["response_id"] == run.id and truncation["audio_end_ms"] == 600
    assert h.conv.output_audio.speaking  # truncating alone does not stop the audio

    while "output_audio_buffer.stopped" not in h.types():
        await asyncio.sleep(0.02)
    assert 1.4 <= time.monotonic() - started < 1.9
    assert h.of("output_audio_buffer.stopped")[0]["response_id"] == run.id
    assert not h.conv.output_audio.speaking
    summary = run.summary()
    assert summary["playback"]["state"] == "stopped" and summary["playback"]["played_ms"] == 1500
    assert summary["playback"]["cleared_at_ms"] is None
    assert summary["usage"] == done["usage"]  # billed as generated, whatever was heard
    h.check()


async def test_clearing_or_talking_over_a_tail_stops_it_at_once(short_speech):
    h = _harness(playback_after_done=True)
    h.send({"type": "response.create"})
    await h.finish()
    await asyncio.sleep(0.2)
    run = h.conv.responses[0]
    h.send({"type": "output_audio_buffer.clear"})
    assert h.types()[-1] == "output_audio_buffer.cleared"
    assert h.of("output_audio_buffer.cleared")[0]["response_id"] == run.id
    assert not h.conv.output_audio.speaking and h.conv.playing is None
    playback = run.summary()["playback"]
    assert playback["state"] == "cleared" and playback["cleared_at_ms"] is not None
    assert 600 <= playback["played_ms"] <= 1000
    played = playback["played_ms"]
    item_id = run.record.id
    h.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
            "audio_end_ms": played + 100})
    assert h.of("error")[-1]["error"]["param"] == "audio_end_ms"  # never heard
    h.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": played})
    assert h.conv.truncations[-1]["while_playing"] is False
    await asyncio.sleep(1.0)
    assert "output_audio_buffer.stopped" not in h.types()

    # A new answer ends the previous tail; talking over the next tail clears it.
    h.send({"type": "response.create"})
    await h.finish()
    h.send({"type": "response.create"})
    second, third = h.conv.responses[1], h.conv.responses[2]

    def at(type_: str, run) -> int:
        return next(i for i, e in enumerate(h.events) if e["type"] == type_ and e.get("response_id") == run.id)

    assert at("output_audio_buffer.stopped", second) < at("output_audio_buffer.started", third)
    assert second.summary()["playback"]["played_ms"] < 1500
    await h.finish()
    h.speak(100)  # speech_started
    assert h.of("output_audio_buffer.cleared")[-1]["response_id"] == third.id
    assert third.summary()["playback"]["state"] == "cleared"
    h.conv.close()
    h.check()


async def test_tail_audio_keeps_playing_on_the_media_track_until_cleared(sim, http):
    await http.post(f"{sim.base_url}/_sim/config", json={"playback_after_done": True})
    client = RtcClient()
    try:
        await client.connect(sim.base_url, API_KEY)
        text = "A fairly long answer that keeps on speaking for a while."  # 3.6 s of audio
        await http.post(f"{sim.base_url}/_sim/calls/{client.call_id}/script", json={"text": text})
        client.send({"type": "response.create"})
        started = await client.wait_for("output_audio_buffer.started")
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert done["response"]["output"][0]["content"][0]["transcript"] == text
        at_done = client.voiced_audio_frames
        await asyncio.sleep(0.6)
        assert client.voiced_audio_frames - at_done >= 20  # ~30 frames of voice after response.done
        detail = await call_detail(sim.base_url, http, client.call_id)
        assert detail["responses"][0]["playback"]["state"] == "playing"
        assert detail["audio_out"]["speaking"] is True

        client.send({"type": "output_audio_buffer.clear"})
        cleared = await client.wait_for("output_audio_buffer.cleared")
        assert cleared["response_id"] == started["response_id"]
        await asyncio.sleep(0.15)  # frames already in flight
        after_clear = client.voiced_audio_frames
        await asyncio.sleep(0.5)
        assert client.voiced_audio_frames - after_clear <= 2
        detail = await call_detail(sim.base_url, http, client.call_id)
        playback = detail["responses"][0]["playback"]
        assert playback["state"] == "cleared" and playback["cleared_at_ms"] >= detail["responses"][0]["done_at_ms"]
        assert playback["played_ms"] < playback["total_ms"] == 3640
        assert "output_audio_buffer.stopped" not in client.types()
        check_server_events(client.events)
    finally:
        await client.close()
