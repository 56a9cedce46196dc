"""Injected HTTP faults (latency, error status, hang, dropped connection, bad JSON).

The sideband WebSocket takes them too: a status refuses its handshake, and a
drop accepts the socket and then aborts it, as a network drop right after
connecting looks.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

from aiohttp import web

from .schema import RequestError

ENDPOINTS = ("client_secrets", "calls", "hangup", "sideband", "*")
DEFAULT_HOLD_S = 60.0
_FIELDS = ("endpoint", "latency_ms", "status", "timeout", "drop", "bad_json", "count", "hold_s")
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                404: "invalid_request_error", 429: "requests"}


@dataclass
class Fault:
    endpoint: str
    latency_ms: int = 0
    status: int | None = None
    timeout: bool = False
    drop: bool = False
    bad_json: bool = False
    count: int | None = None  # None = until cleared
    hold_s: float = DEFAULT_HOLD_S  # how long `timeout` holds the request

    def as_dict(self) -> dict:
        return asdict(self)


def parse_fault(spec: object) -> Fault:
    if not isinstance(spec, dict):
        raise RequestError("Fault must be a JSON object.", None, "invalid_type")
    for key in spec:
        if key not in _FIELDS:
            raise RequestError(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
    endpoint = spec.get("endpoint", "*")
    if endpoint not in ENDPOINTS:
        raise RequestError(f"Invalid endpoint '{endpoint}'; use one of {', '.join(ENDPOINTS)}.", "endpoint")
    fault = Fault(endpoint=endpoint)
    latency = spec.get("latency_ms", 0) or 0
    if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
        raise RequestError("'latency_ms' must be a non-negative integer.", "latency_ms", "invalid_type")
    fault.latency_ms = latency
    status = spec.get("status")
    if status is not None and (not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599):
        raise RequestError("'status' must be an HTTP error status (400-599).", "status")
    fault.status = status
    for flag in ("timeout", "drop", "bad_json"):
        value = spec.get(flag, False)
        if not isinstance(value, bool):
            raise RequestError(f"'{flag}' must be a boolean.", flag, "invalid_type")
        setattr(fault, flag, value)
    count = spec.get("count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise RequestError("'count' must be a positive integer or null.", "count")
    fault.count = count
    hold = spec.get("hold_s", DEFAULT_HOLD_S)
    if not isinstance(hold, (int, float)) or isinstance(hold, bool) or hold < 0:
        raise RequestError("'hold_s' must be a non-negative number.", "hold_s")
    fault.hold_s = float(hold)
    return fault


class FaultBook:
    """At most one fault per endpoint; an endpoint's own fault beats the "*" one."""

    def __init__(self) -> None:
        self.faults: dict[str, Fault] = {}

    def add(self, fault: Fault) -> None:
        self.faults[fault.endpoint] = fault

    def clear(self) -> None:
        self.faults.clear()

    def as_list(self) -> list[dict]:
        return [fault.as_dict() for fault in self.faults.values()]

    def take(self, endpoint: str) -> Fault | None:
        """The fault for this request, using up one of its `count`."""
        fault = self.faults.get(endpoint) or self.faults.get("*")
        if fault is None:
            return None
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                del self.faults[fault.endpoint]
        return fault


def fault_error(status: int) -> web.Response:
    error = {
        "message": f"Simulated fault: HTTP {status}.",
        "type": _ERROR_TYPES.get(status, "server_error"),
        "param": None,
        "code": "rate_limit_exceeded" if status == 429 else "simulated_fault",
    }
    return web.json_response({"error": error}, status=status)


async def apply_fault(fault: Fault | None, request: web.Request) -> web.StreamResponse | None:
    """Run a fault; returns the response to send instead of the real one, if any."""
    if fault is None:
        return None
    if fault.latency_ms:
        await asyncio.sleep(fault.latency_ms / 1000)  # never block the loop: benchmarks rely on it
    if fault.drop:
        if request.transport is not None:
            request.transport.abort()
        # The connection is gone; aiohttp discards whatever is returned.
        return web.Response(status=499)
    if fault.timeout:
        await asyncio.sleep(fault.hold_s)  # cancelled early if the client gives up
        return fault_error(504)
    if fault.status is not None:
        return fault_error(fault.status)
    if fault.bad_json:
        return web.Response(status=200, text="<html>upstream hiccup, not JSON {", content_type="application/json")
    return None


async def apply_sideband_fault(fault: Fault | None, request: web.Request) -> web.StreamResponse | None:
    """Like apply_fault, but `drop` completes the WebSocket handshake before cutting the connection."""
    if fault is None or not fault.drop:
        return await apply_fault(fault, request)
    if fault.latency_ms:
        await asyncio.sleep(fault.latency_ms / 1000)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    if request.transport is not None:
        request.transport.abort()  # no close frame: the peer sees an abnormal closure (1006)
    return ws
