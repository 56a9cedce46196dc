"""Conversation items: the ordered store and checks on client-created items."""

from __future__ import annotations

import base64
import binascii
import copy
from dataclasses import dataclass, field

from . import ids

PCM16_BYTES_PER_MS = 24000 * 2 / 1000  # audio/pcm at 24 kHz mono
_CONTENT_TYPES = {
    "user": ("input_text", "input_audio", "input_image"),
    "system": ("input_text",),
    "assistant": ("output_text", "output_audio"),
}


class ProtocolError(Exception):
    """A client event the server refuses; becomes an `error` server event."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass
class ItemRecord:
    """A conversation item plus the audio durations the JSON does not carry."""

    item: dict
    part_audio_ms: dict[int, float] = field(default_factory=dict)
    spoken: str | None = None  # what a user audio turn said (a scripted transcript), heard by the model

    @property
    def id(self) -> str:
        return self.item["id"]

    @property
    def audio_ms(self) -> float:
        return sum(self.part_audio_ms.values())

    def snapshot(self) -> dict:
        return copy.deepcopy(self.item)


class ItemStore:
    def __init__(self) -> None:
        self.records: list[ItemRecord] = []

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def get(self, item_id: str) -> ItemRecord | None:
        for record in self.records:
            if record.id == item_id:
                return record
        return None

    def last_id(self) -> str | None:
        return self.records[-1].id if self.records else None

    def previous_id(self, item_id: str) -> str | None:
        for index, record in enumerate(self.records):
            if record.id == item_id:
                return self.records[index - 1].id if index > 0 else None
        return None

    def insert(self, record: ItemRecord, previous_item_id: str | None = None) -> str | None:
        """Insert after `previous_item_id` ("root" = at the start, None = at the end).

        Returns the id of the item now preceding the new one (or None).
        """
        if self.get(record.id) is not None:
            raise ProtocolError(f"Item with id '{record.id}' already exists.", "duplicate_item_id", "item.id")
        if previous_item_id is None:
            self.records.append(record)
        elif previous_item_id == "root":
            self.records.insert(0, record)
        else:
            for index, existing in enumerate(self.records):
                if existing.id == previous_item_id:
                    self.records.insert(index + 1, record)
                    break
            else:
                raise ProtocolError(
                    f"Previous item with id '{previous_item_id}' not found.", "item_not_found", "previous_item_id"
                )
        return self.previous_id(record.id)

    def delete(self, item_id: str) -> ItemRecord:
        record = self.get(item_id)
        if record is None:
            raise ProtocolError(f"Item with id '{item_id}' not found.", "item_not_found", "item_id")
        self.records.remove(record)
        return record

    def as_list(self) -> list[dict]:
        return [record.snapshot() for record in self.records]


def _pcm_ms(audio_b64: str, param: str) -> float:
    try:
        raw = base64.b64decode(audio_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("Audio content is not valid base64.", "invalid_value", param) from None
    return len(raw) / PCM16_BYTES_PER_MS


def normalize_client_item(item: object) -> ItemRecord:
    """Check an item from `conversation.item.create` and give it GA fields."""
    if not isinstance(item, dict):
        raise ProtocolError("The 'item' field must be an object.", "invalid_type", "item")
    item = copy.deepcopy(item)
    kind = item.get("type")
    if kind == "message":
        role = item.get("role")
        if role not in _CONTENT_TYPES:
            raise ProtocolError(f"Invalid value: '{role}'. Supported values are: 'user', 'system', 'assistant'.",
                                "invalid_value", "item.role")
        content = item.get("content")
        if not isinstance(content, list):
            raise ProtocolError("Missing required parameter: 'item.content'.", "missing_required_parameter",
                                "item.content")
        audio_ms: dict[int, float] = {}
        for index, part in enumerate(content):
            param = f"item.content[{index}]"
            ptype = part.get("type") if isinstance(part, dict) else None
            if ptype not in _CONTENT_TYPES[role]:
                raise ProtocolError(f"Invalid content type '{ptype}' for a {role} message.", "invalid_value",
                                    f"{param}.type")
            if ptype == "output_audio":
                raise ProtocolError("Assistant audio content cannot be created by the client.", "invalid_value",
                                    f"{param}.type")
            if ptype in ("input_text", "output_text") and not isinstance(part.get("text"), str):
                raise ProtocolError(f"Missing required parameter: '{param}.text'.", "missing_required_parameter",
                                    f"{param}.text")
            if ptype == "input_audio":
                audio = part.pop("audio", None)
                audio_ms[index] = _pcm_ms(audio, f"{param}.audio") if audio else 0.0
                part.setdefault("transcript", None)
        record = ItemRecord(item, audio_ms)
    elif kind == "function_call":
        for key in ("name", "arguments"):
            if not isinstance(item.get(key), str):
                raise ProtocolError(f"Missing required parameter: 'item.{key}'.", "missing_required_parameter",
                                    f"item.{key}")
        item.setdefault("call_id", ids.function_call_id())
        record = ItemRecord(item)
    elif kind == "function_call_output":
        for key in ("call_id", "output"):
            if not isinstance(item.get(key), str):
                raise ProtocolError(f"Missing required parameter: 'item.{key}'.", "missing_required_parameter",
                                    f"item.{key}")
        record = ItemRecord(item)
    else:
        raise ProtocolError(
            f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', 'function_call_output'.",
            "invalid_value",
            "item.type",
        )
    # GA items lead with id/object/type/status; the client's other keys follow.
    ordered = {"id": item.get("id") or ids.item_id(), "object": "realtime.item", "type": kind, "status": "completed"}
    ordered.update({k: v for k, v in item.items() if k not in ordered and k != "object"})
    record.item = ordered
    return record
