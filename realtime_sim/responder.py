"""One model response: its event sequence, pacing, cancellation and usage."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import ids, usage
from .answers import words_of
from .events import rate_limits_event, response_object, server_event
from .items import ItemRecord
from .playback import Playback, loop_time

if TYPE_CHECKING:
    from .conversation import Conversation

MS_PER_CHAR = 65
MIN_SPEECH_MS = 1200
MAX_SPEECH_MS = 6000
TEXT_MS_PER_WORD = 30
ARGUMENT_CHUNK_MS = 20
GENERATION_SHARE = 3  # with playback_after_done, generation takes a third of the audio's length


def speech_duration_ms(text: str, bounded: bool = True) -> int:
    """Spoken length of a reply: ~65 ms a character, 1.2-6 s, whole 20 ms frames."""
    ms = len(text) * MS_PER_CHAR
    if bounded:
        ms = min(MAX_SPEECH_MS, max(MIN_SPEECH_MS, ms))
    return max(20, int(ms) // 20 * 20)


@dataclass
class ResponsePlan:
    kind: str  # "message" | "function_call"
    modality: str  # "audio" | "text"
    instructions: str
    audio_output: dict
    text: str = ""
    function_name: str = ""
    arguments: str = ""
    max_output_tokens: Any = "inf"
    metadata: dict | None = None
    usage_override: dict | None = None
    call_id: str = ""  # a function_call's call_id, chosen up front (a new one if empty)
    after_call_id: str | None = None  # a message that answers this function call's output
    speech_ms: int = 0
    truncated: bool = False

    def fit_to_limit(self) -> None:
        """Shorten the reply so its output tokens respect max_output_tokens."""
        if self.kind == "message" and self.modality == "audio":
            self.speech_ms = speech_duration_ms(self.text)
        if self.max_output_tokens == "inf" or self.kind != "message":
            return
        limit = int(self.max_output_tokens)
        words = self.text.split()
        bounded = True
        while words:
            text = " ".join(words)
            ms = speech_duration_ms(text, bounded) if self.modality == "audio" else 0
            if usage.count_text_tokens(text) + usage.output_audio_tokens(ms) <= limit:
                self.text, self.speech_ms = text, ms
                return
            self.truncated = True
            bounded = False  # once cut, the audio follows the text length only
            words.pop()
        self.text, self.speech_ms, self.truncated = "", 0, True


class ResponseRun:
    """Runs a response: the opening events synchronously, then a paced task."""

    def __init__(self, conv: Conversation, plan: ResponsePlan) -> None:
        self.conv = conv
        self.plan = plan
        self.id = ids.response_id()
        self.status = "in_progress"
        self.status_details: dict | None = None
        self.usage: dict | None = None
        self.produced = ""
        self.audio_ms = 0
        self.record: ItemRecord | None = None
        self.previous_item_id: str | None = None
        self.input_segments: list = []
        self.task: asyncio.Task | None = None
        self._audio_t0: float | None = None
        self.playback: Playback | None = None
        self.done_at_ms: float | None = None
        # playback_after_done: response.done comes once generated; the audio plays on (the "tail").
        self.tail = (plan.kind == "message" and plan.modality == "audio" and conv.config.playback_after_done)
        self.tail_task: asyncio.Task | None = None
        self.finished = asyncio.Event()

    # -- helpers ----------------------------------------------------------------

    def _response(self, **extra: Any) -> dict:
        output = [self.record.snapshot()] if self.record and extra.get("status") != "in_progress" else []
        return response_object(
            self.id,
            self.conv.conversation_id,
            output=output,
            output_modalities=[self.plan.modality],
            max_output_tokens=self.plan.max_output_tokens,
            audio_output=self.plan.audio_output,
            metadata=self.plan.metadata,
            **extra,
        )

    def _ids(self) -> dict:
        return {"response_id": self.id, "item_id": self.record.id, "output_index": 0}

    @property
    def speaking(self) -> bool:
        return self.conv.output_audio.response_id == self.id

    def summary(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "status_details": self.status_details,
            "kind": self.plan.kind,
            "output_modalities": [self.plan.modality],
            "usage": self.usage,
            "transcript": self.produced if self.plan.kind == "message" else None,
            "arguments": self.produced if self.plan.kind == "function_call" else None,
            "call_id": self.record.item.get("call_id") if self.plan.kind == "function_call" and self.record else None,
            "name": self.plan.function_name if self.plan.kind == "function_call" else None,
            "after_call_id": self.plan.after_call_id if self.plan.kind == "message" else None,
            "audio_ms": self.audio_ms,
            "done_at_ms": self.done_at_ms,
            "playback": self.playback.as_dict(loop_time()) if self.playback else None,
        }

    @property
    def generation_ms(self) -> int:
        """How long generating the audio takes: all of it, or a third with playback_after_done."""
        total = self.plan.speech_ms
        if not self.tail:
            return total
        return max(20, total // GENERATION_SHARE // 20 * 20)

    def played_ms(self) -> int:
        """Audio heard so far (0 for responses without audio)."""
        if self.playback is None:
            return 0
        return self.playback.played_ms(loop_time())

    # -- start ------------------------------------------------------------------

    def start(self) -> None:
        conv = self.conv
        # The input is everything in the conversation before this response's output.
        self.input_segments = usage.input_segments(
            self.plan.instructions, [(r.item, r.part_audio_ms) for r in conv.items]
        )
        conv.emit(server_event("response.created", response=self._response(status="in_progress", usage=None)))
        reserved = sum(s.tokens for s in self.input_segments)
        conv.emit(rate_limits_event(reserved))
        if self.plan.kind == "function_call":
            item = {
                "id": ids.item_id(), "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "call_id": self.plan.call_id or ids.function_call_id(), "name": self.plan.function_name,
                "arguments": "",
            }
        else:
            item = {
                "id": ids.item_id(), "object": "realtime.item", "type": "message", "status": "in_progress",
                "role": "assistant", "content": [],
            }
        self.record = ItemRecord(item)
        self.previous_item_id = conv.items.insert(self.record)
        conv.emit(server_event("response.output_item.added", response_id=self.id, output_index=0,
                               item=self.record.snapshot()))
        conv.emit(server_event("conversation.item.added", previous_item_id=self.previous_item_id,
                               item=self.record.snapshot()))
        if self.plan.kind == "message":
            part = {"type": "audio", "transcript": ""} if self.plan.modality == "audio" else {"type": "text", "text": ""}
            conv.emit(server_event("response.content_part.added", **self._ids(), content_index=0, part=part))
            if self.plan.modality == "audio":
                conv.stop_playing_tail()  # one voice at a time: a new answer ends the last one's tail
                conv.output_audio.start(self.id)
                self._audio_t0 = asyncio.get_running_loop().time()
                self.playback = Playback(self.plan.speech_ms, self._audio_t0, conv.now_ms())
                conv.emit(server_event("output_audio_buffer.started", response_id=self.id))
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.plan.kind == "function_call":
            args = self.plan.arguments
            size = max(1, -(-len(args) // 3))
            for start in range(0, len(args), size):
                await asyncio.sleep(ARGUMENT_CHUNK_MS / 1000)
                chunk = args[start:start + size]
                self.produced += chunk
                self.conv.emit(server_event("response.function_call_arguments.delta", **self._ids(),
                                            call_id=self.record.item["call_id"], delta=chunk))
        elif self.plan.modality == "audio":
            deltas = words_of(self.plan.text)
            generation = self.generation_ms
            t0 = self._audio_t0
            for index, delta in enumerate(deltas):
                # Words are spread evenly over the generation so the transcript tracks speech.
                await asyncio.sleep(max(0.0, t0 + index * generation / len(deltas) / 1000 - loop.time()))
                self.produced += delta
                self.conv.emit(server_event("response.output_audio_transcript.delta", **self._ids(),
                                            content_index=0, delta=delta))
            await asyncio.sleep(max(0.0, t0 + generation / 1000 - loop.time()))
            self.audio_ms = self.plan.speech_ms  # all of it was generated, heard or not
        else:
            for delta in words_of(self.plan.text):
                await asyncio.sleep(TEXT_MS_PER_WORD / 1000)
                self.produced += delta
                self.conv.emit(server_event("response.output_text.delta", **self._ids(), content_index=0,
                                            delta=delta))
        # With a tail the audio plays on after response.done: no buffer event yet.
        buffer_event = None if self.tail else "stopped"
        if self.plan.truncated:
            self._finish("incomplete", {"type": "incomplete", "reason": "max_output_tokens"}, buffer_event)
        else:
            self._finish("completed", None, buffer_event)

    # -- end --------------------------------------------------------------------

    def cancel(self, reason: str, buffer_event: str = "stopped") -> bool:
        """Stop now; `reason` is turn_detected or client_cancelled. False if already over."""
        if self.status != "in_progress":
            return False
        if self.task is not None:
            self.task.cancel()
        if self._audio_t0 is not None:
            elapsed = (asyncio.get_running_loop().time() - self._audio_t0) * 1000
            self.audio_ms = min(self.plan.speech_ms, int(elapsed) // 20 * 20)
        self._finish("cancelled", {"type": "cancelled", "reason": reason}, buffer_event)
        return True

    def _finish(self, status: str, details: dict | None, buffer_event: str | None) -> None:
        """End generation; `buffer_event` None keeps the audio playing (playback_after_done)."""
        if self.status != "in_progress":
            return
        conv = self.conv
        self.status, self.status_details = status, details
        item = self.record.item
        item["status"] = "completed" if status == "completed" else "incomplete"
        ids_ = self._ids()
        if self.plan.kind == "function_call":
            item["arguments"] = self.produced
            conv.emit(server_event("response.function_call_arguments.done", **ids_, call_id=item["call_id"],
                                   name=item["name"], arguments=self.produced))
            output_text_tokens, output_audio = usage.count_text_tokens(self.produced), 0
        elif self.plan.modality == "audio":
            item["content"] = [{"type": "output_audio", "transcript": self.produced}]
            self.record.part_audio_ms = {0: self.audio_ms}
            conv.emit(server_event("response.output_audio.done", **ids_, content_index=0))
            conv.emit(server_event("response.output_audio_transcript.done", **ids_, content_index=0,
                                   transcript=self.produced))
            conv.emit(server_event("response.content_part.done", **ids_, content_index=0,
                                   part={"type": "audio", "transcript": self.produced}))
            output_text_tokens = usage.count_text_tokens(self.produced)
            output_audio = usage.output_audio_tokens(self.audio_ms)
        else:
            item["content"] = [{"type": "output_text", "text": self.produced}]
            conv.emit(server_event("response.output_text.done", **ids_, content_index=0, text=self.produced))
            conv.emit(server_event("response.content_part.done", **ids_, content_index=0,
                                   part={"type": "text", "text": self.produced}))
            output_text_tokens, output_audio = usage.count_text_tokens(self.produced), 0
        conv.emit(server_event("response.output_item.done", response_id=self.id, output_index=0,
                               item=self.record.snapshot()))
        if conv.items.get(self.record.id) is not None:
            conv.emit(server_event("conversation.item.done", previous_item_id=conv.items.previous_id(self.record.id),
                                   item=self.record.snapshot()))
        self.usage = usage.response_usage(self.input_segments, conv.billed_input, output_text_tokens, output_audio)
        if self.plan.usage_override:
            self.usage = usage.merge_override(self.usage, self.plan.usage_override)
        conv.billed_input = self.input_segments
        self.done_at_ms = conv.now_ms()
        conv.emit(server_event("response.done", response=self._response(
            status=status, status_details=details, usage=self.usage)))
        if self.playback is not None:
            if buffer_event is None:
                conv.playing = self
                self.tail_task = asyncio.get_running_loop().create_task(self._play_tail())
            else:
                # Heard = generated here: all of it, or up to the cut (see cancel).
                self.end_playback(buffer_event, played_ms=self.audio_ms)
        conv.response_finished(self)
        self.finished.set()

    async def _play_tail(self) -> None:
        """The audio left to play after response.done; output_audio_buffer.stopped at its real end."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._audio_t0 + self.plan.speech_ms / 1000 - loop.time()))
        self.tail_task = None
        self.end_playback("stopped", played_ms=self.plan.speech_ms)

    def end_playback(self, buffer_event: str, *, played_ms: int | None = None, emit: bool = True) -> bool:
        """Stop this response's audio on the media track now; "stopped" or "cleared" (or "closed", silent).

        False if it was not playing.
        """
        if self.playback is None or not self.playback.playing:
            return False
        conv = self.conv
        if self.tail_task is not None:
            self.tail_task.cancel()
            self.tail_task = None
        if self.speaking:
            conv.output_audio.stop()
        self.playback.end(buffer_event, asyncio.get_running_loop().time(), conv.now_ms(), played_ms)
        if conv.playing is self:
            conv.playing = None
        if emit:
            conv.emit(server_event(f"output_audio_buffer.{buffer_event}", response_id=self.id))
        return True

    def abort(self) -> None:
        """Drop silently (the call ended): no events."""
        if self.task is not None:
            self.task.cancel()
        self.end_playback("closed", emit=False)
        if self.speaking:
            self.conv.output_audio.stop()
        if self.status == "in_progress":
            self.status = "cancelled"
            self.status_details = {"type": "cancelled", "reason": "client_cancelled"}
        self.finished.set()
