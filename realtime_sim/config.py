"""Runtime settings: how far off the happy path the simulator behaves.

One `SimConfig` per simulator, shared by reference with every call, so
`POST /_sim/config` reaches calls already in progress. Two keys are fixed per
call when it is created, because the call has already told its peer about
them: `call_max_seconds` (in `session.expires_at`) and
`datachannel_max_message_bytes` (in the SDP answer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .schema import RequestError

# Who a call's sideband (`sideband_auth`) and its hangup (`hangup_auth`) accept.
AUTH_MODES = ("any", "api_key_only", "call_secret_only")
# What truncating an answer leaves of its transcript: the heard share (FACTS: "deletes unheard transcript"),
# or nothing (the API reference: it "will remove the server-side text transcript").
TRUNCATE_TRANSCRIPT_MODES = ("heard", "removed")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_error(key: str, expected: str, value: Any) -> RequestError:
    return RequestError(f"Invalid type for '{key}': expected {expected}, but got {type(value).__name__} instead.",
                        key, "invalid_type")


@dataclass
class SimConfig:
    call_max_seconds: float = 3600  # the real API's 60-minute cap
    sideband_auth: str = "any"  # "any" | "api_key_only" | "call_secret_only"
    hangup_auth: str = "api_key_only"  # the documented credential; same modes as sideband_auth
    transcription_delay_ms: int = 0
    playback_after_done: bool = False
    truncate_transcript: str = "heard"  # "heard" | "removed": what conversation.item.truncate leaves of the text
    datachannel_max_message_bytes: int = 65536  # SCTP's usual default (RFC 8841)

    def as_dict(self) -> dict:
        return asdict(self)

    def update(self, changes: object) -> None:
        """Apply a partial update; all or nothing, so a refused body changes no key."""
        checked = validate_changes(changes)
        for key, value in checked.items():
            setattr(self, key, value)

    def restore(self, other: SimConfig) -> None:
        """Copy another config's values in place (calls keep their reference to this one)."""
        for key, value in other.as_dict().items():
            setattr(self, key, value)

    @classmethod
    def build(cls, overrides: dict | None = None) -> SimConfig:
        config = cls()
        if overrides:
            config.update(overrides)
        return config


KEYS = tuple(f.name for f in fields(SimConfig))


def validate_changes(changes: object) -> dict:
    """Check a JSON object of settings; raises RequestError (400) on the first bad key."""
    if not isinstance(changes, dict):
        raise RequestError("The config must be a JSON object.", None, "invalid_type")
    checked: dict = {}
    for key, value in changes.items():
        if key not in KEYS:
            raise RequestError(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
        if key == "call_max_seconds":
            if not _is_number(value):
                raise _type_error(key, "a number", value)
            if not value > 0:
                raise RequestError("'call_max_seconds' must be greater than 0.", key, "invalid_value")
        elif key in ("sideband_auth", "hangup_auth"):
            if not isinstance(value, str):
                raise _type_error(key, "a string", value)
            if value not in AUTH_MODES:
                raise RequestError(f"Invalid value: '{value}'. Supported values are: "
                                   + ", ".join(f"'{m}'" for m in AUTH_MODES) + ".", key, "invalid_value")
        elif key == "transcription_delay_ms":
            if not _is_int(value):
                raise _type_error(key, "an integer", value)
            if value < 0:
                raise RequestError("'transcription_delay_ms' must be 0 or more.", key, "invalid_value")
        elif key == "truncate_transcript":
            if not isinstance(value, str):
                raise _type_error(key, "a string", value)
            if value not in TRUNCATE_TRANSCRIPT_MODES:
                raise RequestError(f"Invalid value: '{value}'. Supported values are: 'heard', 'removed'.", key,
                                   "invalid_value")
        elif key == "playback_after_done":
            if not isinstance(value, bool):
                raise _type_error(key, "a boolean", value)
        elif key == "datachannel_max_message_bytes":
            if not _is_int(value):
                raise _type_error(key, "an integer", value)
            if value < 1:
                raise RequestError("'datachannel_max_message_bytes' must be at least 1.", key, "invalid_value")
        checked[key] = value
    return checked


def credential_allowed(mode: str, auth: str) -> bool:
    """May a request authenticated as `auth` ("api_key" | "call_secret") act on a call under `mode`
    (the `sideband_auth` or `hangup_auth` setting)?"""
    if mode == "api_key_only":
        return auth == "api_key"
    if mode == "call_secret_only":
        return auth == "call_secret"
    return True
