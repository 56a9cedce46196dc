"""Builders for GA server events (shapes per the OpenAPI server event schemas)."""

from __future__ import annotations

from typing import Any

from . import ids


def copy_json(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, immutable leaves): copy.deepcopy without its memo and
    dispatch (copying a new call's session was 6.5% of the simulator's CPU under a burst of starts)."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


def server_event(type_: str, **fields: Any) -> dict:
    return {"type": type_, "event_id": ids.event_id(), **fields}


def error_event(message: str, code: str | None = "invalid_event", param: str | None = None,
                client_event_id: str | None = None, type_: str = "invalid_request_error") -> dict:
    return server_event(
        "error",
        error={"type": type_, "code": code, "message": message, "param": param, "event_id": client_event_id},
    )


def response_object(
    response_id: str,
    conversation_id: str,
    *,
    status: str,
    output: list,
    output_modalities: list,
    max_output_tokens: Any,
    audio_output: dict,
    usage: dict | None = None,
    status_details: dict | None = None,
    metadata: dict | None = None,
) -> dict:
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": status_details,
        "output": output,
        "conversation_id": conversation_id,
        "output_modalities": list(output_modalities),
        "max_output_tokens": max_output_tokens,
        "audio": {"output": {"format": dict(audio_output["format"]), "voice": audio_output["voice"]}},
        "usage": usage,
        "metadata": metadata,
    }


def rate_limits_event(reserved_tokens: int) -> dict:
    # Numbers are illustrative; they only reflect the reservation for this response.
    return server_event(
        "rate_limits.updated",
        rate_limits=[
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {"name": "tokens", "limit": 800000, "remaining": max(0, 800000 - reserved_tokens), "reset_seconds": 0.3},
        ],
    )
