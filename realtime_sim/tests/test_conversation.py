"""The GA event protocol, driven directly (no network), every event schema-checked."""

from __future__ import annotations

import base64
import json
import math
import re
from array import array
from pathlib import Path

import pytest

from realtime_sim import responder
from realtime_sim.conversation import Conversation
from realtime_sim.events import copy_json
from realtime_sim.schema import effective_session

from .conformance import check_server_events

DOC = "Document: Handbook\n# Leave\nEmployees get 25 days of leave. The office opens at 8 am."


class Harness:
    def __init__(self, session: dict | None = None) -> None:
        self.events: list[dict] = []
        self.conv = Conversation(effective_session(session or {"type": "realtime"}, "sess_test"), self.events.append)

    def send(self, event) -> None:
        self.conv.handle_client_event(event if isinstance(event, str) else json.dumps(event))

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, type_: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type_]

    def speak(self, voiced_ms: int, silence_ms: int = 0, rms: float = 0.3) -> None:
        for _ in range(voiced_ms // 20):
            self.conv.feed_audio(rms, 20)
        for _ in range(silence_ms // 20):
            self.conv.feed_audio(0.0, 20)

    async def finish(self) -> None:
        if self.conv.active is not None:
            await self.conv.active.finished.wait()

    def check(self) -> None:
        check_server_events(self.events)


@pytest.fixture
def fast_speech(monkeypatch):
    """Short assistant audio so protocol tests stay quick."""
    monkeypatch.setattr(responder, "MS_PER_CHAR", 4)
    monkeypatch.setattr(responder, "MIN_SPEECH_MS", 100)


def _doc_item(text=DOC, role="user"):
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}}


async def test_invalid_events_become_error_events_and_the_session_stays_open():
    h = Harness()
    h.send("{not json")
    h.send(json.dumps({"event_id": "evt_1", "session": {}}))
    h.send(json.dumps({"type": "response.explode", "event_id": "evt_2"}))
    h.send(json.dumps(["a list"]))
    h.send(json.dumps({"type": "conversation.item.delete"}))
    errors = [e["error"] for e in h.of("error")]
    assert [e["code"] for e in errors] == [
        "invalid_event", "invalid_event", "invalid_event", "invalid_event", "missing_required_parameter"]
    assert all(e["type"] == "invalid_request_error" for e in errors)
    assert errors[1]["event_id"] == "evt_1" and errors[2]["event_id"] == "evt_2"
    assert errors[1]["message"] == "The 'type' field is missing."
    h.send(_doc_item())  # still serving
    assert h.types()[-2:] == ["conversation.item.added", "conversation.item.done"]
    h.check()


async def test_session_update_merges_and_refuses_bad_changes():
    h = Harness({"type": "realtime", "instructions": "Be brief."})
    h.send({"type": "session.update", "session": {
        "type": "realtime", "instructions": "Be kind.",
        "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}},
                  "output": {"voice": "marin"}}}})
    session = h.of("session.updated")[-1]["session"]
    assert session["instructions"] == "Be kind."
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad", "eagerness": "high", "create_response": True, "interrupt_response": True}
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert h.conv.vad.silence_duration_ms == 250
    h.send({"type": "session.update", "session": {"instructions": "no type"}})
    h.send({"type": "session.update", "session": {"type": "realtime", "model": "gpt-realtime-mini"}})
    h.send({"type": "session.update", "session": {"type": "realtime", "modalities": ["text"]}})
    h.send({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text", "audio"]}})
    codes = [(e["error"]["code"], e["error"]["param"]) for e in h.of("error")]
    assert codes == [
        ("missing_required_parameter", "session.type"),
        ("invalid_value", "session.model"),
        ("unknown_parameter", "session.modalities"),
        ("invalid_value", "session.output_modalities"),
    ]
    h.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}})
    assert h.of("session.updated")[-1]["session"]["audio"]["input"]["turn_detection"] is None
    assert h.conv.vad.enabled is False
    h.check()


