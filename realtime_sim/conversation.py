"""The GA event protocol of one call: session, items, input audio, responses."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Callable

from . import ids, tooluse, usage
from .answers import pick_answer
from .audio import OutputAudio, rms_s16
from .config import SimConfig
from .events import copy_json, error_event, server_event
from .items import ItemRecord, ItemStore, ProtocolError, normalize_client_item
from .responder import ResponsePlan, ResponseRun
from .schema import (
    RequestError,
    apply_session_update,
    validate_max_output_tokens,
    validate_output_modalities,
    validate_session,
    voice_name,
)
from .vad import SpeechStarted, SpeechStopped, VoiceActivityDetector

MIN_COMMIT_MS = 100
APPEND_CHUNK_BYTES = 960  # 20 ms of 24 kHz pcm16 from input_audio_buffer.append
RESPONSE_PARAMS = (
    "output_modalities", "instructions", "audio", "tools", "tool_choice", "parallel_tool_calls",
    "reasoning", "max_output_tokens", "conversation", "metadata", "prompt", "input",
)
REQUIRED_FIELDS = {
    "session.update": ("session",),
    "conversation.item.create": ("item",),
    "conversation.item.delete": ("item_id",),
    "conversation.item.retrieve": ("item_id",),
    "conversation.item.truncate": ("item_id", "content_index", "audio_end_ms"),
    "input_audio_buffer.append": ("audio",),
    "input_audio_buffer.commit": (),
    "input_audio_buffer.clear": (),
    "output_audio_buffer.clear": (),
    "response.create": (),
    "response.cancel": (),
}


def _placeholder_transcript(ms: float) -> str:
    return f"(about {ms / 1000:.1f} seconds of speech)"


@dataclass
class AutoCall:
    """A function call the simulated model made by itself for a user turn."""

    call_id: str
    turn_item_id: str
    turn_text: str
    query: str
    run: ResponseRun
    answer_run: ResponseRun | None = None

    @property
    def answered(self) -> bool:
        # A cut-short answer does not count: the next response answers the output again.
        return self.answer_run is not None and self.answer_run.status != "cancelled"


class Conversation:
    """Consumes client events and microphone loudness; produces server events via `emit`."""

    def __init__(self, session: dict, emit: Callable[[dict], None], output_audio: OutputAudio | None = None, *,
                 config: SimConfig | None = None, clock: Callable[[], float] | None = None) -> None:
        self.session = copy_json(session)
        self._emit = emit
        self.config = config or SimConfig()  # read live: /_sim/config reaches calls in progress
        self._clock = clock or time.time
        self.output_audio = output_audio or OutputAudio()
        self.items = ItemStore()
        self.conversation_id = ids.conversation_id()
        self.vad = VoiceActivityDetector(self.session["audio"]["input"]["turn_detection"])
        self.active: ResponseRun | None = None
        self.playing: ResponseRun | None = None  # a finished response whose audio still plays
        self.responses: list[ResponseRun] = []
        self.truncations: list[dict] = []
        self._timers: set[asyncio.TimerHandle] = set()  # delayed transcriptions
        self.billed_input: list[usage.Segment] = []  # input of the previous response, for caching
        self.document_turns = 0
        self.script: dict = {}
        self.user_transcript: str | None = None
        self.auto_calls: dict[str, AutoCall] = {}  # call_id -> the model's own tool call
        self.called_turns: dict[str, str] = {}  # user turn item id -> call_id (one call per turn)
        self.speech_item_id: str | None = None
        self.audio_started = False
        self.closed = False

    # -- plumbing ---------------------------------------------------------------

    def emit(self, event: dict) -> None:
        if not self.closed:
            self._emit(event)

    def now_ms(self) -> float:
        return float(self._clock()) * 1000

    def session_created_event(self) -> dict:
        return server_event("session.created", session=copy_json(self.session))

    @property
    def turn_detection(self) -> dict | None:
        return self.session["audio"]["input"]["turn_detection"]

    def set_script(self, script: dict) -> None:
        """Script the next response (text / usage / function_call) or the next user transcript."""
        if "user_transcript" in script:
            self.user_transcript = str(script["user_transcript"])
        for key in ("text", "usage", "function_call"):
            if key in script:
                self.script[key] = script[key]

    def close(self) -> None:
        if self.active is not None:
            self.active.abort()
            self.active = None
        if self.playing is not None:
            self.playing.end_playback("closed", emit=False)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.output_audio.stop()
        self.closed = True

    def stop_playing_tail(self) -> None:
        """End the audio still playing after its response.done (output_audio_buffer.stopped)."""
        if self.playing is not None:
            self.playing.end_playback("stopped")

    def response_finished(self, run: ResponseRun) -> None:
        if self.active is run:
            self.active = None

    # -- client events ------------------------------------------------------------

    def handle_client_event(self, raw: str | dict) -> None:
        """Dispatch one client event; every refusal becomes an `error` event."""
        client_event_id = None
        try:
            if isinstance(raw, (str, bytes)):
                try:
                    event = json.loads(raw)
                except ValueError:
                    raise ProtocolError("Invalid JSON: the event could not be parsed.", "invalid_event") from None
            else:
                event = raw
            if not isinstance(event, dict):
                raise ProtocolError("The event must be a JSON object.", "invalid_event")
            if isinstance(event.get("event_id"), str):
                client_event_id = event["event_id"]
            kind = event.get("type")
            if kind is None:
                raise ProtocolError("The 'type' field is missing.", "invalid_event")
            if kind not in REQUIRED_FIELDS:
                raise ProtocolError(f"Invalid value: '{kind}'. Unknown client event type.", "invalid_event", "type")
            for key in REQUIRED_FIELDS[kind]:
                if key not in event:
                    raise ProtocolError(f"Missing required parameter: '{key}'.", "missing_required_parameter", key)
            handler = getattr(self, "_on_" + kind.replace(".", "_"))
            handler(event)
        except ProtocolError as exc:
            self.emit(error_event(exc.message, exc.code, exc.param, client_event_id))
        except RequestError as exc:
            self.emit(error_event(exc.message, exc.code, exc.param, client_event_id))

    def _on_session_update(self, event: dict) -> None:
        update = event["session"]
        validate_session(update, "session")
        if "model" in update and update["model"] != self.session["model"]:
            raise ProtocolError("Cannot update a conversation's model.", "invalid_value", "session.model")
        voice = ((update.get("audio") or {}).get("output") or {}).get("voice")
        if voice is not None and self.audio_started and voice_name(voice) != self.session["audio"]["output"]["voice"]:
            raise ProtocolError("Cannot update a conversation's voice if assistant audio is present.",
                                "cannot_update_voice", "session.audio.output.voice")
        self.session = apply_session_update(self.session, update)
        self.vad.configure(self.turn_detection)
        self.emit(server_event("session.updated", session=copy_json(self.session)))

    def _on_conversation_item_create(self, event: dict) -> None:
        record = normalize_client_item(event["item"])
        previous = event.get("previous_item_id")
        if previous is not None and not isinstance(previous, str):
            raise ProtocolError("'previous_item_id' must be a string.", "invalid_type", "previous_item_id")
        prev_id = self.items.insert(record, previous)
        self.emit(server_event("conversation.item.added", previous_item_id=prev_id, item=record.snapshot()))
        self.emit(server_event("conversation.item.done", previous_item_id=prev_id, item=record.snapshot()))

    def _on_conversation_item_delete(self, event: dict) -> None:
        item_id = event["item_id"]
        if self.active is not None and self.active.record and self.active.record.id == item_id:
            raise ProtocolError("Cannot delete an item of the response in progress.", "invalid_value", "item_id")
        self.items.delete(item_id)
        self.emit(server_event("conversation.item.deleted", item_id=item_id))

    def _on_conversation_item_retrieve(self, event: dict) -> None:
        record = self.items.get(event["item_id"])
        if record is None:
            raise ProtocolError(f"Item with id '{event['item_id']}' not found.", "item_not_found", "item_id")
        self.emit(server_event("conversation.item.retrieved", item=record.snapshot()))

    def _on_conversation_item_truncate(self, event: dict) -> None:
        record = self.items.get(event["item_id"])
        if record is None:
            raise ProtocolError(f"Item with id '{event['item_id']}' not found.", "item_not_found", "item_id")
        if self.active is not None and self.active.record is record:
            raise ProtocolError("Cancel the response before truncating its item.", "invalid_value", "item_id")
        index, end_ms = event["content_index"], event["audio_end_ms"]
        content = record.item.get("content") or []
        if record.item.get("role") != "assistant" or not isinstance(index, int) or not 0 <= index < len(content) \
                or content[index].get("type") != "output_audio":
            raise ProtocolError("Only assistant audio content can be truncated.", "invalid_value", "content_index")
        available = record.part_audio_ms.get(index, 0)
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or not 0 <= end_ms <= available:
            raise ProtocolError(
                f"Audio content of {int(available)}ms is shorter than {end_ms}ms.", "invalid_value", "audio_end_ms")
        run = next((r for r in self.responses if r.record is record), None)
        playing = self.playing is not None and self.playing is run
        played = run.played_ms() if run is not None and run.playback is not None else None
        if played is not None and end_ms > played:
            # The server plays WebRTC audio itself: it knows what has not been heard (yet).
            raise ProtocolError(
                f"Only {played}ms of the audio content has been played so far; cannot truncate at {end_ms}ms.",
                "invalid_value", "audio_end_ms")
        if self.config.truncate_transcript == "removed":
            content[index]["transcript"] = None
        else:
            words = (content[index].get("transcript") or "").split()
            keep = int(len(words) * end_ms / available) if available else 0
            content[index]["transcript"] = " ".join(words[:keep])  # the unheard part is forgotten
        record.part_audio_ms[index] = end_ms
        # Truncating does not stop the audio: output_audio_buffer.clear does.
        self.truncations.append({"at_ms": self.now_ms(), "item_id": record.id,
                                 "response_id": run.id if run is not None else None, "content_index": index,
                                 "audio_end_ms": end_ms, "played_ms": played, "while_playing": playing})
        self.emit(server_event("conversation.item.truncated", item_id=record.id, content_index=index,
                               audio_end_ms=end_ms))

    def _on_input_audio_buffer_append(self, event: dict) -> None:
        try:
            raw = base64.b64decode(event["audio"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise ProtocolError("Audio content is not valid base64.", "invalid_value", "audio") from None
        for start in range(0, len(raw) - 1, APPEND_CHUNK_BYTES):
            chunk = raw[start:start + APPEND_CHUNK_BYTES]
            self.feed_audio(rms_s16(chunk), len(chunk) / 48.0)

    def _on_input_audio_buffer_commit(self, event: dict) -> None:
        buffered = self.vad.buffered_ms
        if buffered < MIN_COMMIT_MS:
            raise ProtocolError(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {buffered:.2f}ms of audio.", "input_audio_buffer_commit_empty")
        item_id = self.speech_item_id or ids.item_id()
        self.speech_item_id = None
        self.vad.clear()
        self._commit_user_audio(item_id, buffered)

    def _on_input_audio_buffer_clear(self, event: dict) -> None:
        self.vad.clear()
        self.speech_item_id = None
        self.emit(server_event("input_audio_buffer.cleared"))

    def _on_output_audio_buffer_clear(self, event: dict) -> None:
        if self.active is not None and self.active.speaking:
            self.active.cancel("client_cancelled", buffer_event="cleared")
            return
        if self.playing is not None:  # after response.done, the audio still playing stops at once
            self.playing.end_playback("cleared")
            return
        last = self.responses[-1].id if self.responses else ""
        self.emit(server_event("output_audio_buffer.cleared", response_id=last))

    def _on_response_cancel(self, event: dict) -> None:
        wanted = event.get("response_id")
        if self.active is None or (wanted and wanted != self.active.id):
            raise ProtocolError("Cancellation failed: no active response found.", "response_cancel_not_active")
        self.active.cancel("client_cancelled")

    def _on_response_create(self, event: dict) -> None:
        params = event.get("response") or {}
        if not isinstance(params, dict):
            raise ProtocolError("'response' must be an object.", "invalid_type", "response")
        for key in params:
            if key not in RESPONSE_PARAMS:
                raise ProtocolError(f"Unknown parameter: 'response.{key}'.", "unknown_parameter", f"response.{key}")
        if "output_modalities" in params:
            validate_output_modalities(params["output_modalities"], "response.output_modalities")
        if "max_output_tokens" in params:
            validate_max_output_tokens(params["max_output_tokens"], "response.max_output_tokens")
        if self.active is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
                "conversation_already_has_active_response",
            )
        self.start_response(params)

    # -- input audio --------------------------------------------------------------

    def feed_audio(self, rms: float, duration_ms: float) -> None:
        """One microphone frame (its RMS, 0..1) for VAD and the buffer clock."""
        if self.closed:
            return
        for vad_event in self.vad.feed(rms, duration_ms):
            if isinstance(vad_event, SpeechStarted):
                self.speech_item_id = ids.item_id()
                self.emit(server_event("input_audio_buffer.speech_started",
                                       audio_start_ms=vad_event.audio_start_ms, item_id=self.speech_item_id))
                td = self.turn_detection or {}
                if self.active is not None and td.get("interrupt_response", True):
                    self.active.cancel("turn_detected", buffer_event="cleared")
                elif self.playing is not None and td.get("interrupt_response", True):
                    self.playing.end_playback("cleared")  # barge-in on a tail: the audio stops
            elif isinstance(vad_event, SpeechStopped):
                item_id = self.speech_item_id or ids.item_id()
                self.speech_item_id = None
                self.emit(server_event("input_audio_buffer.speech_stopped",
                                       audio_end_ms=vad_event.audio_end_ms, item_id=item_id))
                self._commit_user_audio(item_id, vad_event.audio_end_ms - vad_event.audio_start_ms)
                td = self.turn_detection or {}
                if td.get("create_response", True) and self.active is None:
                    self.start_response({})

    def _commit_user_audio(self, item_id: str, audio_ms: float) -> None:
        previous = self.items.last_id()
        item = {
            "id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        record = ItemRecord(item, {0: audio_ms}, spoken=self.user_transcript or None)
        self.items.insert(record)
        self.emit(server_event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id))
        self.emit(server_event("conversation.item.added", previous_item_id=previous, item=record.snapshot()))
        self.emit(server_event("conversation.item.done", previous_item_id=previous, item=record.snapshot()))
        transcript = self.user_transcript or _placeholder_transcript(audio_ms)
        self.user_transcript = None  # a scripted transcript covers one user turn
        if self.session["audio"]["input"].get("transcription") is None:
            return
        delay_ms = self.config.transcription_delay_ms
        if delay_ms:
            # Transcription runs beside the response, which never waits for it.
            loop = asyncio.get_running_loop()
            timer: asyncio.TimerHandle | None = None

            def fire() -> None:
                self._timers.discard(timer)
                self._transcribe(item, audio_ms, transcript)

            timer = loop.call_later(delay_ms / 1000, fire)
            self._timers.add(timer)
        else:
            self._transcribe(item, audio_ms, transcript)

    def _transcribe(self, item: dict, audio_ms: float, transcript: str) -> None:
        """The input-transcription events of one user audio item."""
        if self.closed:
            return
        item_id = item["id"]
        item["content"][0]["transcript"] = transcript
        words = transcript.split(" ")
        half = max(1, len(words) // 2)
        for piece in (" ".join(words[:half]), " " + " ".join(words[half:])):
            if piece.strip():
                self.emit(server_event("conversation.item.input_audio_transcription.delta", item_id=item_id,
                                       content_index=0, delta=piece, logprobs=None))
        model = (self.session["audio"]["input"].get("transcription") or {}).get("model")
        self.emit(server_event("conversation.item.input_audio_transcription.completed", item_id=item_id,
                               content_index=0, transcript=transcript, logprobs=None,
                               usage=usage.transcription_usage(audio_ms, transcript, model)))

    # -- responses ----------------------------------------------------------------

    def _tool_names(self, params: dict) -> set[str]:
        tools = params.get("tools", self.session.get("tools")) or []
        return {t.get("name") for t in tools if t.get("type", "function") == "function"}

    def start_response(self, params: dict) -> ResponseRun | None:
        session = self.session
        script, self.script = self.script, {}
        on_start: Callable[[ResponseRun], None] | None = None
        audio_out = {**session["audio"]["output"], **((params.get("audio") or {}).get("output") or {})}
        plan = ResponsePlan(
            kind="message",
            modality=(params.get("output_modalities") or session["output_modalities"])[0],
            instructions=params.get("instructions", session.get("instructions") or ""),
            audio_output=audio_out,
            max_output_tokens=params.get("max_output_tokens", session.get("max_output_tokens", "inf")),
            metadata=params.get("metadata"),
            usage_override=script.get("usage"),
        )
        call = script.get("function_call")
        if call:
            name = call.get("name")
            if name not in self._tool_names(params):
                self.emit(error_event(f"Scripted function '{name}' is not a tool of this session.",
                                      "tool_not_found", "session.tools"))
                return None
            arguments = call.get("arguments", {})
            plan.kind = "function_call"
            plan.function_name = name
            plan.arguments = arguments if isinstance(arguments, str) else json.dumps(arguments)
            plan.call_id = ids.function_call_id()
            turn = tooluse.latest_turn(self.items.records)
            if turn is not None:  # the turn has had its tool call: no automatic one after it
                self.called_turns.setdefault(turn.record.id, plan.call_id)
        elif "text" in script:
            plan.text = str(script["text"])
        else:
            on_start = self._plan_unscripted(plan, params)
        plan.fit_to_limit()
        run = ResponseRun(self, plan)
        self.active = run
        self.responses.append(run)
        if on_start is not None:
            on_start(run)
        if plan.kind == "message" and plan.modality == "audio":
            self.audio_started = True
        run.start()
        return run

    def _plan_unscripted(self, plan: ResponsePlan, params: dict) -> Callable[[ResponseRun], None] | None:
        """Fill an unscripted plan: the answer to the model's own call, the model's own call, or an answer.

        Returns what to record once the response exists (for an automatic call or its answer).
        """
        records = self.items.records
        turn = tooluse.latest_turn(records)
        answering = self._auto_output_to_answer(records, turn)
        if answering is not None:
            auto, output = answering
            plan.text = tooluse.tool_output_answer(output, auto.turn_text, auto.query)
            plan.after_call_id = auto.call_id

            def answered_by(run: ResponseRun) -> None:
                auto.answer_run = run
            return answered_by
        document = None
        last_is_output = bool(records) and records[-1].item.get("type") == "function_call_output"
        if turn is not None and turn.text and not last_is_output:
            if turn.record.id in self.called_turns:
                called = self.auto_calls.get(self.called_turns[turn.record.id])
                if called is not None and self._waiting_for_output(called, records):
                    plan.text = tooluse.WAITING_ANSWER
                    return None
            else:
                document = tooluse.answering_document(turn.text, tooluse.documents(records))
                tool = tooluse.tool_for_turn(params, self.session)
                if document is None and tool is not None and tooluse.significant_words(turn.text):
                    plan.kind = "function_call"
                    plan.function_name = tool["name"]
                    plan.arguments, query = tooluse.call_arguments(tool, turn.text)
                    call_id = plan.call_id = ids.function_call_id()

                    def called_by(run: ResponseRun) -> None:
                        self.auto_calls[call_id] = AutoCall(call_id, turn.record.id, turn.text, query, run)
                        self.called_turns[turn.record.id] = call_id
                    return called_by
        if document is not None:
            answer = tooluse.document_sentence_answer(document, turn.text)
            if answer:
                plan.text = answer
                return None
        plan.text, used_document = pick_answer(records, self.document_turns)
        if used_document:
            self.document_turns += 1
        if last_is_output:
            plan.after_call_id = records[-1].item.get("call_id")
        return None

    def _auto_output_to_answer(self, records: list[ItemRecord], turn: tooluse.Turn | None):
        """(call, output) for the newest unanswered output of the model's own call after the latest turn."""
        start = next((i + 1 for i, r in enumerate(records) if r is turn.record), 0) if turn is not None else 0
        for record in reversed(records[start:]):
            item = record.item
            if item.get("type") != "function_call_output":
                continue
            auto = self.auto_calls.get(item.get("call_id"))
            if auto is not None and not auto.answered:
                return auto, str(item.get("output", ""))
        return None

    @staticmethod
    def _waiting_for_output(auto: AutoCall, records: list[ItemRecord]) -> bool:
        """The call went out whole and its output has not come yet."""
        if auto.run.status != "completed":
            return False  # cut short: the client will not answer it
        return not any(r.item.get("type") == "function_call_output" and r.item.get("call_id") == auto.call_id
                       for r in records)

    def responses_summary(self) -> list[dict]:
        return [run.summary() for run in self.responses]

