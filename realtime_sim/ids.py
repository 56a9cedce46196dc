"""Identifier formats used by the simulator (prefix + random hex)."""

from __future__ import annotations

import secrets


def new_id(prefix: str, nbytes: int = 10) -> str:
    return f"{prefix}_{secrets.token_hex(nbytes)}"


def event_id() -> str:
    return new_id("event")


def item_id() -> str:
    return new_id("item")


def response_id() -> str:
    return new_id("resp")


def session_id() -> str:
    return new_id("sess")


def conversation_id() -> str:
    return new_id("conv")


def call_id() -> str:
    # Calls carry 32 hex digits, like the real rtc_... ids.
    return new_id("rtc", 16)


def function_call_id() -> str:
    return new_id("call", 8)


def ephemeral_key() -> str:
    return new_id("ek", 16)