async def test_voice_is_locked_after_the_first_audio(fast_speech):
    h = Harness()
    h.send({"type": "response.create"})
    await h.finish()
    h.send({"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "cedar"}}}})
    assert h.of("error")[-1]["error"]["code"] == "cannot_update_voice"
    h.check()


async def test_item_create_honours_previous_item_id_and_item_ops():
    h = Harness()
    h.send({"type": "conversation.item.create", "item": {
        "id": "item_a", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "A"}]}})
    h.send({"type": "conversation.item.create", "previous_item_id": "root", "item": {
        "id": "item_b", "type": "message", "role": "system", "content": [{"type": "input_text", "text": "B"}]}})
    h.send({"type": "conversation.item.create", "previous_item_id": "item_b", "item": {
        "id": "item_c", "type": "function_call_output", "call_id": "call_1", "output": "{}"}})
    assert [r.id for r in h.conv.items] == ["item_b", "item_c", "item_a"]
    added = h.of("conversation.item.added")
    assert [e["previous_item_id"] for e in added] == [None, None, "item_b"]
    assert added[0]["item"]["object"] == "realtime.item" and added[0]["item"]["status"] == "completed"
    h.send({"type": "conversation.item.create", "previous_item_id": "item_zzz", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}})
    h.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant", "content": [{"type": "output_audio", "transcript": "x"}]}})
    h.send({"type": "conversation.item.create", "item": {"id": "item_a", "type": "message", "role": "user",
                                                         "content": [{"type": "input_text", "text": "dup"}]}})
    assert [e["error"]["code"] for e in h.of("error")] == ["item_not_found", "invalid_value", "duplicate_item_id"]
    h.send({"type": "conversation.item.retrieve", "item_id": "item_c"})
    assert h.of("conversation.item.retrieved")[0]["item"]["output"] == "{}"
    h.send({"type": "conversation.item.delete", "item_id": "item_c"})
    assert h.of("conversation.item.deleted")[0]["item_id"] == "item_c"
    h.send({"type": "conversation.item.retrieve", "item_id": "item_c"})
    assert h.of("error")[-1]["error"]["code"] == "item_not_found"
    # User audio given as base64 pcm16 24 kHz becomes a 500 ms audio item.
    pcm = base64.b64encode(bytes(24000)).decode()
    h.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_audio", "audio": pcm}]}})
    record = h.conv.items.records[-1]
    assert record.part_audio_ms == {0: 500.0} and "audio" not in record.item["content"][0]
    h.check()


async def test_truncate_shortens_assistant_audio(fast_speech):
    h = Harness()
    h.conv.set_script({"text": "one two three four five six seven eight nine ten"})
    h.send({"type": "response.create"})
    await h.finish()
    record = h.conv.items.records[-1]
    total = record.part_audio_ms[0]
    half = int(total // 2)
    h.send({"type": "conversation.item.truncate", "item_id": record.id, "content_index": 0, "audio_end_ms": half})
    assert h.of("conversation.item.truncated")[0]["audio_end_ms"] == half
    assert record.part_audio_ms[0] == half
    assert record.item["content"][0]["transcript"] == "one two three four five"
    h.send({"type": "conversation.item.truncate", "item_id": record.id, "content_index": 0, "audio_end_ms": 10 ** 6})
    assert h.of("error")[-1]["error"]["param"] == "audio_end_ms"
    h.check()


async def test_truncate_can_remove_the_whole_transcript(fast_speech):
    """The API reference's reading: truncating removes the server-side transcript, not only its unheard part."""
    h = Harness()
    h.conv.config.truncate_transcript = "removed"
    h.conv.set_script({"text": "one two three four five six seven eight nine ten"})
    h.send({"type": "response.create"})
    await h.finish()
    record = h.conv.items.records[-1]
    h.send({"type": "conversation.item.truncate", "item_id": record.id, "content_index": 0,
            "audio_end_ms": int(record.part_audio_ms[0] // 2)})
    h.send({"type": "conversation.item.retrieve", "item_id": record.id})
    assert h.of("conversation.item.retrieved")[0]["item"]["content"][0]["transcript"] is None
    h.check()


async def test_push_to_talk_needs_commit_and_response_create(fast_speech):
    h = Harness({"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    h.send({"type": "input_audio_buffer.commit"})
    assert h.of("error")[0]["error"]["code"] == "input_audio_buffer_commit_empty"
    h.speak(1000, 1000)
    assert not any(t.startswith("input_audio_buffer.speech") for t in h.types())
    assert not h.of("response.created")
    assert h.conv.vad.buffered_ms == 2000
    h.send({"type": "input_audio_buffer.clear"})
    assert h.of("input_audio_buffer.cleared") and h.conv.vad.buffered_ms == 0
    h.speak(700, 100)
    h.send({"type": "input_audio_buffer.commit"})
    committed = h.of("input_audio_buffer.committed")[0]
    user = h.conv.items.get(committed["item_id"])
    assert user.part_audio_ms == {0: 800}
    assert not h.of("response.created")  # committing alone never answers
    h.send({"type": "response.create"})
    await h.finish()
    assert h.of("response.done")[0]["response"]["status"] == "completed"
    assert h.of("response.done")[0]["response"]["usage"]["input_token_details"]["audio_tokens"] == 8
    h.check()


async def test_server_vad_turn_with_transcription_and_scripted_transcript(fast_speech):
    h = Harness({"type": "realtime", "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}})
    h.conv.set_script({"user_transcript": "What does the handbook say?"})
    h.speak(400, 0)
    h.speak(0, 60)
    h.speak(600, 600)
    started = h.of("input_audio_buffer.speech_started")[0]
    stopped = h.of("input_audio_buffer.speech_stopped")[0]
    assert started["audio_start_ms"] == 0 and started["item_id"] == stopped["item_id"]
    assert stopped["audio_end_ms"] == 400 + 60 + 600 + 500  # ends after silence_duration_ms (500)
    completed = h.of("conversation.item.input_audio_transcription.completed")[0]
    assert completed["transcript"] == "What does the handbook say?"
    assert "".join(e["delta"] for e in h.of("conversation.item.input_audio_transcription.delta")) == \
        "What does the handbook say?"
    assert completed["usage"]["input_tokens"] == 16  # 1560 ms of audio
    await h.finish()
    assert len(h.of("response.done")) == 1
    # Next turn: no script, a placeholder transcript.
    h.speak(1000, 600)
    await h.finish()
    assert h.of("conversation.item.input_audio_transcription.completed")[1]["transcript"] == \
        "(about 1.6 seconds of speech)"
    h.check()


async def test_a_transcription_billed_by_the_minute_reports_its_seconds(fast_speech):
    h = Harness({"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    h.speak(1000, 0)
    h.speak(0, 600)
    completed = h.of("conversation.item.input_audio_transcription.completed")[0]
    assert completed["usage"] == {"type": "duration", "seconds": 1.5}  # speech, then 500 ms of silence
    await h.finish()
    h.check()  # the event as the official schema has it


async def test_text_modality_uses_output_text_events():
    h = Harness({"type": "realtime", "output_modalities": ["text"]})
    h.send(_doc_item())
    h.send({"type": "response.create"})
    await h.finish()
    types = h.types()
    assert "response.output_text.delta" in types and "response.output_text.done" in types
    assert not any(t.startswith("output_audio_buffer") or "audio" in t.split(".")[1] for t in types
                   if t.startswith("response."))
    text = h.of("response.output_text.done")[0]["text"]
    assert text == "From the document: Employees get 25 days of leave."
    done = h.of("response.done")[0]["response"]
    assert done["output"][0]["content"] == [{"type": "output_text", "text": text}]
    assert done["usage"]["output_token_details"]["audio_tokens"] == 0
    # Sentences rotate across turns.
    h.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    await h.finish()
    assert h.of("response.output_text.done")[1]["text"] == "From the document: The office opens at 8 am."
    h.check()


async def test_one_active_response_and_cancel(fast_speech, monkeypatch):
    monkeypatch.setattr(responder, "MIN_SPEECH_MS", 3000)
    h = Harness()
    h.send({"type": "response.cancel"})
    assert h.of("error")[0]["error"]["code"] == "response_cancel_not_active"
    h.send({"type": "response.create", "event_id": "first"})
    h.send({"type": "response.create", "event_id": "second"})
    error = h.of("error")[-1]["error"]
    assert error["code"] == "conversation_already_has_active_response" and error["event_id"] == "second"
    h.send({"type": "response.cancel"})
    done = h.of("response.done")[0]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert h.types()[-1] == "output_audio_buffer.stopped"
    assert done["output"][0]["status"] == "incomplete"
    h.check()


async def test_output_audio_buffer_clear_cuts_speech(fast_speech, monkeypatch):
    monkeypatch.setattr(responder, "MIN_SPEECH_MS", 3000)
    h = Harness()
    h.send({"type": "response.create"})
    h.send({"type": "output_audio_buffer.clear"})
    assert h.types()[-2:] == ["response.done", "output_audio_buffer.cleared"]
    assert h.of("response.done")[0]["response"]["status"] == "cancelled"
    assert not h.conv.output_audio.speaking
    h.send({"type": "output_audio_buffer.clear"})  # nothing playing: still acknowledged
    assert h.types()[-1] == "output_audio_buffer.cleared"
    h.check()


async def test_scripted_function_call_and_missing_tool():
    tool = {"type": "function", "name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    h = Harness({"type": "realtime", "tools": [tool]})
    h.conv.set_script({"function_call": {"name": "get_weather", "arguments": {"city": "Paris"}}})
    h.send({"type": "response.create"})
    await h.finish()
    done_args = h.of("response.function_call_arguments.done")[0]
    assert done_args["name"] == "get_weather" and json.loads(done_args["arguments"]) == {"city": "Paris"}
    assert "".join(e["delta"] for e in h.of("response.function_call_arguments.delta")) == done_args["arguments"]
    response = h.of("response.done")[0]["response"]
    assert response["output"][0]["type"] == "function_call"
    assert response["output"][0]["call_id"] == done_args["call_id"]
    assert response["usage"]["output_token_details"] == {"text_tokens": 6, "audio_tokens": 0}
    assert not h.of("output_audio_buffer.started")
    h.conv.set_script({"function_call": {"name": "not_a_tool"}})
    h.send({"type": "response.create"})
    assert h.of("error")[-1]["error"]["code"] == "tool_not_found"
    assert len(h.of("response.created")) == 1
    h.check()


async def test_max_output_tokens_makes_an_incomplete_response():
    h = Harness({"type": "realtime", "output_modalities": ["text"], "max_output_tokens": 5})
    h.conv.set_script({"text": "one two three four five six seven eight nine ten eleven twelve"})
    h.send({"type": "response.create"})
    await h.finish()
    response = h.of("response.done")[0]["response"]
    assert response["status"] == "incomplete"
    assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert response["usage"]["output_tokens"] <= 5
    h.check()


async def test_append_feeds_vad_like_the_microphone(fast_speech):
    h = Harness()
    tone = array("h", (int(8000 * math.sin(2 * math.pi * 300 * n / 24000)) for n in range(24000))).tobytes()
    silence = bytes(24000)  # 500 ms
    h.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(tone + silence + silence).decode()})
    assert [t for t in h.types() if t.startswith("input_audio_buffer")] == [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
    await h.finish()
    h.send({"type": "input_audio_buffer.append", "audio": "***"})
    assert h.of("error")[-1]["error"]["param"] == "audio"
    h.check()


EMIT_RE = re.compile(r'server_event\(\s*f?"([a-z_.{}]+)"')


def _emittable_types() -> set[str]:
    """Every event type literal the package can emit (read from its source)."""
    found = {"error"}
    for path in Path(responder.__file__).parent.glob("*.py"):
        for name in EMIT_RE.findall(path.read_text()):
            if "{buffer_event}" in name:
                found |= {name.replace("{buffer_event}", kind) for kind in ("stopped", "cleared")}
            else:
                found.add(name)
    return found


async def test_every_emittable_event_type_is_produced_and_conforms(fast_speech):
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    h = Harness({"type": "realtime", "tools": [tool],
                 "audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    h.events.append(h.conv.session_created_event())
    h.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Hi."}})
    h.send(_doc_item())
    h.send({"type": "conversation.item.retrieve", "item_id": h.conv.items.records[0].id})
    h.speak(600, 600)  # VAD turn -> transcription -> audio response
    await h.finish()
    h.send({"type": "conversation.item.truncate", "item_id": h.conv.items.records[-1].id, "content_index": 0,
            "audio_end_ms": 20})
    h.send({"type": "response.create"})
    h.speak(100, 0)  # barge-in -> output_audio_buffer.cleared
    h.speak(0, 600)
    await h.finish()
    h.send({"type": "input_audio_buffer.clear"})
    h.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    await h.finish()
    h.conv.set_script({"function_call": {"name": "lookup", "arguments": "{}"}})
    h.send({"type": "response.create"})
    await h.finish()
    h.send({"type": "conversation.item.delete", "item_id": h.conv.items.records[0].id})
    h.send({"type": "nope"})
    h.check()
    missing = _emittable_types() - set(h.types())
    assert not missing, f"not exercised: {missing}"
    assert len(_emittable_types()) >= 30


def test_copy_json_is_deep_and_equal():
    session = {"type": "realtime", "tools": [{"name": "search", "parameters": {"required": ["q"]}}],
               "audio": {"input": {"turn_detection": None}}, "max_output_tokens": "inf", "tuple": (1, 2)}
    copied = copy_json(session)
    assert copied == session
    copied["tools"][0]["parameters"]["required"].append("x")
    copied["audio"]["input"]["turn_detection"] = {"type": "server_vad"}
    assert session["tools"][0]["parameters"]["required"] == ["q"]
    assert session["audio"]["input"]["turn_detection"] is None
